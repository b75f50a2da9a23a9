"""Run the dispatcher: `python -m webhook_tasks_dispatcher`."""

from webhook_tasks_runtime.entry import run_program

from .main import run

run_program(run)
