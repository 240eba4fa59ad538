"""Latent attribution (SPEC §5): the model's output is unchanged with SAEs and error nodes
spliced in, attributions equal finite differences in float64, edges equal a brute-force
Jacobian, and a transcoder is attributed where it writes."""

from __future__ import annotations

import functools

import pytest
import torch

import saelab
from saelab.interventions.attribution import (
    attribute,
    check_ablations,
    correlation,
    make_metric,
    metric_with_edit,
)
from saelab.interventions.steering import encode_prompt
from saelab.lm import load_model, replace_activation

H0, H1 = "blocks.0.hook_resid_post", "blocks.2.hook_resid_post"
MLP_IN, MLP_OUT = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"
PROMPT = "def read_lines(path):\n    with open(path) as handle:"
TARGET = " return"
DELTA = 1e-4


def _saes(dtype: torch.dtype) -> list[saelab.SAE]:
    saes = [
        saelab.create_sae("jumprelu", 64, 256, seed=1, hook_name=H0),
        saelab.create_sae("topk", 64, 256, k=8, seed=0, hook_name=H1),
    ]
    with torch.no_grad():
        saes[0].threshold.fill_(0.02)
    return [sae.to(dtype).eval() for sae in saes]


@pytest.fixture(scope="module")
def lm64(tiny_model):
    """The tiny GPT-2 model in float64, where finite differences resolve 1e-4 (its LayerNorm
    keeps the dtype; Llama's RMSNorm computes in float32, whose rounding they would amplify)."""
    lm = load_model(tiny_model("gpt2"), device="cpu")
    lm.model.double()
    return lm


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=ids, use_cache=False).logits


def test_the_output_is_unchanged_with_saes_and_error_nodes_spliced_in(tiny_lm):
    saes = _saes(torch.float32)
    transcoder = saelab.create_sae("topk", 64, 128, k=8, d_out=64, seed=2, hook_name=MLP_IN,
                                   target_hook_name=MLP_OUT).eval()  # fmt: skip
    ids = encode_prompt(tiny_lm, PROMPT)
    clean = _logits(tiny_lm, ids)
    result = attribute(tiny_lm, [*saes, transcoder], PROMPT, TARGET)
    metric = make_metric(tiny_lm, TARGET)
    assert result.value == pytest.approx(float(metric(clean)), abs=1e-5)
    from saelab.interventions.attribution import sites_of, spliced_forward

    with torch.enable_grad():
        spliced = spliced_forward(tiny_lm, sites_of([*saes, transcoder]), ids, graph=False)
    torch.testing.assert_close(spliced.detach(), clean, rtol=0, atol=1e-5)
    assert [site.write for site in result.sites] == [H0, MLP_OUT, H1]  # forward order
    assert result.tokens[0] == tiny_lm.tokenizer.bos_token
    for scores, codes in zip(result.latents, result.codes, strict=True):
        assert not scores[0].any() and not codes[0].any()  # BOS is not spliced
        assert ((scores != 0) <= (codes != 0)).all()


def _fd(lm, metric, ids, hook, position, direction) -> float:
    """Central difference of m along `direction` added at (hook, position)."""
    up = metric_with_edit(lm, metric, ids, hook, position, DELTA * direction)
    down = metric_with_edit(lm, metric, ids, hook, position, -DELTA * direction)
    return (up - down) / (2 * DELTA)


@pytest.mark.parametrize("kind", ["logprob", "logit-diff"])
def test_attributions_equal_finite_differences_in_float64(lm64, kind):
    saes = _saes(torch.float64)
    metric = make_metric(lm64, TARGET, kind, " if" if kind == "logit-diff" else None)
    result = attribute(lm64, saes, PROMPT, metric)
    ids = encode_prompt(lm64, PROMPT)
    for s, t, i, activation, score in result.top_nodes(12):
        sae = saes[s]
        # f_i·∂m/∂f_i = d/dε m(x + ε f_i d_i) at ε = 0 (the latent scaled by 1 + ε)
        direction = activation * sae.W_dec[i].detach()
        assert score == pytest.approx(_fd(lm64, metric, ids, sae.cfg.hook_name, t, direction),
                                      rel=1e-4, abs=1e-7), (s, t, i)  # fmt: skip
    for s, site in enumerate(result.sites):
        for t in (1, len(result.tokens) - 1):
            error = result.errors[s][t]
            e = site.e[t].detach()
            assert float(error) == pytest.approx(
                _fd(lm64, metric, ids, site.write, t, e), rel=1e-4, abs=1e-7
            ), (s, t)


