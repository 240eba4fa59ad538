"""SAEs on the Hub, against a stub of its HTTP API on 127.0.0.1 (tests/formats/conftest.py):
push and load back bit-identically, cache reuse offline, revisions, clear errors, an
interrupted upload, SAELens release ids, and the Gemma Scope / Gemma Scope 2 / Llama Scope
layouts."""

from __future__ import annotations

import io
import json
import math
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load, save
from typer.testing import CliRunner

import saelab
from saelab.cli import app
from saelab.evals.density import save_latent_stats
from saelab.formats import SAEFileError, save_gemma_scope
from saelab.formats.hub import parse_hub_ref, resolve_release
from saelab.formats.push import PushError, push

HOOK = "blocks.1.hook_resid_post"


def _x(d: int = 64) -> torch.Tensor:
    return torch.randn(32, d, generator=torch.Generator().manual_seed(0))


def _run(tmp_path, seed: int = 0):
    """A run directory: sae/ (TopK on the tiny llama's blocks.1), eval.json, latent stats."""
    sae = saelab.create_sae("topk", 64, 128, k=8, seed=seed, model_name="tiny", hook_name=HOOK)
    run = tmp_path / f"run{seed}"
    sae.save(run / "sae")
    frequency = torch.linspace(0, 0.5, 128, dtype=torch.float64)
    save_latent_stats(run / "latent_stats.safetensors", frequency, frequency.clone(), 1000)
    report = {"n_tokens": 1000, "metrics": {"reconstruction": {"fvu": 0.25, "cosine": None}}}
    (run / "eval.json").write_text(json.dumps(report))
    return run, sae


def test_a_pushed_run_loads_back_through_hf_to_identical_outputs(hub, tmp_path):
    run, sae = _run(tmp_path)
    result = push(run, "alice/saes", "l1", private=True)
    files = hub.files("alice/saes")
    assert sorted(files) == ["l1/README.md", "l1/cfg.json", "l1/eval.json",
                             "l1/sae_weights.safetensors", "l1/sparsity.safetensors"]  # fmt: skip
    assert result["commit"] == hub.repos["alice/saes"].refs["main"]
    assert hub.repos["alice/saes"].private
    sparsity = load(files["l1/sparsity.safetensors"])["sparsity"]
    expected = torch.log10(torch.linspace(0, 0.5, 128, dtype=torch.float64) + 1e-10).float()
    assert torch.equal(sparsity, expected)
    card = files["l1/README.md"].decode()
    for text in ('saelab.load_sae("hf://alice/saes/l1")', "SAE.load_from_disk", "| fvu | 0.25 |",
                 "| cosine | — |", "topk", HOOK, "d_sae 128"):  # fmt: skip
        assert text in card, text
    loaded = saelab.load_sae("hf://alice/saes/l1")
    x = _x()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded(x), sae(x))
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_a_cached_sae_loads_offline_without_asking_the_hub(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    run, sae = _run(tmp_path)
    push(run, "alice/saes", "l1")
    saelab.load_sae("hf://alice/saes/l1")
    asked = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    again = saelab.load_sae("hf://alice/saes/l1")
    assert len(hub.requests) == asked
    with torch.no_grad():
        assert torch.equal(again.encode(_x()), sae.encode(_x()))
    with pytest.raises(SAEFileError, match="not in the local Hugging Face cache"):
        saelab.load_sae("hf://alice/saes/other")


def test_a_revision_is_loaded_as_it_was(hub, tmp_path):
    first, old = _run(tmp_path, seed=0)
    push(first, "alice/saes")
    tag = hub.repos["alice/saes"].refs["main"]
    hub.repos["alice/saes"].refs["v1"] = tag
    second, new = _run(tmp_path, seed=1)
    push(second, "alice/saes")
    x = _x()
    with torch.no_grad():
        assert torch.equal(saelab.load_sae("hf://alice/saes@v1").encode(x), old.encode(x))
        assert torch.equal(saelab.load_sae(f"hf://alice/saes@{tag}").encode(x), old.encode(x))
        assert torch.equal(saelab.load_sae("hf://alice/saes").encode(x), new.encode(x))


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("hf://alice/saes/nothing", "no SAE in alice/saes/nothing at main: expected cfg.json"),
        ("hf://bob/none/l1", "no repository bob/none on the Hub"),
        ("hf://alice/saes/l1@v9", "no revision 'v9' in alice/saes"),
    ],
)
def test_what_is_missing_is_named(hub, tmp_path, reference, message):
    run, _ = _run(tmp_path)
    push(run, "alice/saes", "l1")
    with pytest.raises(SAEFileError, match=message) as error:
        saelab.load_sae(reference)
    assert str(error.value).startswith(f"{reference}: ")


