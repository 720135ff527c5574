"""The admin surface: closed without admin keys, admin keys apart from inference keys, keys
read from files and never shown, and SIGHUP reloading a real server process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.main import create_app
from app.settings import Settings
from tests.app.conftest import ROOT, descendants, server_process

ADMIN, INFERENCE = "adm-7f3c9e1a", "inf-52b8d0c4"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_without_admin_keys_the_admin_routes_are_not_served(models_dir: Path) -> None:
    with TestClient(create_app(Settings(models_dir=models_dir))) as client:
        assert client.post("/admin/reload").status_code == 404
        assert "/admin/reload" not in client.get("/openapi.json").json()["paths"]
    locked = Settings(models_dir=models_dir, api_keys=[INFERENCE])
    with TestClient(create_app(locked)) as client:
        # an unknown path to a client without a key, as any other
        assert client.post("/admin/reload").status_code == 401
        assert client.post("/admin/reload", headers=_bearer(INFERENCE)).status_code == 404


def test_admin_key_opens_admin_routes_only_and_inference_key_gets_403(models_dir: Path) -> None:
    settings = Settings(models_dir=models_dir, api_keys=[INFERENCE], admin_keys=[ADMIN])
    with TestClient(create_app(settings)) as client:
        ok = client.post("/admin/reload", headers=_bearer(ADMIN))
        assert ok.status_code == 200
        assert ok.json() == {"loaded": [], "kept": ["sentiment", "shakespeare"], "removed": [],
                             "failed": [], "failed_kept_serving": []}
        forbidden = client.post("/admin/reload", headers=_bearer(INFERENCE))
        assert forbidden.status_code == 403 and "RNN_ADMIN_KEYS" in forbidden.json()["detail"]
        missing = client.post("/admin/reload")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert client.post("/admin/reload", headers=_bearer("guess")).status_code == 401
        assert client.post("/admin/reload", headers={"Authorization": f"Basic {ADMIN}"}
                           ).status_code == 401
        # an admin key is not an inference key
        body = {"inputs": "a fine film"}
        assert client.post("/classify", json=body, headers=_bearer(ADMIN)).status_code == 401
        assert client.post("/classify", json=body, headers=_bearer(INFERENCE)).status_code == 200
        answers = client.get("/openapi.json").json()["paths"]["/admin/reload"]["post"]["responses"]
        assert {"200", "401", "403"} <= answers.keys()
    # admin keys alone: the model routes stay open, the admin routes do not
    with TestClient(create_app(Settings(models_dir=models_dir, admin_keys=[ADMIN]))) as client:
        assert client.post("/classify", json={"inputs": "fine"}).status_code == 200
        assert client.post("/admin/reload").status_code == 401
        assert client.post("/admin/reload", headers=_bearer(ADMIN)).status_code == 200


def test_a_root_path_does_not_hide_an_admin_route(models_dir: Path) -> None:
    # Behind a proxy prefix (uvicorn --root-path) the router strips the prefix; so does the check.
    app = create_app(Settings(models_dir=models_dir, admin_keys=[ADMIN]))
    with TestClient(app, root_path="/api") as client:
        assert client.post("/api/admin/reload").status_code == 401
        assert client.post("/api/admin/reload", headers=_bearer(ADMIN)).status_code == 200


def test_keys_from_files_join_the_variables_and_are_never_shown(
        models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api_file, admin_file = tmp_path / "api-keys", tmp_path / "admin-keys"
    api_file.write_text(f"# inference keys\n\n  {INFERENCE}  \ninf-second\n", encoding="utf-8")
    admin_file.write_text(f"{ADMIN}\n# {ADMIN}-commented-out\n", encoding="utf-8")
    monkeypatch.setenv("RNN_API_KEYS", "inf-from-env,inf-second")
    monkeypatch.setenv("RNN_API_KEYS_FILE", str(api_file))
    monkeypatch.setenv("RNN_ADMIN_KEYS_FILE", str(admin_file))
    settings = Settings(models_dir=models_dir)
    assert settings.api_keys == ["inf-from-env", "inf-second", INFERENCE]
    assert settings.admin_keys == [ADMIN]
    shown = repr(settings) + str(settings)
    assert INFERENCE not in shown and ADMIN not in shown and "inf-from-env" not in shown
    with TestClient(create_app(settings)) as client:
        for key in ("inf-from-env", "inf-second", INFERENCE):
            r = client.post("/classify", json={"inputs": "fine"}, headers=_bearer(key))
            assert r.status_code == 200, key
        assert client.post("/admin/reload", headers=_bearer(ADMIN)).status_code == 200
        assert client.post("/admin/reload", headers=_bearer(f"{ADMIN}-commented-out")
                           ).status_code == 401
        for path in ("/models", "/models/sentiment", "/info", "/openapi.json", "/health/ready",
                     "/metrics"):
            text = client.get(path, headers=_bearer(INFERENCE)).text
            assert INFERENCE not in text and ADMIN not in text, path


@pytest.mark.parametrize(("content", "expected"), [
    (None, "cannot read key file"),
    (b"\n# only a comment\n   \n", "holds no key"),
    (b"\xffsecret-key-abc\n", "is not UTF-8 text"),
])
def test_a_bad_key_file_is_refused_naming_the_file_not_its_content(
        tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "admin-keys"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValidationError, match=expected) as caught:
        Settings(admin_keys_file=path)
    assert str(path) in str(caught.value) and "secret-key-abc" not in str(caught.value)


def test_a_missing_key_file_stops_the_server_with_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-secret"
    env = os.environ | {"RNN_API_KEYS_FILE": str(missing), "RNN_API_KEYS": "inf-never-shown"}
    result = subprocess.run([sys.executable, "-c", "import app.main"], env=env,
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert f"invalid setting RNN_API_KEYS_FILE='{missing}'" in result.stderr
    assert "No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr and "inf-never-shown" not in result.stderr


def _names(url: str) -> dict[str, str]:
    return {m["name"]: m["status"] for m in httpx.get(f"{url}/models").json()["models"]}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sighup_reloads_a_default_server_and_its_generation_workers_live_on(
        models_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    env = {"RNN_MODELS_DIR": str(root), "RNN_LOG_FORMAT": "json",
           "RNN_GENERATION_WORKER": "process"}
    with server_process(env) as (url, proc):
        assert httpx.post(f"{url}/admin/reload").status_code == 404
        assert "/admin/reload" not in httpx.get(f"{url}/openapi.json").json()["paths"]
        assert _names(url) == {"sentiment": "ready", "shakespeare": "ready"}
        workers = sorted(descendants(proc.pid))
        assert workers, "the generation worker process"
        for pid in workers:  # as a hangup sent to the whole process group would reach them
            os.kill(pid, signal.SIGHUP)
        shutil.copytree(root / "shakespeare", root / "shakespeare-two")
        shutil.rmtree(root / "sentiment")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while _names(url) != {"shakespeare": "ready", "shakespeare-two": "ready"}:
            assert time.monotonic() < deadline, _names(url)
            time.sleep(0.1)
        for model in ("shakespeare", "shakespeare-two"):  # the old worker and the new one
            r = httpx.post(f"{url}/generate", timeout=30, json={
                "inputs": "ROMEO:", "model": model, "parameters": {"max_new_tokens": 20}})
            assert r.status_code == 200 and len(r.json()["generated_text"]) == 20
        assert all(Path(f"/proc/{pid}").exists() for pid in workers)
        shutil.copytree(root / "shakespeare", root / "shakespeare-three")
        os.kill(proc.pid, signal.SIGHUP)
        while "shakespeare-three" not in _names(url):
            assert time.monotonic() < deadline, _names(url)
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGHUP)  # each signal rescans: this one finds nothing new
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "generation worker for model shakespeare exited" not in out
    assert out.count(f"SIGHUP: reloading the models in {root}") == 3
    assert ("SIGHUP: reload done: loaded ['shakespeare-two'], kept ['shakespeare'], "
            "removed ['sentiment'], failed []") in out
    assert ("SIGHUP: reload done: loaded ['shakespeare-three'], kept ['shakespeare', "
            "'shakespeare-two'], removed [], failed []") in out
    assert ("SIGHUP: reload done: loaded [], kept ['shakespeare', 'shakespeare-three', "
            "'shakespeare-two'], removed [], failed []") in out
