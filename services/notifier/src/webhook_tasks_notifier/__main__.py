"""Allow `python -m webhook_tasks_notifier`."""

from .main import run

run()
