from __future__ import annotations

import random
from pathlib import Path

import pytest

from training.data import DataError, bucket_batches, read_examples, read_text


def test_tsv_csv_and_jsonl_read_the_same_examples(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text('label\ttext\n1\tsaid "great" twice\n0\tdull\n')
    (tmp_path / "a.csv").write_text('text,label\n"said ""great"" twice",1\ndull,0\n')
    (tmp_path / "a.jsonl").write_text('{"text": "said \\"great\\" twice", "label": 1}\n\n'
                                      '{"text": "dull", "label": 0}\n')
    expected = [("said \"great\" twice", "1"), ("dull", "0")]
    for name in ("a.tsv", "a.csv", "a.jsonl"):
        got = [(e.text, e.label) for e in read_examples(tmp_path / name)]
        assert got == expected, name


def test_columns_are_chosen_by_name(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("id,review,stars\n1,lovely,pos\n2,awful,neg\n")
    examples = read_examples(tmp_path / "r.csv", text_column="review", label_column="stars")
    assert [(e.text, e.label, e.line) for e in examples] == [("lovely", "pos", 2), ("awful", "neg", 3)]


@pytest.mark.parametrize(("content", "line", "reason"), [
    ("label\ttext\n1\tfine\n0\t \n", 3, "empty text"),
    ("label\ttext\n1\tfine\n7\todd\n", 3, "label '7' is not in the label set"),
    ("label\ttext\n1\tfine\n1\ttoo\tmany\n", 3, "broken row: 3 fields"),
])
def test_bad_rows_name_file_and_line(tmp_path: Path, content: str, line: int, reason: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=f"bad.tsv, line {line}: {reason}"):
        read_examples(path, labels=["0", "1"])


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.tsv"
    path.write_bytes("label\ttext\n1\tfine\n0\tna\u00efve\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.tsv, line 3: not valid UTF-8 \(byte 0xef\)"):
        read_examples(path)


def test_missing_column_and_broken_json_are_reported(tmp_path: Path) -> None:
    (tmp_path / "a.tsv").write_text("sentence\tlabel\nfine\t1\n")
    with pytest.raises(DataError, match="line 2: no column 'text'"):
        read_examples(tmp_path / "a.tsv")
    (tmp_path / "b.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(DataError, match=r"b\.jsonl, line 2: broken JSON"):
        read_examples(tmp_path / "b.jsonl")


def test_plain_text_must_have_content(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="holds no text"):
        read_text(tmp_path / "empty.txt")
    assert read_text(Path(__file__)).startswith("from")


def test_bucketed_batches_cover_every_example_once_with_little_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(1000)]
    batches = bucket_batches(lengths, 32, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    assert padding < 0.1 * sum(lengths)
    assert batches == bucket_batches(lengths, 32, random.Random(1))
