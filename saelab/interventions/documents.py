"""Per-document maximum SAE activations over a set of texts (the input of contrast ranking)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saelab.data import sae_token_mask, special_token_ids
from saelab.data.packing import begin_token_id
from saelab.interventions.prompt import sae_codes
from saelab.lm.model import LanguageModel
from saelab.sae import SAE


@dataclass
class DocumentActivations:
    """For n documents: max activation of each latent (n, d_sae), the token index where it is
    reached (n, d_sae), each document's token ids (begin token first), and over all their
    scored tokens (BOS/EOS/pad excluded): how many there are and on how many each latent fires."""

    maxima: Tensor
    argmax: Tensor
    tokens: list[list[int]]
    n_scored: int
    fired: Tensor

    def frequency(self) -> Tensor:
        """(d_sae,) float64: fraction of the scored tokens on which each latent fires."""
        return self.fired.double() / max(self.n_scored, 1)


def tokenize_documents(
    lm: LanguageModel, texts: Sequence[str], context_size: int
) -> list[list[int]]:
    """Token ids of each text, begin token first, truncated to context_size tokens."""
    begin = begin_token_id(lm.tokenizer)
    encoded = lm.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[begin, *ids][:context_size] for ids in encoded]


def document_activations(
    lm: LanguageModel,
    sae: SAE,
    hook: str,
    tokens: list[list[int]],
    *,
    batch_size: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> DocumentActivations:
    """Run documents (right-padded batches) through lm and sae; keep each latent's maximum
    over the document's non-special tokens (0 when it never fires) and its firing count."""
    excluded = special_token_ids(lm.tokenizer)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else excluded[0]
    maxima, argmax = [], []
    n_scored, fired = 0, torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for row, doc in enumerate(chunk):
            ids[row, : len(doc)] = torch.tensor(doc)
            attention[row, : len(doc)] = 1
        codes = sae_codes(lm, sae, hook, ids, attention).float()
        keep = (attention.bool() & sae_token_mask(ids, excluded)).to(codes.device)
        codes = codes.masked_fill(~keep[..., None], 0.0)
        n_scored += int(keep.sum())
        fired += (codes > 0).sum(dim=(0, 1)).cpu()
        values, where = codes.max(dim=1)
        maxima.append(values.cpu())
        argmax.append(where.to(torch.int32).cpu())
        if on_progress is not None:
            on_progress(sum(len(doc) for doc in chunk))
    return DocumentActivations(torch.cat(maxima), torch.cat(argmax), tokens, n_scored, fired)


def snippet(tokenizer: object, ids: list[int], index: int, window: int = 8) -> str:
    """Text around token `index` of ids with that token marked «like this» (begin token dropped)."""
    left = tokenizer.decode(ids[max(1, index - window) : index])
    right = tokenizer.decode(ids[index + 1 : index + 1 + window])
    return f"{left}«{tokenizer.decode([ids[index]])}»{right}"


def top_examples(
    tokenizer: object, docs: DocumentActivations, latent: int, n: int, window: int = 8
) -> list[dict[str, object]]:
    """The n documents where `latent` peaks highest (only those where it fires), with snippets."""
    scores = docs.maxima[:, latent]
    order = scores.argsort(descending=True)[:n].tolist()
    return [
        {
            "document": doc,
            "activation": float(scores[doc]),
            "text": snippet(tokenizer, docs.tokens[doc], int(docs.argmax[doc, latent]), window),
        }
        for doc in order
        if scores[doc] > 0
    ]
