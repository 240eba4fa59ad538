"""Tokenise documents and pack them into fixed-length contexts that start with BOS.

Packing: the token stream is doc_0 SEP doc_1 SEP ... (SEP = EOS, or BOS if the tokenizer has no
EOS); each context is [BOS] + the next context_size - 1 stream tokens, so documents may span
contexts. A StreamPosition (epoch, document, token offset) says where the next context starts;
a stream built with start=position continues exactly there, which makes resuming cheap
(documents before it are skipped without tokenising). Documents longer than 50,000 characters
are tokenised in pieces cut after newlines, so memory does not grow with document length (the
tokens at a cut may differ from tokenising the whole document at once). With document_tokens
set, each document contributes one window of at most that many tokens, at an offset drawn from
(seed, epoch, document), so a small budget spans many documents instead of a few long ones;
remainder=True gives each document's tokens outside that window (a second pass over the rest).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from saelab.data.corpora import Corpus

_GROUP_DOCS = 32  # documents per batched tokenizer call, or fewer: at most _GROUP_CHARS
_GROUP_CHARS = 50_000  # characters per call (bounds tokenizer memory; longer docs go in pieces)


def special_token_ids(tokenizer: object) -> list[int]:
    """Ids of the BOS, EOS and pad tokens (the positions excluded from SAE data by default)."""
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in ids if i is not None)


def begin_token_id(tokenizer: object) -> int:
    """Token that starts every context: BOS, or EOS for tokenizers without one (e.g. Qwen)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError(
            f"Tokenizer {type(tokenizer).__name__} has neither a BOS nor an EOS token."
        )
    return token


def separator_token_id(tokenizer: object) -> int:
    """Token placed between packed documents: EOS, or BOS for tokenizers without one."""
    token = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    if token is None:
        raise ValueError(
            f"Tokenizer {type(tokenizer).__name__} has neither an EOS nor a BOS token."
        )
    return token


def sae_token_mask(input_ids: torch.Tensor, excluded_ids: list[int]) -> torch.Tensor:
    """Boolean mask of the positions whose activations are SAE data (not an excluded token)."""
    if not excluded_ids:
        return torch.ones_like(input_ids, dtype=torch.bool)
    excluded = torch.tensor(excluded_ids, device=input_ids.device, dtype=input_ids.dtype)
    return ~torch.isin(input_ids, excluded)


@dataclass(frozen=True)
class StreamPosition:
    """Where the next context starts: epoch, document index within the split, token offset."""

    epoch: int = 0
    document: int = 0
    token: int = 0

    def to_dict(self) -> dict[str, int]:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> StreamPosition:
        """Inverse of to_dict."""
        return cls(int(data["epoch"]), int(data["document"]), int(data["token"]))


