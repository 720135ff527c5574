"""Row files for batch prediction: CSV, TSV and JSON Lines read one row at a time and written
back with the prediction's columns added, and the check that lets a run continue an output
file it wrote before."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["FORMATS", "Row", "TableError", "TableWriter", "columns_of", "count_rows", "read_rows",
           "rows_done", "table_format"]

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}


class TableError(Exception):
    """A file that cannot be read or continued; the message names the file, the line and,
    where one helps, the flag that is the way out."""


@dataclass(frozen=True)
class Row:
    """One row of a file: its values by column (JSON Lines keep their types) and the line
    it starts on."""

    line: int
    values: dict[str, Any]


def table_format(path: Path, flag: str) -> str:
    """csv, tsv or jsonl, from the file's suffix; `flag` is named when it is none of them."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TableError(f"{flag} {path}: unknown file type {path.suffix or '(no suffix)'!r}; "
                         "use a .csv, .tsv or .jsonl file")
    return fmt


def _open(path: Path) -> IO[str]:
    try:
        return path.open(encoding="utf-8", newline="")
    except OSError as e:
        raise TableError(f"{path}: cannot read it ({e.strerror or e})") from e


def _reader(f: IO[str], fmt: str) -> Any:
    # TSV is read without quoting, as the training data reader does: SST-style text holds
    # bare quote characters.
    if fmt == "tsv":
        return csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    return csv.reader(f)


def read_rows(path: Path, fmt: str) -> Iterator[Row]:
    """The rows of a file in order (blank lines skipped); a broken row is a `TableError`
    naming its line."""
    with _open(path) as f:
        try:
            if fmt == "jsonl":
                yield from _json_rows(path, f)
                return
            reader = _reader(f, fmt)
            header: list[str] | None = None
            for fields in reader:
                if not fields:
                    continue
                if header is None:
                    header = fields
                    continue
                if len(fields) != len(header):
                    raise TableError(f"{path}, line {reader.line_num}: {len(fields)} fields, the "
                                     f"header has {len(header)} ({', '.join(header)})")
                yield Row(reader.line_num, dict(zip(header, fields, strict=True)))
        except csv.Error as e:
            raise TableError(f"{path}: broken row: {e}") from e
        except UnicodeDecodeError as e:
            raise TableError(f"{path}: not valid UTF-8 (byte 0x{e.object[e.start]:02x}); "
                             "convert the file to UTF-8") from e


def _json_rows(path: Path, f: IO[str]) -> Iterator[Row]:
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TableError(f"{path}, line {number}: broken JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise TableError(f"{path}, line {number}: each line must be a JSON object")
        yield Row(number, obj)


def columns_of(path: Path, fmt: str) -> list[str]:
    """The header of a CSV or TSV file, or the keys of a JSON Lines file's first row."""
    for row in read_rows(path, fmt):
        return list(row.values)
    if fmt != "jsonl":
        with _open(path) as f:
            for fields in _reader(f, fmt):
                if fields:
                    return list(fields)
    return []


def count_rows(path: Path, fmt: str) -> int:
    """How many rows `read_rows` gives."""
    return sum(1 for _ in read_rows(path, fmt))


class TableWriter:
    """Writes rows in the input's format; each `write` ends flushed to the disk, so that an
    interrupted run leaves whole rows (and at most one partial row, dropped on resume)."""

    def __init__(self, path: Path, fmt: str, columns: list[str], append: bool) -> None:
        self.fmt, self.columns = fmt, columns
        self.file = path.open("a" if append else "w", encoding="utf-8", newline="")
        self.writer: Any = None
        if fmt == "csv":
            self.writer = csv.writer(self.file, lineterminator="\n")
        elif fmt == "tsv":
            self.writer = csv.writer(self.file, delimiter="\t", quoting=csv.QUOTE_NONE,
                                     lineterminator="\n", escapechar=None)
        if not append and self.writer is not None:
            self.writer.writerow(columns)
            self._sync()

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append rows (values by column name) and flush them to the disk."""
        for row in rows:
            if self.writer is None:
                self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                self.writer.writerow(["" if row.get(c) is None else row[c] for c in self.columns])
        self._sync()

    def _sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        """Close the file."""
        self.file.close()


def _same(written: Any, value: Any, fmt: str) -> bool:
    """Whether a value read back from the output is the input's (CSV and TSV read strings)."""
    same: bool = written == (value if fmt == "jsonl" else "" if value is None else str(value))
    return same


def rows_done(output: Path, fmt: str, inputs: Iterator[Row], columns: list[str] | None,
              stamp: tuple[str, str]) -> int:
    """How many rows of `output` a run may keep: each must carry the next input row's values
    and `stamp` (column, value: the model that wrote it). A partial last row (an
    interrupted write) is cut off; any other difference is a `TableError` naming
    --overwrite. For CSV and TSV, `columns` is the header the output must have."""
    kept: list[Row] = []
    try:
        written = list(read_rows(output, fmt))
        broken = None
    except TableError as e:  # a cut-off row reads as broken: only the last one may be
        written, broken = list(_prefix(output, fmt)), e
    ends_whole = output.read_bytes().endswith(b"\n") if output.stat().st_size else True
    if fmt != "jsonl" and columns is not None:
        header = columns_of(output, fmt)
        if header and header != columns:
            raise TableError(f"{output} has the columns {', '.join(header)}, not this run's "
                             f"{', '.join(columns)}; --overwrite starts it over, or --output "
                             "names another file")
    column, value = stamp
    for index, row in enumerate(written):
        source = next(inputs, None)
        last = index == len(written) - 1 and broken is None
        why = _difference(row, source, column, value, fmt)
        if why is None:
            kept.append(row)
            continue
        if last and not ends_whole:
            break  # the row an interrupted write cut short
        raise TableError(f"{output}, line {row.line}: {why}; it does not continue this run. "
                         "--overwrite starts it over, or --output names another file")
    if broken is not None and ends_whole:
        raise TableError(f"{broken}; --overwrite starts it over")
    if len(kept) != len(written) or broken is not None:
        _rewrite(output, fmt, columns, kept)
    return len(kept)


def _difference(row: Row, source: Row | None, column: str, value: str, fmt: str) -> str | None:
    if source is None:
        return "it has more rows than the input"
    if not _same(row.values.get(column), value, fmt):
        return (f"it was written by {column} {row.values.get(column)!r}, and this run "
                f"uses {value!r}")
    for key, item in source.values.items():
        if key not in row.values or not _same(row.values[key], item, fmt):
            return f"its {key!r} differs from the input's line {source.line}"
    return None


def _prefix(path: Path, fmt: str) -> Iterator[Row]:
    """The rows before the first broken one."""
    rows = read_rows(path, fmt)
    while True:
        try:
            yield next(rows)
        except (StopIteration, TableError):
            return


def _rewrite(path: Path, fmt: str, columns: list[str] | None, rows: list[Row]) -> None:
    """Replace `path` by its kept rows (atomically: a kill meanwhile leaves the old file)."""
    part = path.with_name(path.name + ".part")
    writer = TableWriter(part, fmt, columns or [], append=False)
    writer.write([r.values for r in rows])
    writer.close()
    part.replace(path)
