"""An analysed tiny run (features.sqlite + plots) shared by the explorer tests."""

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


@pytest.fixture(scope="session")
def explorer(tiny_model, tmp_path_factory) -> SimpleNamespace:
    """run: a run dir with sae/, features.sqlite and plots/ (jumprelu SAE on the tiny llama);
    d_sae, explained (a latent with an explanation), explanation."""
    sae = saelab.create_sae(
        "jumprelu", 64, D_SAE, seed=0, model_name=str(tiny_model("llama")), hook_name=HOOK
    )
    with torch.no_grad():
        sae.threshold.fill_(0.05)
    run = tmp_path_factory.mktemp("explorer-run")
    sae.save(run / "sae")
    summary = run_analyze_command(path=run, tokens=600, context_size=32, batch_size=4, device="cpu")
    with FeatureDB(summary["database"]) as db:
        db.set_explanation(EXPLAINED, EXPLANATION)
    return SimpleNamespace(run=run, d_sae=D_SAE, explained=EXPLAINED, explanation=EXPLANATION)
