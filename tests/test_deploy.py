"""The Dockerfile and compose file: linted and checked against the Makefile's set-up.

What can be checked without a Docker engine; tests/deploy/test_image.py builds and runs the
image where one can start.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_compose_serves_api_on_8000_with_healthcheck_and_models_volume() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert "8000:8000" in api["ports"]
    assert "/health/ready" in " ".join(api["healthcheck"]["test"])
    assert any(v.startswith("./models:/srv/models") for v in api["volumes"])
    assert api["restart"] == "unless-stopped"
    assert api["environment"]["RNN_MODELS_DIR"] == "/srv/models"
    gpu = compose["services"]["api-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["TORCH"].startswith("cu")
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_file_validates() -> None:
    subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                   check=True, cwd=ROOT)


def test_dockerfile_installs_like_make_setup_and_runs_as_non_root() -> None:
    assert "scripts/install-torch.sh /opt/venv/bin/python" in DOCKERFILE
    assert "scripts/install-torch.sh $(PY) $(TORCH)" in (ROOT / "Makefile").read_text()
    assert re.search(r"^ARG TORCH=cpu$", DOCKERFILE, re.M)
    assert re.search(r"^USER 10001$", DOCKERFILE, re.M)
    assert "HEALTHCHECK" in DOCKERFILE and "/health/ready" in DOCKERFILE
    assert 'CMD ["uvicorn", "app.main:app"' in DOCKERFILE
    assert "COPY --chown=10001:10001 models /srv/models" in DOCKERFILE
    # The image holds the service, never the training code or the tests.
    copied = re.findall(r"^COPY (?:--\S+ )*(\S+)", DOCKERFILE, re.M)
    assert "training" not in copied and "tests" not in copied


def test_models_are_mounted_unless_the_with_models_target_is_asked_for() -> None:
    stages = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    assert stages[-1].strip() == "service"  # the default target: no models in the image
    assert "COPY --chown=10001:10001 models /srv/models" in stages[-2]
    assert stages[-2].startswith("service AS with-models")
    assert 'ENTRYPOINT ["tini", "--"]' in DOCKERFILE
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert compose["api"]["read_only"] is True and compose["api"]["tmpfs"] == ["/tmp"]
    # The GPU profile's service publishes another host port than the CPU one.
    host_ports = [s["ports"][0].rsplit(":", 1)[0] for s in compose.values()]
    assert len(set(host_ports)) == len(host_ports), host_ports


def test_dockerignore_lets_in_what_the_dockerfile_copies_and_the_shipped_models_only() -> None:
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    # The build context's files (not --from another stage), models/ apart.
    copied = set(re.findall(r"^COPY (?:--chown=\S+ )?([^-\s]\S*) ", DOCKERFILE, re.M))
    assert copied - {"models"} == {a for a in allowed if not a.startswith("models/")}
    tracked = subprocess.run(["git", "ls-files", "models"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert {a for a in allowed if a.startswith("models/")} == \
        {"/".join(Path(f).parts[:2]) for f in tracked}


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed")
    result = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
