"""Measure callbacks accepted per second and their latency beside a raw ASGI no-op."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import asdict
from urllib.parse import urlsplit

from . import h2load, wrk
from .load import LoadResult, closed_loop, fixed_rate
from .stats import PhaseResult, Row, Summary, ratio_range
from .system import Context, Deployment, ServerProcess

DISTINCT_CALLBACKS = 1000
WARM_UP_REQUESTS = 300
GENERATORS = {
    "wrk": "wrk (native, one thread)",
    "aiohttp": "aiohttp, the in-repo client (wrk is not installed)",
}


def _callback_body(correlation_id: str) -> bytes:
    return json.dumps(
        {
            "correlationId": correlation_id,
            "status": "success",
            "resultUrl": f"https://cdn.example.com/{correlation_id}.mp4",
            "metadata": {"title": "Generated Video", "duration": "2m 30s"},
        }
    ).encode()


IN_MEMORY = "gateway (Kafka in memory)"
"""The gateway's app with a publisher that takes every message at once, in the CPU meter."""


async def run(
    ctx: Context, gateway: Deployment, noop: ServerProcess, in_memory: ServerProcess
) -> PhaseResult:
    """Load the gateway and the no-op the same way, one after the other.

    `in_memory` serves the gateway's app without Kafka (`python -m bench.servers
    gateway-in-memory`, with `gateway`'s settings): loaded like the gateway at saturation,
    it tells how much of the gap to the no-op the Kafka write is.
    """
    plan = ctx.plan
    gateway_targets = []
    noop_targets = []
    memory_targets = []
    for _ in range(DISTINCT_CALLBACKS):
        correlation_id = str(uuid.uuid4())
        url = gateway.tokens.callback_url(gateway.gateway_url, correlation_id)
        body = _callback_body(correlation_id)
        gateway_targets.append((url, body))
        # Same path and body: the no-op reads the request and answers 202 like the gateway.
        path = urlsplit(url).path
        noop_targets.append((f"{noop.url}{path}", body))
        memory_targets.append((f"{in_memory.url}{path}", body))

    for targets in (noop_targets, gateway_targets, memory_targets):
        await closed_loop(targets, concurrency=8, duration=10.0, max_requests=WARM_UP_REQUESTS)

    rounds: dict[str, list[LoadResult]] = {}
    steady: dict[str, LoadResult] = {}
    process = {"no-op": "no-op server", "gateway": "gateway (alone)", "in memory": IN_MEMORY}
    cpu_used_ms: dict[str, float] = {}
    labelled = (("no-op", noop_targets), ("gateway", gateway_targets))
    # All are loaded by the same generator: wrk where installed, else the in-repo client.
    wrk_path = wrk.find_wrk()
    generator = "wrk" if wrk_path else "aiohttp"
    # In short rounds, taking turns: the machine is shared and its load drifts over seconds,
    # so in one long run each, a figure and its ceiling could meet different loads.
    round_seconds = plan.gateway_seconds / plan.gateway_rounds
    for number in range(1, plan.gateway_rounds + 1):
        for label, targets in (*labelled, ("in memory", memory_targets)):
            tick = ctx.report(
                f"gateway: {label}, {plan.gateway_concurrency} connections ({generator}), "
                f"round {number}/{plan.gateway_rounds}",
                0,
            )
            cpu_before = ctx.meter.read()
            if wrk_path:
                one_round = await wrk.closed_loop(
                    wrk_path,
                    targets,
                    connections=plan.gateway_concurrency,
                    duration=round_seconds,
                    tick=tick,
                )
            else:
                one_round = await closed_loop(
                    targets,
                    concurrency=plan.gateway_concurrency,
                    duration=round_seconds,
                    max_requests=int(round_seconds * 50_000),
                    tick=tick,
                )
            rounds.setdefault(label, []).append(one_round)
            used_ms = ctx.meter.cpu_ms(process[label], cpu_before, 1)
            cpu_used_ms[label] = cpu_used_ms.get(label, 0.0) + used_ms
    saturated = {label: LoadResult.combined(loads) for label, loads in rounds.items()}
    cpu_ms = {
        label: cpu_used_ms[label] / load.ok if load.ok else float("nan")
        for label, load in saturated.items()
    }
    ratios = [
        gateway.ok_per_second / noop.ok_per_second
        for gateway, noop in zip(rounds["gateway"], rounds["no-op"], strict=True)
        if noop.ok_per_second
    ]
    rate, why = fixed_rate_for(plan.gateway_rate, saturated["gateway"].ok_per_second)
    expected = int(rate * plan.gateway_seconds)
    # Both latency rows come from the same generator too: h2load where installed, else the
    # in-repo client, which cannot hold 2,000/s beside the servers on a small machine.
    h2load_path = h2load.find_h2load()
    latency_generator = "h2load" if h2load_path else "aiohttp"
    for label, targets in labelled:
        tick = ctx.report(f"gateway: {label}, {rate:.0f}/s offered ({latency_generator})", expected)
        if h2load_path:
            # h2load posts one body to its URL: one callback, sent again and again. The gateway
            # does the same work for each (token check, validation, acks=all Kafka write).
            url, body = targets[0]
            steady[label] = await h2load.fixed_rate(
                h2load_path, url, body, rate=rate, duration=plan.gateway_seconds, tick=tick
            )
        else:
            steady[label] = await fixed_rate(
                targets, rate=rate, duration=plan.gateway_seconds, tick=tick
            )

    gw_sat, noop_sat, memory_sat = saturated["gateway"], saturated["no-op"], saturated["in memory"]
    gw_lat = Summary.of(steady["gateway"].latencies_ms)
    noop_lat = Summary.of(steady["no-op"].latencies_ms)
    if h2load_path:
        load = _h2load_how(rate, why, plan.gateway_seconds, steady)
    else:
        # A generator starved of CPU sends late, and the lateness is in every latency it
        # reports: its send lag says whether the figures describe the servers or the generator.
        lag = ", ".join(
            f"{label} {Summary.of(steady[label].send_lag_ms).p99:.1f} ms" for label, _ in labelled
        )
        load = (
            f"{rate:.0f}/s offered for {plan.gateway_seconds:g} s by the in-repo open-loop "
            f"client, {why}; each latency from the request's planned start; the client's send "
            f"lag p99: {lag}"
        )
    generator_label = GENERATORS[generator]
    result = PhaseResult()
    result.rows = [
        Row(
            "Gateway",
            f"accepted/s, {plan.gateway_concurrency} connections, {generator}",
            gw_sat.ok_per_second,
            noop_sat.ok_per_second,
            "/s",
            "higher",
            "raw ASGI no-op",
            f"{generator_label}, {plan.gateway_concurrency} keep-alive connections for "
            f"{plan.gateway_seconds:g} s in {plan.gateway_rounds} rounds, taking turns with the "
            f"no-op (ratio per round {ratio_range(ratios)}); 202 only after token check, "
            "validation and the acks=all Kafka write",
        ),
        Row(
            "Gateway",
            f"the same with Kafka in memory: accepted/s, {generator}",
            memory_sat.ok_per_second,
            noop_sat.ok_per_second,
            "/s",
            "higher",
            "raw ASGI no-op",
            "diagnostic, not a target: the gateway's app, settings and server under the same "
            "load, publishing to a publisher that takes every message at once; the gap to the "
            "row above is what the acks=all Kafka write costs",
        ),
        Row(
            "Gateway",
            f"p50 at {rate:.0f}/s, {latency_generator}",
            gw_lat.p50,
            noop_lat.p50,
            "ms",
            "lower",
            "raw ASGI no-op",
            load,
        ),
        Row(
            "Gateway",
            f"p99 at {rate:.0f}/s, {latency_generator}",
            gw_lat.p99,
            noop_lat.p99,
            "ms",
            "lower",
            "raw ASGI no-op",
            load,
        ),
    ]
    result.samples_ms = {
        "gateway": steady["gateway"].latencies_ms,
        "raw ASGI no-op": steady["no-op"].latencies_ms,
    }
    result.facts = {
        f"{kind}.{label}": {
            "sent": load_result.sent,
            "ok": load_result.ok,
            "failed": load_result.failed,
            "elapsed_s": round(load_result.elapsed, 3),
            "statuses": load_result.statuses,
            "latency_ms": asdict(load_result.latency()),
        }
        for kind, runs in (("saturated", saturated), ("fixed_rate", steady))
        for label, load_result in runs.items()
    }
    for label, load_result in steady.items():
        if h2load_path:
            # Planned against achieved rate, and how much coordinated omission is left.
            result.facts[f"fixed_rate.{label}"].update(load_result.details)
        else:
            # Were the requests sent on time? A late generator, not the server, would show here.
            result.facts[f"fixed_rate.{label}"]["send_lag_ms"] = asdict(
                Summary.of(load_result.send_lag_ms)
            )
    result.facts["saturated_rounds"] = {
        "seconds_each": round_seconds,
        "accepted_per_second": {
            label: [round(load.ok_per_second) for load in loads] for label, loads in rounds.items()
        },
        "gateway_to_no_op_ratio": [round(ratio, 3) for ratio in ratios],
    }
    result.facts["fixed_rate"] = {"planned": plan.gateway_rate, "used": rate, "why": why}
    result.facts["load_generator"] = {
        "saturated": wrk.version(wrk_path) if wrk_path else generator_label,
        "fixed_rate": (
            f"{h2load.version(h2load_path)}, HTTP/1.1, a fixed rate per connection"
            if h2load_path
            else "in-repo aiohttp client, open loop"
        ),
    }
    result.facts["cpu_ms_per_unit"] = (
        f"CPU per request, saturated: gateway {cpu_ms['gateway']:.2f} ms, "
        f"gateway with Kafka in memory {cpu_ms['in memory']:.2f} ms, "
        f"no-op {cpu_ms['no-op']:.2f} ms"
    )
    return result


