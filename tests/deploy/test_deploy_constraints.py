"""The image installs every dependency at the version constraints.txt pins."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IMAGE_PACKAGES = (
    "webhook-tasks-contracts",
    "webhook-tasks-runtime",
    "webhook-tasks-dispatcher",
    "webhook-tasks-callback-gateway",
    "webhook-tasks-expirer",
    "webhook-tasks-notifier",
    "webhook-tasks",
)
"""What deploy/Dockerfile installs, as distributions."""


def pinned() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if match := re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==(\S+)", line):
            pins[canonicalize_name(match[1].split("[")[0])] = match[2]
    return pins


def runtime_closure() -> set[str]:
    """Return every distribution the image's packages need, as installed here."""
    seen: set[str] = set()
    pending = [(name, frozenset[str]()) for name in IMAGE_PACKAGES]
    while pending:
        name, extras = pending.pop()
        for requirement in distribution(name).requires or []:
            parsed = Requirement(requirement)
            if parsed.marker is not None and not any(
                parsed.marker.evaluate({"extra": extra}) for extra in (*extras, "")
            ):
                continue
            dependency = canonicalize_name(parsed.name)
            try:
                distribution(dependency)
            except PackageNotFoundError:
                continue  # not for this platform
            key = f"{dependency}[{','.join(sorted(parsed.extras))}]"
            if key not in seen:
                seen.add(key)
                pending.append((dependency, frozenset(parsed.extras)))
    return {key.split("[")[0] for key in seen}


def test_every_dependency_of_the_image_is_pinned() -> None:
    local = {canonicalize_name(name) for name in IMAGE_PACKAGES}

    unpinned = runtime_closure() - local - set(pinned())

    assert not unpinned, f"add to constraints.txt: {sorted(unpinned)}"