class ContextStream:
    """Iterator of packed contexts (LongTensor (context_size,)) from a corpus and tokenizer."""

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: object,
        context_size: int,
        *,
        seed: int = 0,
        split: str = "train",
        epochs: int | None = None,
        start: StreamPosition | None = None,
        document_tokens: int | None = None,
        remainder: bool = False,
    ) -> None:
        if context_size < 2:
            raise ValueError(f"context_size must be >= 2 (BOS + text), got {context_size}.")
        if document_tokens is not None and document_tokens < 1:
            raise ValueError(f"document_tokens must be >= 1 or None, got {document_tokens}.")
        self.corpus = corpus
        self.tokenizer = tokenizer
        self.context_size = context_size
        self.seed = seed
        self.split = split
        self.epochs = epochs
        self.document_tokens = document_tokens
        self.remainder = remainder
        self.bos_id = begin_token_id(tokenizer)
        self.separator_id = separator_token_id(tokenizer)
        start = start or StreamPosition()
        self._docs = self._tokenized_documents(start)
        self._doc = np.zeros(0, dtype=np.int64)
        self._doc_index = (start.epoch, start.document)
        self._offset = start.token
        self._started = False

    @property
    def position(self) -> StreamPosition:
        """Position of the next context (pass as start= to continue from here)."""
        return StreamPosition(self._doc_index[0], self._doc_index[1], self._offset)

    def _tokenized_documents(self, start: StreamPosition) -> Iterator[tuple[int, int, np.ndarray]]:
        """(epoch, document index, tokens + separator) from `start` on, epoch after epoch."""
        epoch, first = start.epoch, start.document
        while self.epochs is None or epoch < self.epochs:
            index = first
            texts = self.corpus.documents(
                seed=self.seed, epoch=epoch, split=self.split, start=first
            )
            for group in _groups(texts, _GROUP_DOCS, _GROUP_CHARS):
                for tokens in self._encode_group(group):
                    yield epoch, index, self._window(epoch, index, tokens)
                    index += 1
            if index == 0:
                raise ValueError(
                    f"Corpus {self.corpus.spec!r} has no non-empty documents in split {self.split!r}."
                )
            epoch, first = epoch + 1, 0

    def _window(self, epoch: int, index: int, tokens: np.ndarray) -> np.ndarray:
        """At most document_tokens of a document at a seeded offset, or (remainder) the rest.

        Each piece ends with the separator; the remainder's two sides are separate pieces.
        """
        body = len(tokens) - 1
        if self.document_tokens is None or body <= self.document_tokens:
            return tokens[:0] if self.remainder else tokens
        rng = np.random.default_rng([self.seed, epoch, index])
        start = int(rng.integers(0, body - self.document_tokens + 1))
        end, separator = start + self.document_tokens, tokens[-1:]
        if not self.remainder:
            return np.concatenate([tokens[start:end], separator])
        before = [tokens[:start], separator] if start else []
        after = [tokens[end:-1], separator] if end < body else []
        return np.concatenate([*before, *after, tokens[:0]])

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text (no special tokens added)."""
        encoded = self.tokenizer(
            texts, add_special_tokens=False, verbose=False, return_attention_mask=False
        )
        return [np.asarray(ids, dtype=np.int64) for ids in encoded["input_ids"]]

    def _encode_group(self, group: list[str]) -> list[np.ndarray]:
        """Tokens + separator of each document; a long document is tokenised piece by piece."""
        separator = np.array([self.separator_id], dtype=np.int64)
        if len(group) == 1 and len(group[0]) > _GROUP_CHARS:
            pieces = [self._encode([piece])[0] for piece in _split_lines(group[0], _GROUP_CHARS)]
            return [np.concatenate([*pieces, separator])]
        return [np.concatenate([ids, separator]) for ids in self._encode(group)]

    def _next_document(self) -> None:
        """Move to the next document (StopIteration when the last epoch is done)."""
        epoch, index, tokens = next(self._docs)
        if self._started or (epoch, index) != self._doc_index:
            self._offset = 0
        self._doc_index, self._doc, self._started = (epoch, index), tokens, True

    def __iter__(self) -> ContextStream:
        return self

    def __next__(self) -> torch.Tensor:
        if not self._started:
            self._next_document()
        pieces = [np.array([self.bos_id], dtype=np.int64)]
        needed = self.context_size - 1
        while needed:
            if self._offset >= len(self._doc):
                self._next_document()
                continue
            piece = self._doc[self._offset : self._offset + needed]
            pieces.append(piece)
            self._offset += len(piece)
            needed -= len(piece)
        return torch.from_numpy(np.concatenate(pieces))

    def next_batch(self, n: int) -> torch.Tensor:
        """Up to n contexts as a (k, context_size) tensor; StopIteration when none are left."""
        contexts = []
        for _ in range(n):
            try:
                contexts.append(next(self))
            except StopIteration:
                break
        if not contexts:
            raise StopIteration
        return torch.stack(contexts)


def _groups(texts: Iterator[str], max_docs: int, max_chars: int) -> Iterator[list[str]]:
    """Consecutive lists of up to max_docs texts and max_chars chars; longer texts go alone."""
    group: list[str] = []
    chars = 0
    for text in texts:
        if len(text) > max_chars:
            if group:
                yield group
            yield [text]
            group, chars = [], 0
            continue
        group.append(text)
        chars += len(text)
        if len(group) == max_docs or chars >= max_chars:
            yield group
            group, chars = [], 0
    if group:
        yield group


def _split_lines(text: str, max_chars: int) -> Iterator[str]:
    """Pieces of at most max_chars characters, cut after a newline where possible."""
    start = 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            newline = text.rfind("\n", start, end)
            end = newline + 1 if newline > start else end
        yield text[start:end]
        start = end
