"""Size each phase's load, for the full run and the quick smoke run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of every phase."""

    name: str
    gateway_seconds: float
    """Length of each gateway load: at saturation, each server's rounds together; at the
    fixed rate, each server's one run."""
    gateway_rounds: int
    gateway_rate: float
    """The fixed offered load, callbacks per second, at which latency is compared."""
    dispatch_tasks: int
    """Tasks in each backlog: each round's, and the replicas' one."""
    dispatch_rounds: int
    e2e_rate: float
    """Tasks per second end to end, lowered to a third of the dispatch rate measured in the run."""
    e2e_seconds: float
    quiet_rate: float
    """Tasks per second end to end through otherwise idle services, as a chat assistant sees."""
    quiet_seconds: float
    hop_seconds: float
    expiries: int
    expiry_lead: float
    """Seconds between publishing the deadlines and the first of them."""
    expiry_spread: float
    sync_tasks: int
    sync_delay: float
    """How long the pretend slow service takes; the comparison is stated for 20 s."""
    settle_seconds: float = 90.0
    """Longest wait for the services to go idle between phases."""
    gateway_concurrency: int = 32
    dispatch_concurrency: int = 32
    """The dispatcher sends at most 32 requests to one host at once (MAX_CONNECTIONS_PER_HOST's
    default); the bare client gets as many."""


FULL = Plan(
    name="full",
    gateway_seconds=10.0,
    gateway_rounds=5,
    # Half of the 4,000 callbacks/s the gateway is meant to take on one process.
    gateway_rate=2000.0,
    dispatch_tasks=5000,
    dispatch_rounds=4,
    e2e_rate=100.0,
    e2e_seconds=30.0,
    quiet_rate=2.0,
    quiet_seconds=20.0,
    hop_seconds=5.0,
    expiries=3000,
    expiry_lead=4.0,
    expiry_spread=5.0,
    sync_tasks=20,
    sync_delay=20.0,
)

QUICK = Plan(
    name="quick",
    gateway_seconds=1.5,
    gateway_rounds=1,
    gateway_rate=200.0,
    dispatch_tasks=300,
    dispatch_rounds=2,
    e2e_rate=50.0,
    e2e_seconds=2.0,
    quiet_rate=2.0,
    quiet_seconds=2.0,
    hop_seconds=1.5,
    expiries=300,
    expiry_lead=1.0,
    expiry_spread=0.5,
    sync_tasks=5,
    sync_delay=0.5,
    settle_seconds=5.0,
)

SYNC_CLAIM_SECONDS = 20.0
"""The product summary's example: a synchronous call to a service that takes 20 s."""

Tick = Callable[[int], None]


class Reporter(Protocol):
    """Shows a phase's progress on screen."""

    def __call__(self, description: str, total: int) -> Tick: ...
