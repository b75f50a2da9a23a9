"""Shared runtime of webhook-tasks services: settings, logging, database, outbox, Kafka."""
