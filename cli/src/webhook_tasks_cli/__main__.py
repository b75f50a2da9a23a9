"""`python -m webhook_tasks_cli` runs the `webhook-tasks` command."""

from .main import main

main()