def test_an_interrupted_upload_commits_nothing_and_a_rerun_completes(hub, tmp_path):
    run, sae = _run(tmp_path)
    hub.drop_next_commit = True
    with pytest.raises(PushError, match="nothing was committed"):
        push(run, "alice/saes", "l1")
    assert hub.repos["alice/saes"].commits == {}  # the repo exists, with nothing in it
    hub.drop_next_commit = True
    result = CliRunner().invoke(app, ["push", str(run), "--repo", "alice/saes", "--path", "l1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "Error: push to alice/saes failed" in result.output
    assert "`saelab push` can simply be run again" in result.output.replace("\n", " ")
    result = CliRunner().invoke(app, ["push", str(run), "--repo", "alice/saes", "--path", "l1"])
    assert result.exit_code == 0, result.output
    assert len(hub.repos["alice/saes"].commits) == 1 and len(hub.files("alice/saes")) == 5
    with torch.no_grad():
        assert torch.equal(saelab.load_sae("hf://alice/saes/l1").encode(_x()), sae.encode(_x()))


def test_dry_run_lists_the_files_and_uploads_nothing(hub, tmp_path):
    run, _ = _run(tmp_path)
    (run / "latent_stats.safetensors").unlink()
    result = CliRunner().invoke(
        app, ["push", str(run), "--repo", "alice/saes", "--dry-run", "--json"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [f["path"] for f in plan["files"]] == [
        "cfg.json", "sae_weights.safetensors", "eval.json", "README.md",
    ]  # fmt: skip
    assert plan["left_out"] == [
        f"sparsity.safetensors: no latent_stats.safetensors (run `saelab eval {run}` first)"
    ]
    assert plan["commit"] is None and hub.repos == {} and hub.requests == []
    bad = CliRunner().invoke(app, ["push", str(run), "--repo", "alice", "--dry-run"])
    assert bad.exit_code == 1 and "--repo 'alice': give owner/name" in bad.output


def _npz_bytes(sae) -> bytes:
    buffer = io.BytesIO()
    arrays = {k: sae.state_dict()[k].detach().numpy() for k in ("W_enc", "W_dec", "b_enc",
                                                                 "b_dec", "threshold")}  # fmt: skip
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _gemma_scope_sae():
    sae = saelab.create_sae("jumprelu", 64, 128, seed=3)
    sae.fold_normalization(1.0)
    with torch.no_grad():
        sae.threshold.uniform_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
    return sae


def test_a_gemma_scope_npz_from_the_hub_encodes_as_the_local_file(hub, tmp_path):
    sae = _gemma_scope_sae()
    local = saelab.load_sae(save_gemma_scope(sae, tmp_path / "params.npz"))
    hub.add("google/gemma-scope-2b-pt-res",
            {"layer_3/width_16k/average_l0_9/params.npz": _npz_bytes(sae)})  # fmt: skip
    for reference in ("hf://google/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_9",
                      "hf://google/gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_9/params.npz"):  # fmt: skip
        remote = saelab.load_sae(reference)
        with torch.no_grad():
            assert torch.equal(remote.encode(_x()), local.encode(_x()))
            assert torch.equal(remote(_x()), local(_x()))


def test_a_sae_lens_release_id_resolves_through_its_registry(hub):
    pytest.importorskip("sae_lens")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    lookup = get_pretrained_saes_directory()["gemma-scope-2b-pt-res"]
    sae_id, folder = next(iter(lookup.saes_map.items()))
    sae = _gemma_scope_sae()
    hub.add(lookup.repo_id, {f"{folder}/params.npz": _npz_bytes(sae)})
    loaded = saelab.load_sae(release="gemma-scope-2b-pt-res", sae_id=sae_id)
    with torch.no_grad():
        assert torch.equal(loaded.encode(_x()), sae.encode(_x()))
    with pytest.raises(LookupError, match="release 'gemma-scope-2b-pt-res' has no SAE id 'l99'"):
        resolve_release("gemma-scope-2b-pt-res", "l99")


def test_without_sae_lens_the_gemma_scope_family_still_resolves(monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens.loading.pretrained_saes_directory", None)
    ref = resolve_release("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_big")
    assert str(ref) == "hf://google/gemma-scope-2-270m-pt/resid_post/layer_12_width_16k_l0_big"
    ref = resolve_release("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71")
    assert str(ref) == "hf://google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"
    with pytest.raises(LookupError, match=r"install sae-lens \(pip install sae-lens\)"):
        resolve_release("pythia-70m-deduped-res-sm", "blocks.0.hook_resid_post")
    with pytest.raises(ValueError, match="give either a path or both release= and sae_id="):
        saelab.load_sae(release="gemma-scope-2-270m-pt")


def test_saelab_table_agrees_with_sae_lens_registry():
    """saelab's Gemma Scope table names the same folders as SAELens's registry, id for id."""
    pytest.importorskip("sae_lens")
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from saelab.formats.hub import GEMMA_SCOPE_RELEASES

    directory = get_pretrained_saes_directory()
    shared = [release for release in GEMMA_SCOPE_RELEASES if release in directory]
    assert len(shared) >= 20
    for release in shared:
        repo, folder = GEMMA_SCOPE_RELEASES[release]
        lookup = directory[release]
        assert repo == lookup.repo_id, release
        for sae_id, path in list(lookup.saes_map.items())[:3]:
            assert "/".join(p for p in (folder, sae_id) if p) == path, (release, sae_id)


def test_hub_references_parse_as_typed_and_after_pathlib():
    from pathlib import Path

    ref = parse_hub_ref("hf://google/gemma-scope-2b-pt-res/layer_20/width_16k@abc")
    assert (ref.repo_id, ref.path, ref.revision) == ("google/gemma-scope-2b-pt-res",
                                                     "layer_20/width_16k", "abc")  # fmt: skip
    assert parse_hub_ref(Path("hf://alice/saes/l1")) == parse_hub_ref("hf://alice/saes/l1")
    assert parse_hub_ref("runs/l6") is None and parse_hub_ref("hf://alice") is None


def test_gemma_scope_2_and_llama_scope_folders_load_from_the_hub(hub):
    sae = _gemma_scope_sae()
    state = {k: v.detach() for k, v in sae.state_dict().items()}
    params = {"w_enc": state["W_enc"], "w_dec": state["W_dec"], "b_enc": state["b_enc"],
              "b_dec": state["b_dec"], "threshold": state["threshold"]}  # fmt: skip
    hub.add("google/gemma-scope-2-270m-pt",
            {"resid_post/layer_5_width_16k_l0_small/params.safetensors": save(params)})  # fmt: skip
    two = saelab.load_sae("hf://google/gemma-scope-2-270m-pt/resid_post/layer_5_width_16k_l0_small")
    assert two.cfg.hook_name == "blocks.5.hook_resid_post"
    with torch.no_grad():
        assert torch.equal(two.encode(_x()), sae.encode(_x()))
    # Llama Scope: encodes s·x and decodes x̂·s with s = √d / average norm; one threshold.
    s, theta = 0.5, 0.03
    with torch.no_grad():
        sae.threshold.fill_(theta)
    raw = {"encoder.weight": (state["W_enc"] / s).T.contiguous(),
           "decoder.weight": (state["W_dec"] * s).T.contiguous(),
           "encoder.bias": state["b_enc"], "decoder.bias": state["b_dec"] * s}  # fmt: skip
    hyper = {"d_model": 64, "d_sae": 128, "hook_point_in": "blocks.7.hook_resid_post",
             "jump_relu_threshold": theta,
             "dataset_average_activation_norm": {"in": math.sqrt(64) / s}}  # fmt: skip
    hub.add("fnlp/Llama3_1-8B-Base-LXR-8x", {
        "Llama3_1-8B-Base-L7R-8x/hyperparams.json": json.dumps(hyper).encode(),
        "Llama3_1-8B-Base-L7R-8x/checkpoints/final.safetensors": save(raw),
    })  # fmt: skip
    llama = saelab.load_sae("hf://fnlp/Llama3_1-8B-Base-LXR-8x/Llama3_1-8B-Base-L7R-8x")
    assert llama.cfg.hook_name == "blocks.7.hook_resid_post"
    with torch.no_grad():
        torch.testing.assert_close(llama.encode(_x()), sae.encode(_x()), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(llama(_x()), sae(_x()), rtol=1e-5, atol=1e-5)


def test_the_cli_takes_a_hub_reference_where_it_takes_an_sae(hub, tmp_path, tiny_model):
    sae = saelab.create_sae("topk", 64, 128, k=8, seed=0, model_name=str(tiny_model("llama")),
                            hook_name=HOOK)  # fmt: skip
    run = tmp_path / "run"
    sae.save(run / "sae")
    push(run, "alice/saes", "l1")
    result = CliRunner().invoke(
        app, ["prompt", "hf://alice/saes/l1", "--prompt", "def f(x):", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hook"] == HOOK


def test_eval_and_analyze_of_a_hub_sae_write_under_hub_in_the_current_directory(
    hub, tmp_path, tiny_model, monkeypatch
):
    sae = saelab.create_sae("topk", 64, 128, k=8, seed=0, model_name=str(tiny_model("llama")),
                            hook_name=HOOK)  # fmt: skip
    sae.save(tmp_path / "run" / "sae")
    push(tmp_path / "run", "alice/saes", "l1")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    fast = ["--tokens", "200", "--batch-size", "4", "--context-size", "32", "--device", "cpu"]
    result = CliRunner().invoke(app, ["eval", "hf://alice/saes/l1", *fast])
    assert result.exit_code == 0, result.output
    assert (work / "hub" / "alice--saes--l1" / "eval.json").is_file()
    result = CliRunner().invoke(app, ["analyze", "hf://alice/saes/l1", *fast])
    assert result.exit_code == 0, result.output
    assert (work / "hub" / "alice--saes--l1" / "features.sqlite").is_file()
    site = CliRunner().invoke(app, ["dashboard", "hf://alice/saes/l1", "--out", "site"])
    assert site.exit_code == 0, site.output
    assert not list(work.glob("hf*")) and not (work / "alice").exists()


def test_a_gemma_scope_2_affine_transcoder_loads_with_its_skip(hub):
    sae = saelab.create_sae("jumprelu", 64, 128, seed=4, d_out=64, skip_connection=True)
    sae.fold_normalization(1.0, 1.0)
    with torch.no_grad():
        sae.W_skip.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        sae.threshold.fill_(0.01)
    state = {k: v.detach() for k, v in sae.state_dict().items()}
    params = {"w_enc": state["W_enc"], "w_dec": state["W_dec"], "b_enc": state["b_enc"],
              "b_dec": state["b_dec"], "threshold": state["threshold"],
              "affine_skip_connection": state["W_skip"].T.contiguous()}  # fmt: skip
    folder = "transcoder/layer_3_width_16k_l0_small_affine"
    hub.add("google/gemma-scope-2-270m-pt", {f"{folder}/params.safetensors": save(params)})
    loaded = saelab.load_sae(f"hf://google/gemma-scope-2-270m-pt/{folder}")
    cfg = loaded.cfg
    assert (cfg.hook_name, cfg.target_hook_name) == (
        "blocks.3.hook_mlp_in",
        "blocks.3.hook_mlp_out",
    )
    assert cfg.skip_connection and cfg.d_out == 64
    with torch.no_grad():
        assert torch.equal(loaded(_x()), sae(_x()))
