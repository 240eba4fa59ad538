"""Latent attribution with error nodes (SPEC §5; Syed et al. 2023, Marks et al. 2024).

Each SAE is spliced in at the hook it writes (its own hook, or a transcoder's target hook) as

    out = x̂(f) + e + (a − stopgrad(a)),   f = encode(x), e = stopgrad(a − x̂(f)),

with a the model's activation there and f and e leaves of the graph. Its value is a (the error
node e keeps the model's output unchanged); the last term passes ∂m/∂out on to a, so gradients
reaching the earlier layers are the model's own. One backward pass of the metric m then gives
every node's attribution: f_{i,t}·∂m/∂f_{i,t} for a latent, e_t·∂m/∂e_t for an error node, the
linear estimate of the change of m when that node is removed (zero-ablated) is −attribution.

Edges join two consecutive spliced SAEs U → D (in forward order). For a downstream node n with
value v_n (a latent f_{d,t}, or the error e_t) and gradient g_n = ∂m/∂v_n, the edge from an
upstream node u is v_u·∂(g_n·v_n)/∂v_u: one vector-Jacobian product per downstream node, with
D's code and error recomputed from its activation inside the graph. The edges from u into all of
D's nodes add up to u's attribution when every path from U to the output passes through D.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saelab.data import sae_token_mask, special_token_ids
from saelab.evals.command import spliced_hook
from saelab.interventions.steering import encode_prompt
from saelab.lm.intervene import observe, replace_activation
from saelab.lm.model import LanguageModel
from saelab.sae import SAE

METRICS = ("logprob", "logit-diff")


@dataclass(frozen=True)
class Metric:
    """m from the logits at the prompt's last position: log p(target) ("logprob"), or
    logit(target) − logit(contrast) ("logit-diff")."""

    kind: str
    target: int
    contrast: int | None = None
    target_text: str = ""
    contrast_text: str | None = None

    def __call__(self, logits: Tensor) -> Tensor:
        last = logits[0, -1].double()
        if self.kind == "logprob":
            return last.log_softmax(-1)[self.target]
        return last[self.target] - last[self.contrast]


def single_token(lm: LanguageModel, text: str, flag: str) -> int:
    """The id of `text` as one token, else a ValueError naming the flag and the pieces."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [lm.tokenizer.decode([i]) for i in ids]
        raise ValueError(
            f"{flag} {text!r} is {len(ids)} tokens {pieces}; give a single token "
            '(often with its leading space, e.g. " Paris")'
        )
    return ids[0]


def predicted_token(lm: LanguageModel, prompt: str) -> str:
    """The model's most likely next token after `prompt`, as text."""
    with torch.no_grad():
        logits = lm.model(input_ids=encode_prompt(lm, prompt), use_cache=False).logits
    return lm.tokenizer.decode([int(logits[0, -1].argmax())])


def make_metric(
    lm: LanguageModel, target: str, kind: str = "logprob", contrast: str | None = None
) -> Metric:
    """The metric of `saelab attribute` from token texts, each checked to be one token."""
    if kind not in METRICS:
        raise ValueError(f"Unknown --metric {kind!r}; valid: {', '.join(METRICS)}.")
    if (kind == "logit-diff") != (contrast is not None):
        raise ValueError("--contrast goes with --metric logit-diff, and only with it.")
    other = single_token(lm, contrast, "--contrast") if contrast is not None else None
    return Metric(kind, single_token(lm, target, "--target"), other, target, contrast)


@dataclass
class Site:
    """One spliced SAE: it reads `read` and writes `write`, and what one forward left there:
    codes f (seq, n) and error e (seq, d) as graph leaves, and `graph`, D's recomputation
    (f, e) inside the graph, for edges into it."""

    sae: SAE
    read: str
    write: str
    f: Tensor | None = None
    e: Tensor | None = None
    graph: tuple[Tensor, Tensor] | None = None


def sites_of(saes: Sequence[SAE], hooks: Sequence[str | None] | None = None) -> list[Site]:
    """A Site per SAE reading hooks[i], else the hook its cfg records (error when neither)."""
    sites = []
    for i, sae in enumerate(saes):
        hook = (hooks[i] if hooks is not None else None) or sae.cfg.hook_name
        if not hook:
            raise ValueError(f"SAE {i} records no hook_name: attribution needs its hook")
        sites.append(Site(sae, hook, spliced_hook(sae, hook)))
    writes = [site.write for site in sites]
    if len(set(writes)) != len(writes):
        raise ValueError(f"two SAEs write the same hook ({writes}); splice one SAE per hook")
    return sites


