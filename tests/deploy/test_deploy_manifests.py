"""The Kubernetes manifests start real commands with settings the services actually read."""

from __future__ import annotations

import inspect
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings
from typer.main import get_command
from webhook_tasks_cli.main import app
from webhook_tasks_contracts import Topics
from webhook_tasks_contracts.topics import DEAD_LETTER_SUFFIX
from webhook_tasks_dispatcher.settings import DispatcherSettings
from webhook_tasks_expirer.settings import ExpirerSettings
from webhook_tasks_gateway.settings import GatewaySettings
from webhook_tasks_notifier.settings import NotifierSettings
from webhook_tasks_runtime.kafka import create_broker
from webhook_tasks_runtime.settings import KAFKA_MAX_MESSAGE_BYTES
from webhook_tasks_runtime.worker import FINAL_FLUSH_SECONDS, KAFKA_REQUEST_TIMEOUT_MS

from bench.dispatcher import DEPLOYED_REPLICAS
from bench.system import DEPLOYED_PARTITIONS

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
SETTINGS: dict[str, type[BaseSettings]] = {
    "dispatcher": DispatcherSettings,
    "callback-gateway": GatewaySettings,
    "expirer": ExpirerSettings,
    "notifier": NotifierSettings,
}


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def deployment(service: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents(f"{service}.yaml") if doc["kind"] == "Deployment"]
    return found


def env_names(service: str) -> set[str]:
    container = deployment(service)["spec"]["template"]["spec"]["containers"][0]
    shared = set(documents("configmap.yaml")[0]["data"])
    return shared | {item["name"] for item in container.get("env", [])}


def secret_refs(service: str) -> dict[str, dict[str, Any]]:
    container = deployment(service)["spec"]["template"]["spec"]["containers"][0]
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def example_secret() -> dict[str, str]:
    (secret,) = documents("secret.example.yaml")
    assert secret["kind"] == "Secret"
    data: dict[str, str] = secret["stringData"]
    return data


def setting_names(settings: type[BaseSettings]) -> dict[str, bool]:
    return {name.upper(): field.is_required() for name, field in settings.model_fields.items()}


def test_the_kustomization_lists_every_manifest_that_exists() -> None:
    (kustomization,) = documents("kustomization.yaml")

    for resource in kustomization["resources"]:
        assert (MANIFESTS / resource).exists(), resource
    assert {f"{service}.yaml" for service in SETTINGS} <= set(kustomization["resources"])


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_deployment_runs_its_service_command(service: str) -> None:
    container = deployment(service)["spec"]["template"]["spec"]["containers"][0]
    # The app is a group of commands; typer types it as one command.
    commands = get_command(app).commands  # type: ignore[attr-defined]

    assert container["args"] == [service]
    assert service in commands


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_deployment_sets_only_real_settings_and_every_required_one(service: str) -> None:
    known = setting_names(SETTINGS[service])
    given = env_names(service)

    unknown = given - set(known) - {"PUBLIC_CALLBACK_BASE_URL"}
    missing = {name for name, required in known.items() if required} - given
    assert not unknown, f"{service} ignores {sorted(unknown)}"
    assert not missing, f"{service} needs {sorted(missing)}"


SECRETS_READ = {
    "dispatcher": {
        "DATABASE_URL",
        "CALLBACK_TOKEN_KEYS",
        "WEBHOOK_SIGNING_SECRETS",
        "KAFKA_SASL_PASSWORD",
    },
    "callback-gateway": {"CALLBACK_TOKEN_KEYS", "GATEWAY_SIGNING_SECRETS", "KAFKA_SASL_PASSWORD"},
    "expirer": {"DATABASE_URL", "KAFKA_SASL_PASSWORD"},
    "notifier": {"DATABASE_URL", "KAFKA_SASL_PASSWORD"},
}


def test_secrets_come_from_the_secret_not_the_config_map() -> None:
    config = documents("configmap.yaml")[0]["data"]

    assert not set(config) & set().union(*SECRETS_READ.values())
    assert not set(config) & set(example_secret())


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_deployment_reads_its_secrets_from_the_secret(service: str) -> None:
    refs = secret_refs(service)

    assert set(refs) == SECRETS_READ[service]
    for name, ref in refs.items():
        assert ref["name"] == "webhook-tasks"
        assert ref["key"] == name


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_a_secret_key_is_optional_exactly_when_its_setting_has_a_default(service: str) -> None:
    # An optional key may be left out of the Secret and the pod still starts.
    known = setting_names(SETTINGS[service])

    for name, ref in secret_refs(service).items():
        assert ref.get("optional", False) is not known[name], name


def test_the_example_secret_holds_every_key_a_deployment_reads_and_no_other() -> None:
    read = {ref["key"] for service in SETTINGS for ref in secret_refs(service).values()}

    assert set(example_secret()) == read


