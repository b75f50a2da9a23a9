"""Run the notifier: `python -m webhook_tasks_notifier`."""

from webhook_tasks_runtime.entry import run_program

from .main import run

run_program(run)
