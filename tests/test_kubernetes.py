"""The Kubernetes manifests (deploy/kubernetes): rendered by kustomize, validated against the
Kubernetes schemas offline, and kept consistent with the app, the Dockerfile and compose."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from app.main import create_app
from app.metrics import QUEUE_DEPTH
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ["base", "overlays/gpu", "examples/models-pvc", "examples/api-keys-file",
                  "examples/hpa-queue-depth"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# Kubernetes releases the manifests must be valid for: the oldest supported here, the newest.
VERSIONS = ["1.28.0", "1.37.0"]

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


@functools.cache
def _kustomize(kustomization: str) -> str:
    return subprocess.run(["kubectl", "kustomize", str(K8S / kustomization)], check=True,
                          capture_output=True, text=True).stdout


def render(kustomization: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a folder under deploy/kubernetes: its objects."""
    return [doc for doc in yaml.safe_load_all(_kustomize(kustomization)) if doc]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def quantity(value: str) -> float:
    """A Kubernetes memory quantity in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([\d.]+)([KMG]i?)?", value).groups()  # type: ignore[union-attr]
    return float(number) * units.get(unit or "", 1)


@needs_kubectl
def test_base_renders_the_service_objects() -> None:
    kinds = sorted(o["kind"] for o in render("base"))
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget", "Service"]


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rendered_objects_validate_against_the_kubernetes_schemas(kustomization: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for obj in render(kustomization):
        for version in VERSIONS:
            try:  # strict: an unknown or misspelt field fails too
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{kustomization}: {obj['kind']} {obj['metadata']['name']} is not "
                            f"valid for Kubernetes {version}: {e.message}")


def test_a_wrong_manifest_fails_validation() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": "eighty"}], "selectr": {}}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[-1], strict=True)


@needs_kubectl
def test_pods_match_the_image_the_app_and_compose() -> None:
    objects = render("base")
    pod = one(objects, "Deployment")["spec"]["template"]
    c = container(objects)
    # Port: the Dockerfile's and compose's 8000, named for the Service and the probes.
    assert re.search(r"^EXPOSE 8000$", DOCKERFILE, re.M) and "8000:8000" in \
        COMPOSE["services"]["api"]["ports"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    service = one(objects, "Service")["spec"]
    assert service["ports"][0]["targetPort"] == "http"
    labels = pod["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == one(objects, "Deployment")["metadata"]["name"]
    # Probes on the app's health routes, readiness on the Dockerfile's HEALTHCHECK path.
    client = TestClient(create_app(Settings()))  # no lifespan: up, models not loaded
    answers = {"/health/live": 200, "/health/ready": 503}
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert "'http://127.0.0.1:8000/health/ready'" in DOCKERFILE
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = c[probe]["httpGet"]["path"]
        assert client.get(path).status_code == answers[path], path
        assert c[probe]["httpGet"]["port"] == "http"
    # The image's user, and nothing written outside the /tmp volume.
    user = int(re.search(r"^USER (\d+)$", DOCKERFILE, re.M)[1])  # type: ignore[index]
    security = pod["spec"]["securityContext"]
    assert security["runAsUser"] == user and security["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    tmp = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert tmp == {"tmp": "/tmp"}
    assert {v["name"]: v for v in pod["spec"]["volumes"]}["tmp"]["emptyDir"]
    env = env_of(c)
    for name in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "MPLCONFIGDIR"):
        assert env[name]["value"].startswith("/tmp"), name
    # The models where the image puts them and the settings say.
    config = one(objects, "ConfigMap")["data"]
    assert "RNN_MODELS_DIR=/srv/models" in DOCKERFILE and config["RNN_MODELS_DIR"] == "/srv/models"
    # Memory sized from the measured peak (363 MB PSS with the generation worker).
    resources = c["resources"]
    assert quantity(resources["requests"]["memory"]) >= 1.2 * 508e6  # the measured peak (PSS)
    assert quantity(resources["limits"]["memory"]) >= 2 * quantity(resources["requests"]["memory"])


@needs_kubectl
def test_grace_period_covers_prestop_and_the_apps_graceful_shutdown() -> None:
    objects = render("base")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    # The image's command runs: the grace period is the Dockerfile's graceful-shutdown timeout.
    assert "command" not in c and "args" not in c
    cmd = re.search(r'^CMD (\[.*\])$', DOCKERFILE, re.M)
    assert cmd is not None
    argv = yaml.safe_load(cmd[1])
    shutdown_s = float(argv[argv.index("--timeout-graceful-shutdown") + 1])
    prestop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "sleep"
    wait_s = float(prestop[1])
    assert 0 < wait_s <= 10
    # SIGTERM comes after preStop; the app then drains for up to shutdown_s, stops its models
    # and exits: all of it inside the grace period, with time to spare before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= wait_s + shutdown_s + 5
    stop = COMPOSE["services"]["api"]["stop_grace_period"]
    assert float(stop.rstrip("s")) >= shutdown_s + 5


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_settings_are_real_and_valid(kustomization: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(kustomization)
    fields = {"RNN_" + name.upper() for name in Settings.model_fields}
    config = one(objects, "ConfigMap")["data"]
    assert set(config) <= fields, set(config) - fields
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    Settings()  # every value is one the service accepts
    env = env_of(container(objects))
    named = {n for n in env if n.startswith("RNN_")}
    assert named <= fields, named - fields
    deployment = container(objects)
    assert deployment["envFrom"] == [{"configMapRef": {"name": one(objects, "ConfigMap")
                                                        ["metadata"]["name"]}}]
    if "RNN_API_KEYS" in env:  # from the Secret when there is one, else no auth
        ref = env["RNN_API_KEYS"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "textrnn-api-keys", "key": "api-keys", "optional": True}


@needs_kubectl
def test_gpu_overlay_runs_the_cuda_image_on_a_gpu() -> None:
    objects = render("overlays/gpu")
    c = container(objects)
    gpu = COMPOSE["services"]["api-gpu"]
    flavour = gpu["build"]["args"]["TORCH"]
    assert re.search(r"^ARG TORCH=cpu$", DOCKERFILE, re.M) and flavour.startswith("cu")
    assert c["image"] == gpu["image"] == f"textrnn:{flavour}"
    assert container(render("base"))["image"] == COMPOSE["services"]["api"]["image"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert one(objects, "ConfigMap")["data"]["RNN_DEVICE"] == "cuda"
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"


@needs_kubectl
def test_examples_mount_models_and_keys_and_scale_on_queue_depth() -> None:
    c = container(render("examples/models-pvc"))
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/srv/models" and mounts["models"]["readOnly"]
    keys = render("examples/api-keys-file")
    env = env_of(container(keys))
    assert "RNN_API_KEYS" not in env
    folder = {m["name"]: m for m in container(keys)["volumeMounts"]}["api-keys"]["mountPath"]
    assert env["RNN_API_KEYS_FILE"]["value"] == f"{folder}/api-keys"
    hpa = one(render("examples/hpa-queue-depth"), "HorizontalPodAutoscaler")["spec"]
    pods = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert pods[0]["metric"]["name"] == QUEUE_DEPTH._name == "rnn_queue_depth"
    assert {m["type"] for m in hpa["metrics"]} == {"Resource", "Pods"}