def fixed_rate_for(planned: float, saturated: float) -> tuple[float, str]:
    """Return the rate at which latencies are compared, and why that one.

    The target states its latency at a fixed rate (2,000/s, half the 4,000/s wanted), so
    that is the rate used whenever the gateway sustained it closed-loop in the same run.
    Below that, offering it would only grow a queue until the run ends: the rate is
    lowered to half the saturated one, so the figures still compare with the no-op.
    """
    if saturated >= planned:
        return planned, f"the planned rate (the gateway sustained {saturated:,.0f}/s closed-loop)"
    lowered = max(saturated / 2, 10.0)
    return lowered, (
        f"lowered from the planned {planned:,.0f}/s to half the {saturated:,.0f}/s the "
        "gateway sustained closed-loop (more would only grow a queue)"
    )


def _h2load_how(rate: float, why: str, seconds: float, steady: dict[str, LoadResult]) -> str:
    schedule = h2load.schedule(rate, seconds)
    interval = f"{schedule.interval_ms:.0f} ms"

    def each(describe: Callable[[LoadResult], str]) -> str:
        return ", ".join(f"{label} {describe(steady[label])}" for label in ("gateway", "no-op"))

    how = (
        f"{rate:.0f}/s offered for {seconds:g} s by h2load, {why}: HTTP/1.1, "
        f"{schedule.connections} keep-alive connections each sending every {interval}, one "
        "callback repeated; rate achieved once all connections send: "
        + each(lambda run: f"{run.details.get('achieved_per_second_steady') or 0:,.0f}/s")
        + f"; answers slower than {interval} (only they can delay a send): "
        + each(lambda run: str(run.details.get("answers_slower_than_interval", 0)))
    )
    if any(run.details.get("answers_slower_than_interval") for run in steady.values()):
        how += "; p99 corrected for the sends they delayed: " + each(
            lambda run: (
                f"{run.details['latency_corrected_for_coordinated_omission_ms']['p99']:.1f} ms"
            )
        )
    return how
