"""Latent selections for `saelab explain --latents`: "0-99", "3,7,12", "top:50", "all"."""

from __future__ import annotations

from saelab.analysis.database import FeatureDB

SPEC_HELP = (
    'Latents: ranges and lists ("0-99", "3,7,12", "0-9,42"), "top:N" (the N most frequent) '
    'or "all".'
)


def parse_latents(spec: str, db: FeatureDB) -> list[int]:
    """Latent indices named by `spec`, in order, without duplicates; ValueError naming the bad part."""
    count = db.count()
    spec = spec.strip()
    if spec == "all":
        return list(range(count))
    if spec.startswith("top:"):
        n = spec[4:]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--latents {spec!r}: top:N needs a positive integer N. {SPEC_HELP}")
        return [row["latent"] for row in db.latents(order_by="frequency", limit=int(n))]
    chosen: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"--latents {spec!r}: cannot read {part!r}. {SPEC_HELP}")
        first, last = int(low), int(high) if dash else int(low)
        if first > last or last >= count:
            raise ValueError(
                f"--latents {spec!r}: {part!r} is outside 0-{count - 1} (the database has "
                f"{count} latents) or reversed."
            )
        chosen += range(first, last + 1)
    if not chosen:
        raise ValueError(f"--latents {spec!r} names no latents. {SPEC_HELP}")
    return list(dict.fromkeys(chosen))
