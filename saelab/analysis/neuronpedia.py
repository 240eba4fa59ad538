"""features.sqlite as a Neuronpedia export (docs/explorer.md, "Neuronpedia export").

The layout and every field follow Neuronpedia's own exporter (neuronpedia-utils:
convert-saedashboard-to-neuronpedia-export.py and its db_models), which Neuronpedia imports:

    OUT/MODEL_ID/SOURCE_ID/release.jsonl, model.jsonl, sourceset.jsonl, source.jsonl
    OUT/MODEL_ID/SOURCE_ID/features/batch-0.jsonl.gz      one Feature per latent
    OUT/MODEL_ID/SOURCE_ID/activations/batch-0.jsonl.gz   one Activation per example
    OUT/MODEL_ID/SOURCE_ID/explanations/batch-0.jsonl.gz  one Explanation per explained latent

SOURCE_ID is LAYER-SOURCE_SET (e.g. 6-saelab-res), the id Neuronpedia pages live under. Records
carry exactly the fields of Neuronpedia's models (NEURONPEDIA_FIELDS), with the ones saelab has:
logit lens, activation histogram, decoder neighbours, top and quantile examples, explanations.
"""

from __future__ import annotations

import gzip
import json
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from saelab.analysis.database import FeatureDB

# The creator id Neuronpedia's exporter uses when none is configured; the importer assigns its
# own account to the records.
DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"
# Fields of Neuronpedia's export records (neuronpedia-utils db_models), required ones first.
NEURONPEDIA_FIELDS = {
    "feature": (
        ("modelId", "layer", "index"),
        ("creatorId", "createdAt", "maxActApprox", "hasVector", "vector", "vectorLabel",
         "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices", "topkCosSimValues",
         "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
         "correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1",
         "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
         "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
         "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
         "logits_hist_data_bar_values", "decoder_weights_dist"),
    ),
    "activation": (
        ("id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue",
         "values", "creatorId"),
        ("dataSource", "dataIndex", "dfaValues", "dfaTargetIndex", "dfaMaxValue", "createdAt",
         "lossValues", "logitContributions", "binMin", "binMax", "binContains",
         "qualifyingTokenIndex"),
    ),
    "explanation": (
        ("id", "modelId", "layer", "index", "description", "authorId"),
        ("embedding", "triggeredById", "typeName", "explanationModelName", "notes", "createdAt"),
    ),
    "source": (
        ("id", "modelId", "setName", "creatorId"),
        ("hasDashboards", "inferenceEnabled", "inferenceHosts", "saelensConfig", "saelensRelease",
         "saelensSaeId", "hfRepoId", "hfFolderId", "visibility", "defaultOfModelId", "hasUmap",
         "hasUmapLogSparsity", "hasUmapClusters", "num_prompts", "num_tokens_in_prompt",
         "dataset", "notes", "createdAt"),
    ),
    "sourceset": (
        ("modelId", "name", "creatorId"),
        ("hasDashboards", "visibility", "description", "type", "creatorName", "urls",
         "creatorEmail", "releaseName", "defaultOfModelId", "defaultRange", "defaultShowBreaks",
         "showDfa", "showCorrelated", "showHeadAttribution", "showUmap", "createdAt"),
    ),
    "release": (
        ("name", "description", "creatorName", "creatorId"),
        ("visibility", "isNewUi", "featured", "descriptionShort", "urls", "creatorEmail",
         "creatorNameShort", "defaultSourceSetName", "defaultSourceId", "defaultUmapSourceIds",
         "createdAt"),
    ),
    "model": (
        ("id", "instruct", "creatorId"),
        ("displayNameShort", "displayName", "tlensId", "dimension", "visibility",
         "defaultSourceSetName", "defaultSourceId", "inferenceEnabled", "layers",
         "neuronsPerLayer", "createdAt", "owner", "updatedAt", "website"),
    ),
}  # fmt: skip
HOOK_SETS = {
    "resid_pre": "res", "resid_mid": "resmid", "resid_post": "res", "mlp_out": "mlp",
    "attn_out": "att", "mlp_in": "tc",
}  # fmt: skip


def default_source_id(hook: str) -> str:
    """Neuronpedia-style source id from a hook name: blocks.6.hook_resid_post → 6-saelab-res."""
    match = re.match(r"blocks\.(\d+)\.hook_(\w+)", hook)
    if match is None:
        return f"0-saelab-{re.sub(r'[^A-Za-z0-9-]', '-', hook)}"
    return f"{match.group(1)}-saelab-{HOOK_SETS.get(match.group(2), match.group(2))}"


