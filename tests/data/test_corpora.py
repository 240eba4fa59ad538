"""Corpora: python-stdlib order and content, local files, datasets, held-out split, errors."""

from __future__ import annotations

import itertools
import json

import pytest

from saelab.data import CorpusNotFoundError, corpora, is_heldout, load_corpus
from saelab.data.corpora import stdlib_files
from saelab.data.readers import CorpusFormatError


def _first(corpus, n, **kwargs):
    return list(itertools.islice(corpus.documents(**kwargs), n))


def test_python_stdlib_is_the_running_pythons_source_files():
    files = stdlib_files()
    assert len(files) > 500 and files == sorted(files)
    assert {"os.py", "textwrap.py"} <= {path.name for path in files}
    assert not any("site-packages" in path.parts for path in files)
    contents = [path.read_text(encoding="utf-8", errors="replace") for path in files]
    docs = list(load_corpus("python-stdlib").documents(split="all"))
    assert sorted(docs) == sorted(text for text in contents if text.strip())


def test_document_order_is_deterministic_by_seed():
    corpus = load_corpus("python-stdlib")
    assert _first(corpus, 5, seed=0) == _first(corpus, 5, seed=0)
    assert _first(corpus, 5, seed=0) != _first(corpus, 5, seed=1)
    assert _first(corpus, 5, seed=0, epoch=0) != _first(corpus, 5, seed=0, epoch=1)


def test_start_skips_documents():
    corpus = load_corpus("python-stdlib")
    assert _first(corpus, 3, start=2) == _first(corpus, 5)[2:]


def test_heldout_split_is_disjoint_deterministic_and_complete(text_corpus_dir):
    corpus = load_corpus(text_corpus_dir, heldout_fraction=0.25)
    train = list(corpus.documents(split="train"))
    heldout = list(corpus.documents(split="heldout"))
    everything = list(corpus.documents(split="all"))
    assert train and heldout
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(everything)
    assert all(is_heldout(doc, 0.25) for doc in heldout)
    assert set(heldout) == set(
        load_corpus(text_corpus_dir, heldout_fraction=0.25).documents(split="heldout", seed=7)
    )


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="heldout"):
        next(load_corpus("python-stdlib").documents(split="test"))


def test_local_txt_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "one.txt").write_text("first paragraph\nstill first\n\n\nsecond paragraph\n")
    (tmp_path / "two.jsonl").write_text(json.dumps({"body": "from jsonl"}) + "\n")
    pq.write_table(pa.table({"body": ["from parquet", None]}), tmp_path / "three.parquet")
    (tmp_path / "ignored.csv").write_text("a,b\n")
    txt = load_corpus(tmp_path / "one.txt")
    assert list(txt.documents(split="all")) == [
        "first paragraph\nstill first\n",
        "second paragraph\n",
    ]
    folder = load_corpus(tmp_path, text_field="body")
    assert sorted(folder.documents(split="all")) == sorted(
        ["first paragraph\nstill first\n", "second paragraph\n", "from jsonl", "from parquet"]
    )


def test_missing_text_field_names_the_file_and_line(tmp_path):
    (tmp_path / "data.jsonl").write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(CorpusFormatError, match=r"data\.jsonl:1: no field 'text'.*content"):
        list(load_corpus(tmp_path / "data.jsonl").documents(split="all"))


def test_unsupported_or_missing_local_inputs(tmp_path):
    (tmp_path / "data.csv").write_text("a\n")
    with pytest.raises(CorpusFormatError, match=r"data\.csv"):
        load_corpus(tmp_path / "data.csv")
    with pytest.raises(CorpusFormatError, match=r"\.csv"):
        load_corpus(tmp_path)
    with pytest.raises(CorpusNotFoundError, match=r"nothere\.txt.*python-stdlib"):
        load_corpus(tmp_path / "nothere.txt")


def test_saved_dataset_folder(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(20)]}).save_to_disk(
        tmp_path / "ds"
    )
    corpus = load_corpus(tmp_path / "ds")
    assert corpus.kind == "saved-dataset"
    docs = list(corpus.documents(split="all", seed=3))
    assert sorted(docs) == sorted(f"doc {i}" for i in range(20))
    assert docs == list(corpus.documents(split="all", seed=3))


def test_hub_dataset_is_streamed_and_shuffled_by_seed(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        rows = [{"text": f"row {i}"} for i in range(30)]
        return datasets.IterableDataset.from_generator(lambda: iter(rows))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(corpora, "check_hub_access", lambda repo_id, repo_type: True)
    corpus = load_corpus("someone/some-corpus:en")
    assert corpus.kind == "hub"
    docs = list(corpus.documents(split="all", seed=1))
    assert calls[0] == ("someone/some-corpus", "en", "train", True)
    assert sorted(docs) == sorted(f"row {i}" for i in range(30))
    assert docs == list(corpus.documents(split="all", seed=1))


def test_unreachable_hub_dataset_error_names_it():
    with pytest.raises(CorpusNotFoundError, match="nobody/no-such-dataset-xyz"):
        next(load_corpus("nobody/no-such-dataset-xyz").documents())
