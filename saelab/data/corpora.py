"""Text corpora: built-in python-stdlib, local files/folders, saved or hub `datasets` datasets.

A Corpus yields documents (strings) in a deterministic order for a (seed, epoch), restricted to
a split ('train', 'heldout' or 'all'; the held-out documents are chosen by content hash, see
saelab.data.split), skipping empty documents.
"""

from __future__ import annotations

import functools
import itertools
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from saelab.data.readers import corpus_files, read_file
from saelab.data.seeding import derive_seed
from saelab.data.split import DEFAULT_HELDOUT_FRACTION, check_split, in_split
from saelab.lm.hub import HubLookupError, check_hub_access

PYTHON_STDLIB = "python-stdlib"
BUILTIN_CORPORA = (PYTHON_STDLIB,)
_SHUFFLE_BUFFER = 10_000


class CorpusNotFoundError(LookupError):
    """A corpus name that is neither built in, a local path, nor a loadable `datasets` dataset."""


def _not_found(spec: str, reason: str) -> CorpusNotFoundError:
    """An error naming the corpus and listing the accepted forms."""
    return CorpusNotFoundError(
        f"Cannot load corpus {spec!r}: {reason}. Valid: a built-in corpus "
        f"({', '.join(BUILTIN_CORPORA)}), a local .txt/.jsonl/.parquet file or folder, a folder "
        "written by datasets' save_to_disk, or a Hugging Face `datasets` name (NAME or NAME:CONFIG)."
    )


@functools.cache
def _stdlib_files() -> tuple[Path, ...]:
    """The stdlib file list, scanned once per process."""
    root = Path(sysconfig.get_paths()["stdlib"])
    excluded = {"site-packages", "dist-packages", "__pycache__"}
    return tuple(
        sorted(
            path for path in root.rglob("*.py") if excluded.isdisjoint(path.relative_to(root).parts)
        )
    )


def stdlib_files() -> list[Path]:
    """Sorted .py source files of the running Python's standard library (no site-packages)."""
    return list(_stdlib_files())


def _is_saved_dataset(path: Path) -> bool:
    """Whether a folder was written by datasets' save_to_disk."""
    return any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json"))


@dataclass(frozen=True)
class Corpus:
    """A source of documents; build one with load_corpus()."""

    spec: str
    kind: str  # "python-stdlib", "files", "saved-dataset" or "hub"
    text_field: str = "text"
    dataset_split: str = "train"
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION

    def documents(
        self, *, seed: int = 0, epoch: int = 0, split: str = "train", start: int = 0
    ) -> Iterator[str]:
        """Non-empty documents of `split` in the (seed, epoch) order, skipping the first `start`."""
        check_split(split)
        shuffle_seed = derive_seed("corpus", seed, epoch)
        texts = (
            text
            for text in self._raw_documents(shuffle_seed)
            if text.strip() and in_split(text, split, self.heldout_fraction)
        )
        return itertools.islice(texts, start, None)

    def _raw_documents(self, shuffle_seed: int) -> Iterator[str]:
        """All documents in this seed's order, before filtering."""
        if self.kind == PYTHON_STDLIB:
            return self._files_documents(stdlib_files(), shuffle_seed, whole_files=True)
        if self.kind == "files":
            return self._files_documents(corpus_files(Path(self.spec)), shuffle_seed)
        if self.kind == "saved-dataset":
            return self._saved_documents(shuffle_seed)
        return self._hub_documents(shuffle_seed)

    def _files_documents(
        self, files: list[Path], shuffle_seed: int, whole_files: bool = False
    ) -> Iterator[str]:
        """Documents of files visited in a seeded shuffle of their sorted order."""
        order = list(files)
        random.Random(shuffle_seed).shuffle(order)
        for path in order:
            if whole_files:
                yield path.read_text(encoding="utf-8", errors="replace")
            else:
                yield from read_file(path, self.text_field)

    def _saved_documents(self, shuffle_seed: int) -> Iterator[str]:
        """Documents of a save_to_disk folder, shuffled by seed."""
        import datasets

        dataset = datasets.load_from_disk(self.spec)
        if isinstance(dataset, datasets.DatasetDict):
            if self.dataset_split not in dataset:
                raise _not_found(
                    self.spec, f"no split {self.dataset_split!r} (found {sorted(dataset)})"
                )
            dataset = dataset[self.dataset_split]
        self._check_columns(dataset.column_names)
        for row in dataset.shuffle(seed=shuffle_seed):
            yield str(row[self.text_field])

    def _hub_documents(self, shuffle_seed: int) -> Iterator[str]:
        """Documents of a hub dataset, streamed and shuffled through a seeded buffer."""
        import datasets

        name, _, config = self.spec.partition(":")
        try:
            dataset = datasets.load_dataset(
                name, config or None, split=self.dataset_split, streaming=True
            )
        except Exception as error:  # datasets raises many types for missing/unreachable data
            raise _not_found(self.spec, f"datasets could not load it ({error})") from error
        for index, row in enumerate(
            dataset.shuffle(seed=shuffle_seed, buffer_size=_SHUFFLE_BUFFER)
        ):
            if index == 0:
                self._check_columns(list(row))
            yield str(row[self.text_field])

    def _check_columns(self, columns: list[str]) -> None:
        """Raise if the text field is not among a dataset's columns."""
        if self.text_field not in columns:
            raise ValueError(
                f"Corpus {self.spec!r} has no column {self.text_field!r} (found {columns}); "
                "pick one with text_field / --text-field."
            )


def load_corpus(
    spec: str | Path,
    *,
    text_field: str = "text",
    dataset_split: str = "train",
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
) -> Corpus:
    """Resolve a corpus name or path. Local inputs are checked now; for a hub name, that the hub
    answers or the dataset is cached (else CorpusNotFoundError at once), the name when first read."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}.")
    text = str(spec)
    options = {
        "text_field": text_field,
        "dataset_split": dataset_split,
        "heldout_fraction": heldout_fraction,
    }
    if text in BUILTIN_CORPORA:
        return Corpus(text, PYTHON_STDLIB, **options)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() and _is_saved_dataset(path):
            return Corpus(str(path.resolve()), "saved-dataset", **options)
        corpus_files(path)
        return Corpus(str(path.resolve()), "files", **options)
    if text.startswith((".", "/", "~")) or path.suffix.lower() in (".txt", ".jsonl", ".parquet"):
        raise _not_found(text, f"no such file or folder {path}")
    try:
        check_hub_access(text.partition(":")[0], "dataset")
    except HubLookupError as error:
        raise _not_found(text, str(error)) from None
    return Corpus(text, "hub", **options)