def spliced_forward(lm: LanguageModel, sites: list[Site], ids: Tensor, graph: bool) -> Tensor:
    """Logits with every site spliced in (module docstring), filling each site's f and e;
    graph=True also keeps each site's (f, e) recomputed inside the graph. Sites are reordered
    as the forward reaches them. BOS/EOS/pad positions keep the model's activation."""
    keep = sae_token_mask(ids, special_token_ids(lm.tokenizer))[0]
    inputs: dict[str, Tensor] = {}
    order: list[Site] = []

    def splicer(site: Site):
        def splice(a: Tensor) -> Tensor:
            dtype = site.sae.W_dec.dtype
            x = (inputs[site.read] if site.read != site.write else a)[0].to(dtype)
            f = site.sae.encode(x) * keep[:, None]
            site.f = f.detach().requires_grad_(True)
            x_hat = site.sae.decode(site.f)
            site.e = (a[0].to(dtype) - x_hat).detach().requires_grad_(True)
            if graph:
                site.graph = (f, a[0].to(dtype) - site.sae.decode(f))
            out = x_hat + site.e + (a[0] - a[0].detach()).to(dtype)
            order.append(site)
            return torch.where(keep[:, None], out.to(a.dtype), a[0])[None]

        return splice

    def recorder(hook: str):
        def record(a: Tensor) -> None:
            inputs[hook] = a

        return record

    with ExitStack() as stack:
        for site in sites:
            if site.read != site.write:
                stack.callback(observe(lm.model, site.read, recorder(site.read)).remove)
            stack.enter_context(replace_activation(lm.model, site.write, splicer(site)))
        logits = lm.model(input_ids=ids, use_cache=False).logits
    sites[:] = order
    return logits


@dataclass
class Attribution:
    """Per site (in forward order): codes and latent attributions (seq, n), error attributions
    (seq,); the metric's value; the prompt's tokens; edges [(upstream node, downstream node,
    weight)] with nodes as (site, position, latent or None for the error)."""

    tokens: list[str]
    metric: Metric
    value: float
    sites: list[Site]
    codes: list[Tensor]
    latents: list[Tensor]
    errors: list[Tensor]
    edges: list[tuple[tuple[int, int, int | None], tuple[int, int, int | None], float]] = field(
        default_factory=list
    )

    def top_nodes(self, n: int) -> list[tuple[int, int, int, float, float]]:
        """The n latents with the largest |attribution|: (site, position, latent, activation,
        attribution), ties by site, position, latent."""
        rows = []
        for s, (codes, scores) in enumerate(zip(self.codes, self.latents, strict=True)):
            for t, i in (scores != 0).nonzero().tolist():
                rows.append((s, t, i, float(codes[t, i]), float(scores[t, i])))
        rows.sort(key=lambda r: (-abs(r[4]), r[0], r[1], r[2]))
        return rows[:n]


def attribute(
    lm: LanguageModel,
    saes: SAE | Sequence[SAE],
    prompt: str,
    target: str | Metric,
    *,
    edges: int = 0,
    hooks: Sequence[str | None] | None = None,
) -> Attribution:
    """Attribution of every latent and error node of the spliced SAEs to the metric (SPEC §5).

    target: the next token's text (metric log p(target)), or a Metric (make_metric). edges > 0
    also keeps the `edges` largest edges between consecutive SAEs, from the vector-Jacobian
    products of the top `edges` downstream nodes (by |attribution|). hooks: the hook each SAE
    reads (default: its cfg's hook_name).
    """
    sites = sites_of([saes] if isinstance(saes, SAE) else list(saes), hooks)
    metric = target if isinstance(target, Metric) else make_metric(lm, target)
    ids = encode_prompt(lm, prompt)
    with torch.enable_grad():
        m = metric(spliced_forward(lm, sites, ids, graph=edges > 0))
        leaves = [leaf for site in sites for leaf in (site.f, site.e)]
        grads = torch.autograd.grad(m, leaves, retain_graph=edges > 0, allow_unused=True)
        grads = [
            g if g is not None else torch.zeros_like(x) for g, x in zip(grads, leaves, strict=True)
        ]
        result = Attribution(
            tokens=[lm.tokenizer.decode([i]) for i in ids[0].tolist()],
            metric=metric,
            value=float(m.detach()),
            sites=sites,
            codes=[site.f.detach().double().cpu() for site in sites],
            latents=[
                (s.f * g).detach().double().cpu() for s, g in zip(sites, grads[::2], strict=True)
            ],
            errors=[
                (s.e * g).sum(-1).detach().double().cpu()
                for s, g in zip(sites, grads[1::2], strict=True)
            ],
        )
        if edges > 0:
            result.edges = _edges(sites, grads, edges)
    return result


