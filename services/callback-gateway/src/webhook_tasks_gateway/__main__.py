"""Run the callback gateway: `python -m webhook_tasks_gateway`."""

from .main import run

run()
