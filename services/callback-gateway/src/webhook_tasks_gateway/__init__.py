"""The callback-gateway service: receives callbacks over HTTP and publishes them to Kafka."""

from .app import create_app
from .main import run, serve
from .settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app", "run", "serve"]