def test_edges_equal_a_brute_force_jacobian_and_add_up_to_the_upstream_attribution(lm64):
    saes = _saes(torch.float64)
    metric = make_metric(lm64, TARGET)
    ids = encode_prompt(lm64, PROMPT)
    result = attribute(lm64, saes, PROMPT, metric, edges=100_000)
    up, down = saes

    def downstream_nodes(delta_position: int, delta: torch.Tensor) -> tuple:
        """D's code and error at every position with `delta` added to U's output."""
        seen = {}

        def edit(a):
            out = a.clone()
            out[0, delta_position] += delta
            return out

        with torch.no_grad(), replace_activation(lm64.model, H0, edit):
            a = lm64.activations(ids, H1)[H1][0]
        f = down.encode(a)
        seen["f"], seen["e"] = f, a - down.decode(f)
        return seen["f"], seen["e"]

    # ∂m/∂(D's output) at each position, by central differences along each basis vector.
    @functools.cache
    def grad_at(t: int) -> torch.Tensor:
        return torch.tensor([_fd(lm64, metric, ids, H1, t, torch.eye(64, dtype=torch.float64)[j])
                             for j in range(64)], dtype=torch.float64)  # fmt: skip

    checked = 0
    for (us, s, k), (ds, t, i), weight in result.edges[:12]:
        assert (us, ds) == (0, 1)
        if k is None:
            continue
        f_u = result.codes[0][s, k].double()
        direction = f_u * up.W_dec[k].detach()
        f_plus, e_plus = downstream_nodes(s, DELTA * direction)
        f_minus, e_minus = downstream_nodes(s, -DELTA * direction)
        g = grad_at(t)
        if i is None:
            change = (e_plus[t] - e_minus[t]) / (2 * DELTA)
            expected = float(g @ change)
        else:
            change = (f_plus[t, i] - f_minus[t, i]) / (2 * DELTA)
            expected = float(g @ down.W_dec[i].detach()) * float(change)
        assert weight == pytest.approx(expected, rel=1e-4, abs=1e-7), ((s, k), (t, i))
        checked += 1
    assert checked >= 5
    # Every path from blocks.0 to the output passes blocks.2's resid: the edges out of an
    # upstream latent into all downstream nodes add up to its attribution.
    totals: dict = {}
    for (_, s, k), _, weight in result.edges:
        totals[(s, k)] = totals.get((s, k), 0.0) + weight
    for s, t, i, _, score in result.top_nodes(40):
        if s == 0:
            assert totals[(t, i)] == pytest.approx(score, rel=1e-6, abs=1e-9)


def test_a_transcoder_is_attributed_where_it_writes(lm64):
    transcoder = saelab.create_sae("topk", 64, 128, k=8, d_out=64, seed=2, hook_name=MLP_IN,
                                   target_hook_name=MLP_OUT).double().eval()  # fmt: skip
    metric = make_metric(lm64, TARGET)
    result = attribute(lm64, transcoder, PROMPT, metric)
    ids = encode_prompt(lm64, PROMPT)
    assert result.sites[0].write == MLP_OUT
    for _, t, i, activation, score in result.top_nodes(5):
        direction = activation * transcoder.W_dec[i].detach()
        assert score == pytest.approx(_fd(lm64, metric, ids, MLP_OUT, t, direction),
                                      rel=1e-4, abs=1e-7)  # fmt: skip


def test_ablation_check_reports_measured_effects_beside_the_estimates(lm64):
    saes = _saes(torch.float64)
    result = attribute(lm64, saes, PROMPT, TARGET)
    rows = check_ablations(lm64, result, PROMPT, 6)
    assert [(r["site"], r["position"], r["latent"]) for r in rows] == [
        (s, t, i) for s, t, i, _, _ in result.top_nodes(6)
    ]
    ids = encode_prompt(lm64, PROMPT)
    first = rows[0]
    sae = saes[first["site"]]
    f = result.codes[first["site"]][first["position"], first["latent"]].double()
    removed = metric_with_edit(lm64, result.metric, ids, sae.cfg.hook_name, first["position"],
                               -f * sae.W_dec[first["latent"]].detach())  # fmt: skip
    assert first["measured"] == pytest.approx(removed - result.value)
    assert first["estimate"] == pytest.approx(-result.top_nodes(1)[0][4])
    rho = correlation(rows)
    assert rho is not None and -1 <= rho <= 1
    assert correlation(rows[:1]) is None


