"""What a newcomer trips on is refused at once, with exit status 2 and the flag and the limit
named: text too short for the settings, an existing --out, a work dir inside the model folder,
a resume onto another architecture, bad numbers, mismatched label names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import LM_TEXT, tiny_classifier_args, tiny_lm_args
from training.cli import main as train_main
from training.options import UsageError, resolve_work_dir


def _lm(text: Path, out: Path, *extra: str) -> list[str]:
    return ["lm", "--text", str(text), "--embedding-dim", "8", "--hidden-size", "8",
            "--max-steps", "3", "--no-progress", "--threads", "1", "--out", str(out),
            "--work-dir", str(out.parent / f"work-{out.name}"), *extra]


def test_a_six_byte_text_is_refused_naming_the_minimum(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text("hello\n")
    assert train_main(_lm(text, tmp_path / "m")) == 2  # was: a loop at 100% CPU forever
    err = capsys.readouterr().err
    assert "need at least 8,257" in err and "--streams 64" in err and "--bptt 128" in err
    assert not (tmp_path / "m").exists()


def test_four_kilobytes_with_the_default_settings_is_refused(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]
                                                              ) -> None:
    text = tmp_path / "small.txt"
    text.write_text(LM_TEXT * 16)  # ~4 KB: was a ZeroDivisionError
    assert 4000 < len(text.read_text()) < 8257
    assert train_main(_lm(text, tmp_path / "m")) == 2
    assert "need at least 8,257" in capsys.readouterr().err


def test_the_minimum_trains_and_one_character_less_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 2 streams of windows of 4 characters (and the target one further): 2 * 5 + 1 = 11.
    val = tmp_path / "val.txt"
    val.write_text("abcab")
    for size, status in ((11, 0), (10, 2)):
        text = tmp_path / f"t{size}.txt"
        text.write_text(("abcde" * 3)[:size])
        args = _lm(text, tmp_path / f"m{size}", "--streams", "2", "--bptt", "4",
                   "--val-text", str(val))
        assert train_main(args) == status, size
    assert "has 10 characters" in capsys.readouterr().err


def test_an_existing_out_needs_overwrite(tmp_path: Path, lm_file: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "mine"
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    assert train_main(tiny_lm_args(lm_file, out, steps=4)) == 2
    err = capsys.readouterr().err
    assert f"--out {out} already exists; pass --overwrite" in err
    assert (out / "config.json").read_text() == "{}"  # untouched
    assert train_main([*tiny_lm_args(lm_file, out, steps=4), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["task"] == "generation"
    empty = tmp_path / "models" / "empty"
    empty.mkdir()
    assert train_main(tiny_lm_args(lm_file, empty, steps=4)) == 0  # an empty folder is fine


def test_the_default_work_dir_is_outside_the_model_and_distinct_per_output(tmp_path: Path) -> None:
    inside = resolve_work_dir(Path("runs/x"), None)
    assert inside.resolve() != Path("runs/x").resolve()
    assert Path("runs/x").resolve() not in inside.resolve().parents
    assert resolve_work_dir(Path("a/mine"), None) != resolve_work_dir(Path("b/mine"), None)
    assert resolve_work_dir(Path("a/mine"), None) == resolve_work_dir(Path("a/mine"), None)
    assert resolve_work_dir(Path("a/mine"), None).name.startswith("mine-")
    for bad in (Path("runs/x"), Path("runs/x/work")):
        with pytest.raises(UsageError, match=r"--work-dir .* is inside --out"):
            resolve_work_dir(Path("runs/x"), bad)


def test_a_work_dir_inside_out_exits_2(tmp_path: Path, lm_file: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    args = tiny_lm_args(lm_file, out, steps=4)
    args[args.index("--work-dir") + 1] = str(out / "ckpt")
    assert train_main(args) == 2
    assert "is inside --out" in capsys.readouterr().err


def test_resume_onto_another_architecture_is_one_line(tmp_path: Path, lm_file: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models" / "lm"
    assert train_main([*tiny_lm_args(lm_file, out, steps=4), "--checkpoint-every", "2"]) == 0
    capsys.readouterr()
    args = [*tiny_lm_args(lm_file, out, steps=8), "--hidden-size", "24", "--resume", "--overwrite"]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and "another architecture" in line
    assert "there, (" in line and ") here" in line  # the first parameter that differs


def test_label_names_that_do_not_match_exit_2(tmp_path: Path, sentiment_files: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = tiny_classifier_args(*sentiment_files, tmp_path / "models" / "c", steps=4)
    args[args.index("--label-names") + 1] = "bad,neutral,good"
    assert train_main(args) == 2
    assert "--label-names gives 3 names for 2 labels" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--batch-size", "0", "it must be at least 1"),
    ("--max-steps", "-5", "it must be at least 1"),
    ("--lr", "-1", "it must be at least 0"),
    ("--dropout", "1.5", "at most 1"),
    ("--warmup-ratio", "2", "at most 1"),
    ("--epochs", "ten", "is not an integer"),
])
def test_a_bad_number_names_the_flag_and_exits_2(tmp_path: Path, lm_file: Path, flag: str,
                                                 value: str, says: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        train_main([*tiny_lm_args(lm_file, tmp_path / "m"), flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and says in err


def test_dev_and_dev_fraction_together_exit_2(tmp_path: Path, sentiment_files: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = tiny_classifier_args(*sentiment_files, tmp_path / "models" / "c", steps=4)
    assert train_main([*args, "--dev-fraction", "0.2"]) == 2
    assert "give --dev or --dev-fraction, not both" in capsys.readouterr().err
