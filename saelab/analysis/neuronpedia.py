"""Neuronpedia-compatible export of features.sqlite as JSON lines (docs/explorer.md).

features.jsonl: one object per latent with Neuronpedia's feature ("Neuron") fields: modelId,
layer (the source id, e.g. "6-saelab-res"), index, maxActApprox, frac_nonzero, pos_str /
pos_values, neg_str / neg_values (logit lens), freq_hist_data_bar_values /
freq_hist_data_bar_heights (activation histogram: bin centres, counts), topkCosSimIndices /
topkCosSimValues (decoder neighbours), explanations.
activations.jsonl: one object per example with Neuronpedia's activation fields: modelId,
layer, index, tokens, values, maxValue, minValue, maxValueTokenIndex (+ saelab's kind/rank).
"""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

from saelab.analysis.database import FeatureDB


def default_source_id(hook: str) -> str:
    """Neuronpedia-style source id from a hook name: blocks.6.hook_resid_post → 6-saelab-res."""
    match = re.match(r"blocks\.(\d+)\.hook_(\w+)", hook)
    if match is None:
        return f"{hook}-saelab"
    kind = {
        "resid_pre": "res",
        "resid_mid": "resmid",
        "resid_post": "res",
        "mlp_out": "mlp",
        "attn_out": "att",
    }
    return f"{match.group(1)}-saelab-{kind.get(match.group(2), match.group(2))}"


def export_neuronpedia(
    db: FeatureDB, out: Path, model_id: str | None = None, source_id: str | None = None
) -> dict[str, Path | int]:
    """Write features.jsonl and activations.jsonl into folder out; returns paths and counts."""
    meta = db.meta()
    model_id = model_id or Path(str(meta["model"])).name
    source_id = source_id or default_source_id(meta["hook"])
    out.mkdir(parents=True, exist_ok=True)
    features, activations = out / "features.jsonl", out / "activations.jsonl"
    n_examples = 0
    ids = {"modelId": model_id, "layer": source_id}
    with features.open("w") as feature_file, activations.open("w") as activation_file:
        for summary in db.latents():
            row = db.latent(summary["latent"])
            edges, counts = row["histogram"]["edges"], row["histogram"]["counts"]
            feature = {
                **ids,
                "index": str(row["latent"]),
                "maxActApprox": row["max_activation"],
                "frac_nonzero": row["frequency"],
                "pos_str": [t for t, _ in row["logit_pos"]],
                "pos_values": [v for _, v in row["logit_pos"]],
                "neg_str": [t for t, _ in row["logit_neg"]],
                "neg_values": [v for _, v in row["logit_neg"]],
                "freq_hist_data_bar_values": [(a + b) / 2 for a, b in pairwise(edges)],
                "freq_hist_data_bar_heights": counts,
                "topkCosSimIndices": [j for j, _ in row["neighbours"]],
                "topkCosSimValues": [c for _, c in row["neighbours"]],
                "explanations": [{"description": row["explanation"]}] if row["explanation"] else [],
            }
            feature_file.write(json.dumps(feature) + "\n")
            for example in row["examples"]:
                activation_file.write(
                    json.dumps(
                        {
                            **ids,
                            "index": str(row["latent"]),
                            "tokens": example["tokens"],
                            "values": example["activations"],
                            "maxValue": max(example["activations"]),
                            "minValue": min(example["activations"]),
                            "maxValueTokenIndex": example["max_index"],
                            "kind": example["kind"],
                            "rank": example["rank"],
                            "quantile": example["quantile"],
                        }
                    )
                    + "\n"
                )
                n_examples += 1
    return {
        "features": features,
        "activations": activations,
        "latents": db.count(),
        "examples": n_examples,
    }
