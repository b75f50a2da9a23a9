"""The quick benchmark runs end to end and writes its results (its figures are not judged)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TIME_BOUND_SECONDS = 240
"""Well above the ~110 s the quick run takes: CI checks that it works, never how fast."""

pytestmark = pytest.mark.e2e


def test_quick_benchmark_prints_the_table_and_writes_json_and_chart(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=TIME_BOUND_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "figure / ceiling" in completed.stdout
    (results,) = tmp_path.glob("bench-*-quick.json")
    document = json.loads(results.read_text())
    groups = {row["group"] for row in document["rows"]}
    assert groups == {"Gateway", "Dispatcher", "Expirer", "End to end", "Efficiency"}
    for row in document["rows"]:
        # A missing figure (null in JSON) or a zero rate means a phase measured nothing.
        assert (row["figure"] or 0) > 0, row
        assert (row["ceiling"] or 0) > 0, row
    # The gateway and its no-op ceiling are loaded by the same generator: wrk when installed.
    generator = "wrk" if shutil.which("wrk") else "aiohttp"
    [saturated] = [row for row in document["rows"] if row["name"].startswith("accepted/s")]
    assert saturated["name"].endswith(generator), saturated
    assert document["facts"]["gateway"]["load_generator"]["saturated"].startswith(generator)
    # The same load on the gateway's app with Kafka in memory: every callback accepted.
    [in_memory] = [row for row in document["rows"] if "Kafka in memory" in row["name"]]
    assert in_memory["name"].endswith(generator), in_memory
    assert set(document["facts"]["gateway"]["saturated.in memory"]["statuses"]) == {"202"}
    # Their latencies at a fixed rate come from h2load when installed, else the in-repo client.
    latency_generator = "h2load" if shutil.which("h2load") else "aiohttp"
    for name in ("p50", "p99"):
        [row] = [r for r in document["rows"] if r["group"] == "Gateway" and r["name"][:3] == name]
        assert row["name"].endswith(latency_generator), row
    assert latency_generator in document["facts"]["gateway"]["load_generator"]["fixed_rate"]
    dispatcher = document["facts"]["dispatcher"]
    [dispatcher_row] = [row for row in document["rows"] if row["name"] == "dispatches/s"]
    assert dispatcher["initiated"] == dispatcher["tasks"], dispatcher
    # Measured in rounds, taking turns with its ceiling: each round measured all three.
    assert len(dispatcher["rounds"]) == 2, dispatcher
    for one in dispatcher["rounds"]:
        assert min(one.values()) > 0, dispatcher["rounds"]
    # The dispatcher's HTTP client alone, over each transport: every request answered 200.
    clients = [row["name"] for row in document["rows"] if "HTTP client alone" in row["name"]]
    transports = sorted(name.split(", ")[1].removesuffix(" transport") for name in clients)
    assert transports == ["aiohttp", "httpx"]
    for transport, load in dispatcher["http_client"].items():
        assert load["ok"] > 0, (transport, load)
        assert set(load["statuses"]) == {"200"}, (transport, load)
    # The dispatcher's replicas as deployed: both in the group, both at work, every task sent.
    replicas = document["facts"]["dispatcher replicas"]
    assert replicas["initiated"] == replicas["tasks"], replicas
    busy = replicas["cpu_percent_of_one_core"]
    for process in ("dispatcher (alone)", "dispatcher (replica 2)"):
        assert busy[process] > 5, busy
    [row] = [row for row in document["rows"] if "replicas as deployed" in row["name"]]
    assert row["ceiling"] == dispatcher_row["ceiling"], row
    # The dispatcher with its requests answered in its own process: every task sent, in rounds.
    answered = document["facts"]["dispatcher answered in process"]
    assert answered["initiated"] == answered["tasks"], answered
    assert answered["statuses"] == {"202": answered["tasks"]}, answered  # the sink answers 200
    assert len(answered["rounds"]) == 2, answered
    for one in answered["rounds"]:
        assert min(one.values()) > 0, answered["rounds"]
    assert answered["cpu_percent_of_one_core"]["dispatcher (requests answered in process)"] > 5
    for stream in ("quiet", "busy"):
        end_to_end = document["facts"]["end to end"][stream]
        assert end_to_end["terminal_comments"] == end_to_end["tasks"], end_to_end
        # Each stream's own CPU per task, service by service.
        assert end_to_end["cpu_ms_per_task"]["dispatcher"] > 0, end_to_end
    chart = results.with_suffix(".png")
    assert chart.read_bytes().startswith(b"\x89PNG")
