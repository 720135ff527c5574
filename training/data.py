"""Reading training data (TSV, CSV, JSON Lines, plain text) and batching it by length."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataError", "Example", "bucket_batches", "read_examples", "read_text", "split_examples"]


class DataError(Exception):
    """Bad training data; the message names the file, the line and what is wrong."""

    def __init__(self, path: Path | str, line: int | None, reason: str) -> None:
        where = f"{path}, line {line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Example:
    """One labelled text and the line it came from."""

    text: str
    label: str
    line: int


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, None, f"cannot read: {e.strerror or e}") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(path, line, f"not valid UTF-8 (byte 0x{raw[e.start]:02x}); "
                                    "convert the file to UTF-8") from e


def read_text(path: Path) -> str:
    """A whole plain-text file, checked to be non-empty UTF-8."""
    text = _decode(path)
    if not text.strip():
        raise DataError(path, None, "the file holds no text")
    return text


def _rows(path: Path, text: str, fmt: str) -> list[tuple[int, dict[str, str]]]:
    lines = text.splitlines()
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, number, f"broken JSON: {e.msg}") from e
            if not isinstance(obj, dict):
                raise DataError(path, number, "each line must be a JSON object")
            rows.append((number, {k: v if isinstance(v, str) else json.dumps(v)
                                  for k, v in obj.items()}))
        return rows
    # TSV is read without quoting: SST-style text holds bare quote characters.
    reader = (csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv"
              else csv.reader(lines))
    try:
        parsed = list(reader)
    except csv.Error as e:
        raise DataError(path, reader.line_num, f"broken row: {e}") from e
    if not parsed:
        raise DataError(path, None, "the file is empty")
    header = parsed[0]
    rows = []
    for number, fields in enumerate(parsed[1:], 2):
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(path, number, f"broken row: {len(fields)} fields, the header has "
                                          f"{len(header)} ({', '.join(header)})")
        rows.append((number, dict(zip(header, fields, strict=True))))
    return rows


def read_examples(path: Path, text_column: str = "text", label_column: str | None = "label",
                  labels: list[str] | None = None) -> list[Example]:
    """Labelled examples from a .tsv, .csv or .jsonl file with named text and label columns.

    With `labels`, a label outside that set is an error naming the line. Without a label
    column the texts are read alone (labels ""); a .txt file then gives one text per line.
    """
    suffix = path.suffix.lower()
    fmt = {".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix)
    if fmt is None and suffix == ".txt" and label_column is None:
        return [Example(line.strip(), "", number)
                for number, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]
    if fmt is None:
        raise DataError(path, None, f"unknown format {suffix!r}; use .tsv, .csv or .jsonl")
    examples = []
    for number, row in _rows(path, _decode(path), fmt):
        for column in (text_column, label_column):
            if column is not None and column not in row:
                raise DataError(path, number, f"no column {column!r}; columns are "
                                              f"{', '.join(row)}")
        text = row[text_column].strip()
        label = row[label_column].strip() if label_column is not None else ""
        if not text:
            raise DataError(path, number, "empty text")
        if label_column is not None and not label:
            raise DataError(path, number, "empty label")
        if labels is not None and label not in labels:
            raise DataError(path, number, f"label {label!r} is not in the label set "
                                          f"{{{', '.join(labels)}}}")
        examples.append(Example(text, label, number))
    if not examples:
        raise DataError(path, None, "no examples")
    return examples


def bucket_batches(lengths: list[int], batch_size: int, rng: random.Random,
                   pool: int = 50) -> list[list[int]]:
    """Shuffled batches of indices whose lengths are close, so little padding is run.

    Indices are shuffled, cut into pools of `pool` batches, sorted by length inside each pool,
    cut into batches, and the batches shuffled again.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def split_examples(examples: list[Example], fraction: float, seed: int
                   ) -> tuple[list[Example], list[Example]]:
    """(train, held out): `fraction` of each label's examples held out (at least one of a
    label that has two or more), drawn with `seed`; both keep the file's order."""
    by_label: dict[str, list[int]] = {}
    for index, ex in enumerate(examples):
        by_label.setdefault(ex.label, []).append(index)
    rng = random.Random(seed)
    held: set[int] = set()
    for label in sorted(by_label):
        rows = by_label[label]
        if len(rows) < 2:
            continue
        count = min(len(rows) - 1, max(1, round(len(rows) * fraction)))
        held.update(rng.sample(rows, count))
    return ([ex for i, ex in enumerate(examples) if i not in held],
            [ex for i, ex in enumerate(examples) if i in held])
