"""The examples in README.md and docs/ are what the server answers (scripts/docs_examples.py),
and the docs tell no history of the project."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_examples", ROOT / "scripts" / "docs_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_examples"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


docs_examples = _load_script()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """One server on the shipped models for every test here (start-up is most of the time)."""
    if not (MODELS / "sentiment" / "model.safetensors").is_file():
        pytest.skip("models/ is absent")
    with docs_examples.serve(MODELS) as url:
        yield url


def test_every_documented_output_is_the_servers_answer(server: str) -> None:
    files = docs_examples.default_files()
    examples, mismatches = docs_examples.check(files, server)
    assert not mismatches, "\n\n".join(m.describe() for m in mismatches) + \
        "\n(run `make docs` to rewrite them, and read the diff)"
    # The README's tour shows every inference route, and the API page more.
    names = {(e.file.name, e.name) for e in examples}
    for name in ("classify", "generate", "generate_stream", "score", "health_ready"):
        assert ("README.md", name) in names
    assert len([n for f, n in names if f == "api.md"]) >= 8


def _block(name: str) -> str:
    """The README's example `name`, markers and all."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    [block] = [m[0] for m in docs_examples.EXAMPLE.finditer(text) if m["name"] == name]
    return str(block)


def _copy_with(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A page holding the README's examples `name` and `classify` (as a witness that the
    check picks out the one edited), with `old` replaced by `new` in the first."""
    block = _block(name)
    assert block.count(old) == 1, old
    copy = tmp_path / f"{name}.md"
    witness = _block("classify") if name != "classify" else _block("health_ready")
    copy.write_text(f"# A page\n\n{block.replace(old, new)}\n\nText.\n\n{witness}\n",
                    encoding="utf-8")
    return copy


def _output(name: str) -> str:
    [example] = [e for e in docs_examples.find_examples(ROOT / "README.md") if e.name == name]
    return str(example.output)


def test_an_output_edited_by_hand_fails_the_check(server: str, tmp_path: Path) -> None:
    # A score moved in its third digit: beyond what float16 weights change.
    score = re.search(r'"score":(0\.\d{4,})', _output("classify"))
    assert score is not None
    moved = f"{float(score[1]) * 0.99:.6f}"
    copy = _copy_with(tmp_path, "classify", score[0], f'"score":{moved}')
    _, mismatches = docs_examples.check([copy], server)
    assert [m.example.name for m in mismatches] == ["classify"]
    assert f'"score":{moved}' in mismatches[0].describe()
    # The command line says so too, with exit status 1 and the diff.
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs_examples.py"),
                             "--check", "--url", server, str(copy)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "example 'classify' differs" in result.stdout


def test_a_seeded_generation_is_compared_exactly(server: str, tmp_path: Path) -> None:
    text = re.search(r'"generated_text":"(.{12})', _output("generate"))
    assert text is not None
    swapped = text[1][:-1] + ("x" if text[1][-1] != "x" else "y")
    copy = _copy_with(tmp_path, "generate", text[0], f'"generated_text":"{swapped}')
    _, mismatches = docs_examples.check([copy], server)
    assert [m.example.name for m in mismatches] == ["generate"]


def test_numbers_within_float16_tolerance_pass_and_write_restores(server: str,
                                                                   tmp_path: Path) -> None:
    output = _output("score")
    log_prob = re.search(r'"log_prob":(-[\d.]+)', output)
    assert log_prob is not None
    nudged = float(log_prob[1]) * (1 + 2e-4)  # float16 weights on another CPU move this little
    copy = _copy_with(tmp_path, "score", log_prob[0], f'"log_prob":{nudged!r}')
    assert docs_examples.check([copy], server)[1] == []
    # --write puts the server's answer back where one differs, and leaves the rest alone.
    broken = _copy_with(tmp_path, "score", log_prob[0], '"log_prob":-1.0')
    _, mismatches = docs_examples.check([broken], server)
    assert [m.example.name for m in mismatches] == ["score"]
    docs_examples.write(mismatches)
    assert docs_examples.check([broken], server)[1] == []
    after = {e.name: e.output for e in docs_examples.find_examples(broken)}
    assert '"log_prob":-1.0' not in after["score"]
    assert after["classify"] == _output("classify")  # the one that matched is left alone
    assert broken.read_text(encoding="utf-8").startswith("# A page\n\n<!-- example:score -->")


def test_examples_parse_as_written_and_bad_markers_are_refused(tmp_path: Path) -> None:
    req = docs_examples.parse_curl(
        "curl -sN -w '\\n%{http_code}\\n' localhost:8000/generate_stream "
        "-H 'content-type: application/json' \\\n  -d '{\"inputs\": \"a\"}'")
    assert (req.method, req.path, req.data) == ("POST", "/generate_stream", '{"inputs": "a"}')
    assert req.headers == {"content-type": "application/json"}
    assert docs_examples.parse_curl("curl -s localhost:8000/health/ready").method == "GET"
    with pytest.raises(docs_examples.ExampleError, match="--compressed"):
        docs_examples.parse_curl("curl --compressed localhost:8000/")
    page = tmp_path / "page.md"
    page.write_text("<!-- example:a -->\n```bash\ncurl -s localhost:8000/\n```\nno output\n")
    with pytest.raises(docs_examples.ExampleError, match="outside a complete example"):
        docs_examples.find_examples(page)


def test_json_layout_keeps_short_values_on_one_line() -> None:
    assert docs_examples.layout([{"a": 1}, {"b": [2, 3]}]) == '[{"a":1},{"b":[2,3]}]'
    long = {"text": "x" * 120, "n": 1}
    assert docs_examples.layout(long) == '{"text":"' + "x" * 120 + '",\n "n":1}'


HISTORY = re.compile(r"session|commit [0-9a-f]{7}", re.IGNORECASE)


def test_readme_and_docs_tell_no_history_of_the_project() -> None:
    for path in docs_examples.default_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not HISTORY.search(line), f"{path.name}:{number}: {line}"


def test_readme_is_a_guide_not_a_notebook() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 300
