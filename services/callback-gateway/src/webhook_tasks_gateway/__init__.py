"""The callback-gateway service: receives callbacks over HTTP and publishes them to Kafka."""

from .app import create_app
from .main import run, serve
from .settings import CALLBACK_TOPIC_MAX_MESSAGE_BYTES, GatewaySettings

__all__ = ["CALLBACK_TOPIC_MAX_MESSAGE_BYTES", "GatewaySettings", "create_app", "run", "serve"]