def test_bad_targets_are_clear_errors(tiny_lm):
    with pytest.raises(ValueError, match=r"--target 'zzqxj' is \d+ tokens"):
        make_metric(tiny_lm, "zzqxj")
    with pytest.raises(ValueError, match="--contrast goes with --metric logit-diff"):
        make_metric(tiny_lm, TARGET, "logprob", " if")
    with pytest.raises(ValueError, match="Unknown --metric 'kl'; valid: logprob, logit-diff"):
        make_metric(tiny_lm, TARGET, "kl")
    twice = _saes(torch.float32)[:1] * 2
    with pytest.raises(ValueError, match="two SAEs write the same hook"):
        attribute(tiny_lm, twice, PROMPT, TARGET)


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """Two run directories at blocks.0 and blocks.2 of the tiny llama model; the first with a
    features.sqlite of explanations."""
    import sqlite3

    root = tmp_path_factory.mktemp("runs")
    paths = []
    for n, sae in enumerate(_saes(torch.float32)):
        sae.cfg.model_name = str(tiny_model("llama"))
        sae.save(root / f"r{n}" / "sae")
        paths.append(root / f"r{n}")
    with sqlite3.connect(paths[0] / "features.sqlite") as db:
        db.execute("CREATE TABLE latents (latent INTEGER PRIMARY KEY, explanation TEXT)")
        db.executemany("INSERT INTO latents VALUES (?, ?)",
                       [(i, f"explained {i}") for i in range(256)])  # fmt: skip
    return paths


def _attribute(*args):
    from typer.testing import CliRunner

    from saelab.cli import app

    return CliRunner().invoke(app, ["attribute", *map(str, args)], env={"COLUMNS": "220"})


def test_cli_json_has_positions_edges_and_the_check(runs, tiny_lm):
    import json

    result = _attribute(*runs, "--prompt", PROMPT, "--target", TARGET, "--top", "2",
                        "--edges", "15", "--check", "5", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["hook"] for s in report["sites"]] == [H0, H1]
    assert report["metric"]["kind"] == "logprob" and report["metric"]["target"] == TARGET
    expected = attribute(tiny_lm, [saelab.load_sae(r) for r in runs], PROMPT, TARGET, edges=15)
    assert report["metric"]["value"] == pytest.approx(expected.value)
    assert len(report["positions"]) == len(expected.tokens)
    for row in report["positions"][1:]:
        assert len(row["latents"]) == 2 and len(row["errors"]) == 2
        first = row["latents"][0]
        assert first["attribution"] == pytest.approx(
            float(expected.latents[first["site"]][row["position"], first["latent"]])
        )
        if first["site"] == 0:
            assert first["explanation"] == f"explained {first['latent']}"
        else:
            assert "explanation" not in first
    assert len(report["edges"]) == 15
    assert [e["weight"] for e in report["edges"]] == pytest.approx([w for *_, w in expected.edges])
    check = report["check"]
    assert len(check["rows"]) == 5 and -1 <= check["correlation"] <= 1


def test_cli_table_names_the_metric_and_the_error_nodes(runs):
    result = _attribute(runs[0], "--prompt", PROMPT, "--target", TARGET, "--metric",
                        "logit-diff", "--contrast", " if", "--check", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    for text in ("logit(' return') − logit(' if')", f"error {H0}", "explained",
                 "Zero-ablation check", "correlation over 3 latents"):  # fmt: skip
        assert text in result.stdout, text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "zzqxj"], "--target 'zzqxj' is"),
        (["--target", TARGET, "--edges", "5"], "--edges needs SAEs at two or more hooks"),
        (["--target", TARGET, "--top", "0"], "--top must be ≥ 1, got 0"),
        (["--target", TARGET, "--contrast", " if"], "--contrast goes with --metric logit-diff"),
    ],
)
def test_cli_errors_are_one_line(runs, args, message):
    result = _attribute(runs[0], "--prompt", PROMPT, *args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert message in result.output.replace("\n", " ")


def test_public_name_and_help_lists_every_option():
    from typer.testing import CliRunner

    from saelab.cli import app

    assert saelab.attribute is attribute
    result = CliRunner().invoke(app, ["attribute", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--prompt", "--target", "--metric", "--contrast", "--top", "--edges",
                   "--check", "--model", "--device", "--dtype", "--json"):  # fmt: skip
        assert option in result.output, option


def test_cli_names_an_sae_without_a_recorded_hook(tiny_model, tmp_path):
    sae = saelab.create_sae("topk", 64, 128, k=8, seed=0, model_name=str(tiny_model("llama")))
    path = sae.save(tmp_path / "nohook")
    result = _attribute(path, "--prompt", PROMPT, "--target", TARGET)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "the SAE records no hook_name" in result.output.replace("\n", " ")