def deployed_environment(service: str, secret: dict[str, str]) -> dict[str, str]:
    """Return the environment a pod of `service` gets from the manifests and `secret`."""
    container = deployment(service)["spec"]["template"]["spec"]["containers"][0]
    environment = dict(documents("configmap.yaml")[0]["data"])
    for item in container.get("env", []):
        if "value" in item:
            environment[item["name"]] = item["value"]
        elif (key := item["valueFrom"]["secretKeyRef"]["key"]) in secret:
            environment[item["name"]] = secret[key]
    return environment


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_each_service_starts_with_the_example_secret_filled_in(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As an operator fills it in: each CHANGE-ME placeholder replaced, every other value kept.
    filled = {
        key: re.sub(r"CHANGE-ME[-A-Z0-9]*", lambda _: secrets.token_hex(32), value)
        for key, value in example_secret().items()
    }
    for name in setting_names(SETTINGS[service]):
        monkeypatch.delenv(name, raising=False)
    for name, value in deployed_environment(service, filled).items():
        monkeypatch.setenv(name, value)

    SETTINGS[service]()


def test_kafka_topics_match_the_contract() -> None:
    names = {doc["metadata"]["name"] for doc in documents("topics.yaml")}

    assert names == set(Topics("webhook-tasks").all())


def test_topics_a_callback_is_carried_on_take_the_largest_message_the_services_send() -> None:
    topics = Topics("webhook-tasks")
    limits = {
        doc["metadata"]["name"]: int(doc["spec"]["config"].get("max.message.bytes", 0))
        for doc in documents("topics.yaml")
    }
    carried_on = [topics.task_lifecycle, topics.notifications]
    carried_on += [name for name in topics.all() if name.endswith(".dead-letter")]

    # The gateway's producer sends a callback at its default limits, and the services' producers
    # an event built from it.
    gateway = GatewaySettings(
        kafka_bootstrap_servers="kafka:9092", callback_token_keys="k:" + "x" * 32
    )
    assert gateway.kafka_max_request_bytes <= limits[topics.callback_received]
    assert limits[topics.callback_received] == KAFKA_MAX_MESSAGE_BYTES
    for name in carried_on:
        assert limits[name] >= KAFKA_MAX_MESSAGE_BYTES, name


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_service_is_probed_on_its_health_endpoints(service: str) -> None:
    container = deployment(service)["spec"]["template"]["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = {item["name"]: item.get("value") for item in container["env"]}

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    probed = ports[container["readinessProbe"]["httpGet"]["port"]]
    served = env.get("HEALTH_PORT") or env.get("GATEWAY_PORT")
    assert str(probed) == served


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_pod_meets_the_restricted_pod_security_standard(service: str) -> None:
    pod = deployment(service)["spec"]["template"]["spec"]
    container = pod["containers"][0]["securityContext"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]


def test_a_deployment_an_autoscaler_scales_fixes_no_replica_count() -> None:
    scaled = [
        (name, doc["spec"]["scaleTargetRef"]["name"])
        for name in MANIFESTS.glob("*.yaml")
        for doc in documents(name.name)
        if doc.get("kind") == "HorizontalPodAutoscaler"
    ]

    assert scaled, "the gateway is autoscaled"
    for _, target in scaled:
        assert "replicas" not in deployment(target)["spec"], target


def test_the_benchmark_measures_the_dispatcher_replicas_and_partitions_deployed() -> None:
    partitions = {
        doc["metadata"]["name"]: doc["spec"]["partitions"] for doc in documents("topics.yaml")
    }
    main = [name for name in partitions if not name.endswith(DEAD_LETTER_SUFFIX)]

    assert deployment("dispatcher")["spec"]["replicas"] == DEPLOYED_REPLICAS
    assert {partitions[name] for name in main} == {DEPLOYED_PARTITIONS}


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_pod_can_trust_a_kafka_ca_it_is_given_and_starts_without_one(service: str) -> None:
    pod = deployment(service)["spec"]["template"]["spec"]
    (volume,) = [item for item in pod.get("volumes", []) if item["name"] == "kafka-ca"]
    (mount,) = [
        item for item in pod["containers"][0].get("volumeMounts", []) if item["name"] == "kafka-ca"
    ]

    assert volume["secret"] == {"secretName": "webhook-tasks-kafka-ca", "optional": True}
    assert mount == {
        "name": "kafka-ca",
        "mountPath": "/etc/webhook-tasks/kafka-ca",
        "readOnly": True,
    }
    assert "/etc/webhook-tasks/kafka-ca/" in (MANIFESTS / "configmap.yaml").read_text()


WORKERS = ("dispatcher", "expirer", "notifier")


def pod_spec(service: str) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(service)["spec"]["template"]["spec"]
    return spec


def test_the_gateway_serves_until_traffic_has_left_then_has_time_to_close() -> None:
    spec = pod_spec("callback-gateway")
    sleep, seconds = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    shutdown = GatewaySettings.model_fields["gateway_shutdown_timeout_seconds"].default

    assert sleep == "sleep"
    assert int(seconds) >= 5
    assert spec["terminationGracePeriodSeconds"] > (
        int(seconds) + shutdown + KAFKA_REQUEST_TIMEOUT_MS / 1000
    )


@pytest.mark.parametrize("service", WORKERS)
def test_a_worker_has_time_to_finish_its_batch_flush_and_close(service: str) -> None:
    batch = inspect.signature(create_broker).parameters["graceful_timeout"].default

    assert pod_spec(service)["terminationGracePeriodSeconds"] > (
        batch + FINAL_FLUSH_SECONDS + KAFKA_REQUEST_TIMEOUT_MS / 1000
    )


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_a_budget_lets_a_drain_evict_pods_that_are_not_ready(service: str) -> None:
    # All replicas go unready together while Kafka or PostgreSQL is away.
    (budget,) = [
        doc for doc in documents(f"{service}.yaml") if doc["kind"] == "PodDisruptionBudget"
    ]

    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
