"""Every setting a service reads is documented where an operator looks for it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings
from webhook_tasks_dispatcher.settings import DispatcherSettings
from webhook_tasks_expirer.settings import ExpirerSettings
from webhook_tasks_gateway.settings import GatewaySettings
from webhook_tasks_notifier.settings import NotifierSettings

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_IN: dict[str, tuple[type[BaseSettings], Path]] = {
    "dispatcher": (DispatcherSettings, ROOT / "services" / "dispatcher" / "README.md"),
    "expirer": (ExpirerSettings, ROOT / "services" / "expirer" / "README.md"),
    "notifier": (NotifierSettings, ROOT / "services" / "notifier" / "README.md"),
    "callback-gateway": (GatewaySettings, ROOT / "README.md"),
}


def documented_names(text: str) -> set[str]:
    """Return the variable names a README's text shows, `X` / `_SUFFIX` rows spelled out."""
    names = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", text))
    names |= {f"{m[1]}{m[2]}" for m in re.finditer(r"`([A-Z][A-Z0-9_]+)` / `(_[A-Z0-9_]+)`", text)}
    return names


@pytest.mark.parametrize("service", sorted(DOCUMENTED_IN))
def test_each_setting_is_in_the_service_readme_or_the_main_one(service: str) -> None:
    settings, readme = DOCUMENTED_IN[service]
    documented = documented_names(readme.read_text()) | documented_names(
        (ROOT / "README.md").read_text()
    )

    missing = [name.upper() for name in settings.model_fields if name.upper() not in documented]

    assert not missing, f"document in {readme.relative_to(ROOT)}: {missing}"