def _write_gz(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Gzipped JSON lines; returns the number of records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with gzip.open(path, "wt", compresslevel=5) as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
            n += 1
    return n


def _write_line(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record) + "\n")


def export_neuronpedia(
    db: FeatureDB,
    out: Path,
    model_id: str | None = None,
    source_id: str | None = None,
    hf_repo: str | None = None,
    hf_folder: str | None = None,
) -> dict[str, Any]:
    """Write the export (module docstring) under OUT/MODEL_ID/SOURCE_ID; returns its folder and
    counts. hf_repo/hf_folder: where the weights are on the Hub (`saelab push`), if known."""
    meta = db.meta()
    model_id = model_id or Path(str(meta["model"])).name
    source_id = source_id or default_source_id(meta["hook"])
    set_name = source_id.split("-", 1)[1] if "-" in source_id else source_id
    now = datetime.now(UTC).isoformat()
    creator = {"creatorId": DEFAULT_CREATOR_ID, "createdAt": now}
    ids = {"modelId": model_id, "layer": source_id}
    folder = out / model_id / source_id
    folder.mkdir(parents=True, exist_ok=True)
    _write_line(folder / "release.jsonl", {
        "name": "saelab", "description": f"SAEs trained with saelab on {model_id}",
        "creatorName": "saelab", **creator,
    })  # fmt: skip
    _write_line(folder / "model.jsonl", {
        "id": model_id, "instruct": model_id.endswith("-it"), "displayName": model_id,
        "displayNameShort": model_id, "dimension": meta.get("d_in"), **creator, "updatedAt": now,
    })  # fmt: skip
    _write_line(folder / "sourceset.jsonl", {
        "modelId": model_id, "name": set_name, "releaseName": "saelab", "visibility": "PUBLIC",
        "description": f"{meta.get('architecture', 'SAE')} · {meta['hook']} · {meta.get('d_sae')} latents",
        "creatorName": "saelab", **creator,
    })  # fmt: skip
    _write_line(folder / "source.jsonl", {
        "id": source_id, "modelId": model_id, "setName": set_name, "visibility": "PUBLIC",
        "hfRepoId": hf_repo, "hfFolderId": hf_folder, "dataset": meta.get("corpus"),
        "num_tokens_in_prompt": meta.get("context_size"), **creator,
    })  # fmt: skip
    rows = [db.latent(summary["latent"]) for summary in db.latents()]
    n_features = _write_gz(folder / "features" / "batch-0.jsonl.gz", (
        {
            **ids, **creator, "index": str(row["latent"]), "maxActApprox": row["max_activation"],
            "frac_nonzero": row["frequency"],
            "pos_str": [t for t, _ in row["logit_pos"]], "pos_values": [v for _, v in row["logit_pos"]],
            "neg_str": [t for t, _ in row["logit_neg"]], "neg_values": [v for _, v in row["logit_neg"]],
            "freq_hist_data_bar_values": [(a + b) / 2 for a, b in pairwise(row["histogram"]["edges"])],
            "freq_hist_data_bar_heights": row["histogram"]["counts"],
            "topkCosSimIndices": [j for j, _ in row["neighbours"]],
            "topkCosSimValues": [c for _, c in row["neighbours"]],
            "hookName": meta["hook"],
        }
        for row in rows
    ))  # fmt: skip
    n_examples = _write_gz(folder / "activations" / "batch-0.jsonl.gz", (
        {
            "id": uuid.uuid4().hex[:25], **ids, **creator, "index": str(row["latent"]),
            "tokens": example["tokens"], "values": example["activations"],
            "maxValue": max(example["activations"]), "minValue": min(example["activations"]),
            "maxValueTokenIndex": example["max_index"],
        }
        for row in rows
        for example in row["examples"]
    ))  # fmt: skip
    n_explanations = _write_gz(folder / "explanations" / "batch-0.jsonl.gz", (
        {
            "id": uuid.uuid4().hex[:25], **ids, "index": str(row["latent"]),
            "description": row["explanation"], "authorId": DEFAULT_CREATOR_ID,
            "typeName": "saelab", "createdAt": now,
        }
        for row in rows
        if row["explanation"]
    ))  # fmt: skip
    return {
        "folder": folder,
        "latents": n_features,
        "examples": n_examples,
        "explanations": n_explanations,
    }
