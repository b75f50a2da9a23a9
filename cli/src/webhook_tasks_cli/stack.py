"""Run the four services as child processes, as `webhook-tasks up` and the end-to-end tests do."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

SERVICES = ("dispatcher", "callback-gateway", "expirer", "notifier")
DEMO_SERVICE = "demo-service"
_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A service of the stack did not start."""


@dataclass(frozen=True)
class StackOptions:
    """Everything the services need to find each other."""

    database_url: str
    kafka_bootstrap_servers: str
    kafka_enable_idempotence: bool
    callback_token_keys: str
    gateway_port: int
    log_dir: Path
    gateway_host: str = "127.0.0.1"
    topic_prefix: str = "webhook-tasks"
    environment: str = "dev"
    kafka_fetch_max_wait_ms: int = 500
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        """Return the gateway's base URL."""
        return f"http://{self.gateway_host}:{self.gateway_port}"


class Stack:
    """The services of one system, each in its own process, stopped together."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def environment(self) -> dict[str, str]:
        """Return the environment every service process gets."""
        options = self.options
        env = {
            **os.environ,
            "DATABASE_URL": options.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": options.kafka_bootstrap_servers,
            "KAFKA_ENABLE_IDEMPOTENCE": str(options.kafka_enable_idempotence).lower(),
            "KAFKA_FETCH_MAX_WAIT_MS": str(options.kafka_fetch_max_wait_ms),
            "CALLBACK_TOKEN_KEYS": options.callback_token_keys,
            "PUBLIC_CALLBACK_BASE_URL": options.gateway_url,
            "GATEWAY_HOST": options.gateway_host,
            "GATEWAY_PORT": str(options.gateway_port),
            "TOPIC_PREFIX": options.topic_prefix,
            "ENVIRONMENT": options.environment,
            "LOG_FORMAT": "console",
            # The demo external service listens on loopback, which the dispatcher's SSRF
            # guard refuses unless it is allow-listed.
            "OUTBOUND_ALLOWLIST": "127.0.0.0/8,::1/128",
            **options.extra_env,
        }
        # Each service owns its default schema; a DATABASE_SCHEMA meant for one must not leak.
        env.pop("DATABASE_SCHEMA", None)
        return env

    def log_file(self, service: str) -> Path:
        """Return where a service's output goes."""
        return self.options.log_dir / f"{service}.log"

    def start(self, *, timeout: float = 60.0) -> None:
        """Start every service and wait until the gateway answers."""
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        for service in SERVICES:
            # Each run starts its logs afresh; a restarted service appends to its own.
            self.log_file(service).unlink(missing_ok=True)
            self.start_service(service)
        self.wait_for_gateway(timeout=timeout)

    def start_service(self, service: str, *args: str, replica: int = 1) -> None:
        """Start one service (again); `args` go to its command.

        A `replica` after the first is another process of the same service, named
        `service.replica` (its log, its pid): it joins the first's consumer groups.
        """
        if service not in (*SERVICES, DEMO_SERVICE):
            raise StackError(f"unknown service {service!r}")
        name = replica_name(service, replica)
        log = self.log_file(name).open("ab")
        try:
            self._processes[name] = subprocess.Popen(
                [sys.executable, "-m", "webhook_tasks_cli", service, *args],
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def exited(self) -> dict[str, int]:
        """Return the services that have exited since they were started, with their exit codes."""
        return {
            service: process.returncode
            for service, process in self._processes.items()
            if process.poll() is not None
        }

    def pid(self, service: str) -> int:
        """Return the process id of a running service (or replica, by its name)."""
        return self._processes[service].pid

    def kill_service(self, service: str, signum: int = signal.SIGKILL) -> None:
        """Send `signum` to a service and wait for it to exit."""
        process = self._processes.pop(service)
        process.send_signal(signum)
        process.wait(timeout=30)

    def start_demo_service(self, port: int, *, timeout: float = 30.0) -> str:
        """Start the demo external service on a loopback port; return its URL."""
        self.start_service(DEMO_SERVICE, "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        self.wait_for_http(f"{url}/healthz", timeout=timeout)
        return url

    def wait_for_gateway(self, *, timeout: float) -> None:
        """Block until the gateway answers /healthz."""
        self.wait_for_http(f"{self.options.gateway_url}/healthz", timeout=timeout)

    def wait_for_http(self, url: str, *, timeout: float) -> None:
        """Block until `url` answers 200, failing early if a service died."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"nothing answered on {url} within {timeout:.0f}s")
            time.sleep(0.2)

    def _check_alive(self) -> None:
        for service, process in self._processes.items():
            if process.poll() is not None:
                raise StackError(
                    f"{service} exited with code {process.returncode}; see {self.log_file(service)}"
                )

    def stop(self, *, timeout: float = 20.0) -> None:
        """Ask every service to stop (SIGTERM), and kill what is still running after `timeout`."""
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self._processes.values():
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()


def replica_name(service: str, replica: int) -> str:
    """Return the name of a service's `replica`-th process (the first is the service's own)."""
    if replica < 1:
        raise StackError(f"replicas count from 1, not {replica}")
    return service if replica == 1 else f"{service}.{replica}"


def _die_with_parent() -> None:
    # A service must not outlive the stack that started it, even if the stack is killed.
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
