"""Stream documents out of local .txt / .jsonl / .parquet files with bounded memory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".parquet")


class CorpusFormatError(ValueError):
    """A local corpus file that cannot be read as documents (names the file and what is wrong)."""


def read_txt(path: Path) -> Iterator[str]:
    """Documents of a .txt file: blocks separated by one or more blank lines (like datasets' paragraph mode)."""
    lines: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines)
                lines = []
    if lines:
        yield "".join(lines)


def read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    """The `text_field` string of each JSON line of a .jsonl file."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusFormatError(
                    f"{path}:{number}: not valid JSON ({error.msg})."
                ) from error
            if not isinstance(record, dict) or text_field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise CorpusFormatError(
                    f"{path}:{number}: no field {text_field!r} (found {keys}); pick one with text_field."
                )
            yield str(record[text_field])


def read_parquet(path: Path, text_field: str) -> Iterator[str]:
    """The `text_field` column of a .parquet file, read one record batch at a time."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise CorpusFormatError(
            f"{path}: no column {text_field!r} (found {columns}); pick one with text_field."
        )
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield str(text)


def read_file(path: Path, text_field: str = "text") -> Iterator[str]:
    """Documents of one local corpus file, dispatched on its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return read_txt(path)
    if suffix == ".jsonl":
        return read_jsonl(path, text_field)
    if suffix == ".parquet":
        return read_parquet(path, text_field)
    raise CorpusFormatError(
        f"{path}: unsupported file type {suffix!r}; valid: {SUPPORTED_SUFFIXES}."
    )


def corpus_files(path: Path) -> list[Path]:
    """Supported files under a file or folder (recursive), sorted for a stable order."""
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise CorpusFormatError(
                f"{path}: unsupported file type {path.suffix!r}; valid: {SUPPORTED_SUFFIXES}."
            )
        return [path]
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
    )
    if not files:
        found = sorted({p.suffix for p in path.rglob("*") if p.is_file()})
        raise CorpusFormatError(
            f"{path}: no {'/'.join(SUPPORTED_SUFFIXES)} files in this folder (found suffixes {found})."
        )
    return files
