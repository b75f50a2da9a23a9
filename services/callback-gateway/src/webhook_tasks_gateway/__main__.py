"""Run the callback gateway: `python -m webhook_tasks_gateway`."""

from webhook_tasks_runtime.entry import run_program

from .main import run

run_program(run)
