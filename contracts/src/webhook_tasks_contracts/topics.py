"""Kafka topic names shared by every service."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TOPIC_PREFIX = "webhook-tasks"
DEAD_LETTER_SUFFIX = ".dead-letter"


@dataclass(frozen=True, slots=True)
class Topics:
    """Name every topic of one deployment; a prefix keeps deployments (and tests) apart."""

    prefix: str = DEFAULT_TOPIC_PREFIX

    @property
    def task_requested(self) -> str:
        """Upstream systems publish `TaskRequested` here; keyed by task id."""
        return f"{self.prefix}.task-requested"

    @property
    def task_lifecycle(self) -> str:
        """The dispatcher publishes every task transition here; keyed by correlation id."""
        return f"{self.prefix}.task-lifecycle"

    @property
    def callback_received(self) -> str:
        """The gateway publishes accepted callbacks here; keyed by correlation id."""
        return f"{self.prefix}.callback-received"

    @property
    def deadline_reached(self) -> str:
        """The expirer publishes passed deadlines here; keyed by correlation id."""
        return f"{self.prefix}.deadline-reached"

    @property
    def notifications(self) -> str:
        """The notifier publishes posted comments and user notifications here."""
        return f"{self.prefix}.notifications"

    def dead_letter(self, topic: str) -> str:
        """Return the dead-letter topic that receives rejected events of `topic`."""
        return f"{topic}{DEAD_LETTER_SUFFIX}"

    def all(self) -> tuple[str, ...]:
        """Return every topic, dead-letter topics included."""
        main = (
            self.task_requested,
            self.task_lifecycle,
            self.callback_received,
            self.deadline_reached,
            self.notifications,
        )
        return main + tuple(self.dead_letter(topic) for topic in main)
