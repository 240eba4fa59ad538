"""Dense ("always-on") latents: the one firing-frequency threshold shared by the explorer's
"hide dense" filter and the interventions' `--exclude-dense`, and how a result lists them.

SPEC §3 counts latents firing on > 10% of tokens in the dense fraction, a health statistic of
the whole SAE. Leaving latents out of a ranking is a stronger act, so it uses a higher bar:
DENSE_THRESHOLD = 0.5, latents that fire on more than half of all tokens. Such a latent says
little about any one token (its absence is rarer than its presence) and, with its large
activations everywhere, fills every top-k list; frequent but meaningful latents of code
(indentation, identifiers, whitespace: 10–30% of tokens) stay visible. Pure Python: the
comparisons work on floats and on torch tensors alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

DENSE_THRESHOLD = 0.5
MIN_SAMPLE_TOKENS = 32  # fewest tokens a firing frequency is measured on before it is trusted
LINE_LATENTS = 10  # dense latents named in a table's line (JSON lists all)


def is_dense(frequency: Any, threshold: float = DENSE_THRESHOLD) -> Any:
    """Whether a latent fires on more than `threshold` of tokens (elementwise for tensors)."""
    return frequency > threshold


def check_threshold(threshold: float, name: str = "--dense-threshold") -> float:
    """threshold itself if it is a fraction of tokens in (0, 1]; else ValueError naming it."""
    if not (math.isfinite(threshold) and 0 < threshold <= 1):
        raise ValueError(
            f"{name} must be a fraction of tokens in (0, 1] (0.5 = more than half), "
            f"got {threshold:g}."
        )
    return threshold


def check_count(frequency: Sequence[float] | None, d_sae: int, source: str | None) -> None:
    """ValueError when firing frequencies (from source) do not cover exactly the SAE's latents."""
    if frequency is not None and len(frequency) != d_sae:
        raise ValueError(
            f"{source}: firing frequencies of {len(frequency)} latents, but the SAE has "
            f"{d_sae}; use the feature database of this SAE (--features)."
        )


@dataclass
class DenseLatents:
    """The dense latents of one result: threshold, whether they were left out of it, where the
    firing frequencies came from (None: not measured, nothing excluded) and the dense latents
    that fired there as [[latent, frequency], …], most frequent first."""

    threshold: float
    excluded: bool
    source: str | None
    latents: list[list[Any]] = field(default_factory=list)

    @classmethod
    def among(
        cls,
        frequency: Sequence[float] | None,
        candidates: Iterable[int],
        *,
        threshold: float,
        excluded: bool,
        source: str | None,
    ) -> DenseLatents:
        """The dense latents among candidates (those that fired in the result); frequency[i] is
        latent i's firing frequency, None when unknown (then nothing is dense)."""
        if frequency is None:
            return cls(threshold, excluded, None)
        found = [[i, float(frequency[i])] for i in candidates if is_dense(frequency[i], threshold)]
        return cls(threshold, excluded, source, sorted(found, key=lambda r: (-r[1], r[0])))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the `dense` key of `saelab prompt/contrast --json` and the API)."""
        return asdict(self)

    def line(self) -> str:
        """One line for a table caption: what was left out (or kept) and why."""
        bar = f"> {self.threshold * 100:g}% of tokens"
        if self.source is None:
            return (
                f"Dense filter ({bar}) off: no firing frequencies (no features.sqlite with a "
                f"frequency column, and fewer than {MIN_SAMPLE_TOKENS} tokens to measure them "
                "on); run `saelab analyze` on the run."
            )
        listed = ", ".join(f"{i} ({f:.1%})" for i, f in self.latents[:LINE_LATENTS])
        if len(self.latents) > LINE_LATENTS:
            listed += f", … {len(self.latents) - LINE_LATENTS} more (--json lists all)"
        verb = "left out (--include-dense shows them)" if self.excluded else "kept"
        return f"Dense latents ({bar}, frequency from {self.source}) {verb}: {listed or 'none fired here'}"
