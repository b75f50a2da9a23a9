"""Run the expirer: `python -m webhook_tasks_expirer`."""

from webhook_tasks_runtime.entry import run_program

from .main import run

run_program(run)