def _edges(sites: list[Site], grads: list[Tensor], n: int) -> list:
    """The n largest edges between consecutive sites (module docstring), from the VJPs of the
    n downstream nodes with the largest |attribution| of each pair."""
    found = []
    for u in range(len(sites) - 1):
        up, down = sites[u], sites[u + 1]
        g_f, g_e = grads[2 * (u + 1)], grads[2 * (u + 1) + 1]
        f_graph, e_graph = down.graph
        latent = (down.f.detach() * g_f).abs()
        error = (down.e.detach() * g_e).sum(-1).abs()
        strength = torch.cat([latent.flatten(), error])
        chosen = strength.topk(min(n, int((strength > 0).sum()))).indices.tolist()
        width = latent.shape[1]
        for j in chosen:
            if j < latent.numel():
                t, i = divmod(j, width)
                scalar = g_f[t, i] * f_graph[t, i]
            else:
                t, i = j - latent.numel(), None
                scalar = (g_e[t] * e_graph[t]).sum()
            d_f, d_e = torch.autograd.grad(
                scalar, (up.f, up.e), retain_graph=True, allow_unused=True
            )
            if d_f is not None:
                weights = up.f.detach() * d_f
                where = weights.nonzero()
                for (s, k), w in zip(where.tolist(), weights[tuple(where.T)].tolist(), strict=True):
                    found.append(((u, s, k), (u + 1, t, i), w))
            if d_e is not None:
                weights = (up.e.detach() * d_e).sum(-1)
                for s in weights.nonzero().flatten().tolist():
                    found.append(((u, s, None), (u + 1, t, i), float(weights[s])))
    found.sort(key=lambda edge: -abs(edge[2]))
    return found[:n]


def metric_with_edit(
    lm: LanguageModel, metric: Metric, ids: Tensor, hook: str, position: int, delta: Tensor
) -> float:
    """m when `delta` is added to the activation at `hook` and `position` (nothing else
    spliced: with the error node kept, removing a latent changes only its own term)."""

    def edit(a: Tensor) -> Tensor:
        out = a.clone()
        out[0, position] += delta.to(a.dtype)
        return out

    with torch.no_grad(), replace_activation(lm.model, hook, edit):
        return float(metric(lm.model(input_ids=ids, use_cache=False).logits))


def check_ablations(
    lm: LanguageModel, result: Attribution, prompt: str, n: int
) -> list[dict[str, Any]]:
    """Zero-ablate each of the top n latents alone: the measured change of m beside the
    estimate −attribution (SPEC §5)."""
    ids = encode_prompt(lm, prompt)
    rows = []
    for s, t, i, activation, score in result.top_nodes(n):
        site = result.sites[s]
        delta = -activation * site.sae.W_dec[i].detach()
        measured = metric_with_edit(lm, result.metric, ids, site.write, t, delta) - result.value
        rows.append(
            {"site": s, "position": t, "latent": i, "estimate": -score, "measured": measured}
        )
    return rows


def correlation(rows: list[dict[str, Any]]) -> float | None:
    """Pearson correlation of the estimated and measured ablation effects (None: < 2 rows or
    no spread)."""
    if len(rows) < 2:
        return None
    pairs = torch.tensor([[r["estimate"], r["measured"]] for r in rows], dtype=torch.float64)
    centred = pairs - pairs.mean(0)
    norms = centred.norm(dim=0)
    if float(norms.prod()) == 0:
        return None
    return float((centred[:, 0] @ centred[:, 1]) / norms.prod())


def attribution_report(
    result: Attribution,
    prompt: str,
    model: str,
    sources: Sequence[Any],
    explanations: Sequence[dict[int, str]],
    *,
    top: int = 3,
    checks: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON-ready result of `saelab attribute`: per position the `top` latents of all
    sites by |attribution| and each site's error node; the overall top latents; the edges; the
    ablation check with its correlation. Latents carry their explanation when known."""

    def node(s: int, t: int, i: int | None) -> dict[str, Any]:
        row: dict[str, Any] = {"site": s, "position": t, "token": result.tokens[t], "latent": i}
        if i is not None:
            row["activation"] = float(result.codes[s][t, i])
            row["attribution"] = float(result.latents[s][t, i])
            if i in explanations[s]:
                row["explanation"] = explanations[s][i]
        else:
            row["attribution"] = float(result.errors[s][t])
        return row

    positions = []
    for t, token in enumerate(result.tokens):
        found = [
            (s, i)
            for s, scores in enumerate(result.latents)
            for i in scores[t].nonzero().flatten().tolist()
        ]
        found.sort(key=lambda si: (-abs(float(result.latents[si[0]][t, si[1]])), si))
        positions.append({
            "position": t,
            "token": token,
            "latents": [node(s, t, i) for s, i in found[:top]],
            "errors": [float(errors[t]) for errors in result.errors],
        })  # fmt: skip
    report = {
        "prompt": prompt,
        "model": model,
        "metric": {
            "kind": result.metric.kind,
            "target": result.metric.target_text,
            "contrast": result.metric.contrast_text,
            "value": result.value,
        },
        "sites": [
            {
                "run": str(source),
                "hook": site.read,
                "write": site.write,
                "architecture": site.sae.cfg.architecture,
                "d_sae": site.sae.cfg.d_sae,
            }
            for site, source in zip(result.sites, sources, strict=True)
        ],
        "positions": positions,
        "top": [node(s, t, i) for s, t, i, _, _ in result.top_nodes(max(top, 20))],
        "edges": [{"from": node(*a), "to": node(*b), "weight": w} for a, b, w in result.edges],
    }
    if checks is not None:
        report["check"] = {"rows": checks, "correlation": correlation(checks)}
    return report
