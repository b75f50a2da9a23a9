"""Let these tests import the `bench` package, which lives at the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[2])
# `python -m bench` runs from the root; under pytest the root is not on the path by itself.
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
