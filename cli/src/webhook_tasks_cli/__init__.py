"""The webhook-tasks command line."""
