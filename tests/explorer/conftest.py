"""An analysed tiny run (features.sqlite + plots) shared by the explorer tests, and a synthetic
feature database with more latents than one index page shows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import saelab
from saelab.analysis import FeatureDB
from saelab.analysis.command import run_analyze_command

HOOK = "blocks.1.hook_resid_post"
D_SAE = 128
EXPLAINED = 7  # latent given a searchable explanation
EXPLANATION = "zebra crossings <b>not bold</b>"
ALWAYS_ON = 11  # b_enc large: fires on every token (dense)
DEAD = 12  # threshold out of reach: never fires

BIG_LATENTS = 2_600
BIG_DENSE = {0: 0.9, 1: 0.8, 2: 0.6}  # firing frequency > 0.5
BIG_HALF = 3  # fires on exactly half the tokens: not dense (dense is > threshold)
BIG_DEAD = (2_550, 2_599)
BIG_TOKENS = 10_000


@pytest.fixture(scope="session")
def explorer(tiny_model, tmp_path_factory) -> SimpleNamespace:
    """run: a run dir with sae/, features.sqlite and plots/ (jumprelu SAE on the tiny llama);
    d_sae, explained (a latent with an explanation), explanation, always_on and dead latents."""
    sae = saelab.create_sae(
        "jumprelu", 64, D_SAE, seed=0, model_name=str(tiny_model("llama")), hook_name=HOOK
    )
    with torch.no_grad():
        sae.threshold.fill_(0.05)
        sae.b_enc[ALWAYS_ON] = 50.0
        sae.threshold[DEAD] = 1e6
    run = tmp_path_factory.mktemp("explorer-run")
    sae.save(run / "sae")
    summary = run_analyze_command(path=run, tokens=600, context_size=32, batch_size=4, device="cpu")
    with FeatureDB(summary["database"]) as db:
        db.set_explanation(EXPLAINED, EXPLANATION)
    return SimpleNamespace(
        run=run, d_sae=D_SAE, explained=EXPLAINED, explanation=EXPLANATION,
        always_on=ALWAYS_ON, dead=DEAD,
    )  # fmt: skip


def _big_row(latent: int) -> dict:
    """Synthetic statistics: frequency falls with the latent index (so sorting by frequency
    keeps index order), except the planted dense, half and dead latents."""
    frequency = 0.4 * (BIG_LATENTS - latent) / BIG_LATENTS
    frequency = BIG_DENSE.get(latent, 0.5 if latent == BIG_HALF else frequency)
    if latent in BIG_DEAD:
        frequency = 0.0
    return {
        "latent": latent, "frequency": frequency, "n_fired": round(frequency * BIG_TOKENS),
        "mean_activation": 1.0 if frequency else 0.0, "max_activation": 2.0 if frequency else 0.0,
        "histogram": {"edges": [0.0, 2.0], "counts": [round(frequency * BIG_TOKENS)]},
        "logit_pos": [], "logit_neg": [], "neighbours": [], "top_tokens": f"tok{latent}",
    }  # fmt: skip


@pytest.fixture(scope="session")
def big_db(tmp_path_factory) -> SimpleNamespace:
    """path: a features.sqlite of BIG_LATENTS synthetic latents (no examples); dense, half and
    dead: the planted latents."""
    path = tmp_path_factory.mktemp("big-run") / "features.sqlite"
    with FeatureDB.create(path) as db:
        db.write_meta(
            {"model": "synthetic", "hook": HOOK, "architecture": "jumprelu", "d_in": 64,
             "d_sae": BIG_LATENTS, "tokens": BIG_TOKENS, "corpus": "synthetic"}
        )  # fmt: skip
        db.write_latents(_big_row(i) for i in range(BIG_LATENTS))
    return SimpleNamespace(
        path=path, n=BIG_LATENTS, dense=sorted(BIG_DENSE), half=BIG_HALF, dead=list(BIG_DEAD)
    )
