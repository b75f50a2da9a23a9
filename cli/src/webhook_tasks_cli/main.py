"""Entry point of the `webhook-tasks` command."""


def main() -> None:
    """Run the command line."""
