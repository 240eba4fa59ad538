"""How well attribution predicts zero-ablation on gemma-3-270m, prompt by prompt (SPEC §5).

For each prompt and metric: the metric's value, and the Pearson correlation over the top 20
latents between the estimate (−attribution) and the measured change of the metric when the
latent alone is zero-ablated (error node kept). Results: docs/attribution.md, "How far the
linear estimate holds".

    .venv/bin/python benchmarks/attribution_prompts.py RUN [--top 20]
"""

from __future__ import annotations

import argparse

import saelab
from saelab.interventions.attribution import attribute, check_ablations, correlation, make_metric

CASES = [
    ("def add(a, b):\n    return a +", " b", "logprob", None),
    ("def add(a, b):\n    return a +", " b", "logit-diff", " a"),
    ("for i in range(", "1", "logprob", None),
    ("import os\nimport", " sys", "logprob", None),
    ("    def __init__(self", ",", "logprob", None),
    ("x = [1, 2, 3]\nfor item in", " x", "logprob", None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="an SAE on gemma-3-270m (run directory or SAE folder)")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    lm = saelab.load_model("gemma-3-270m", device="cpu")
    sae = saelab.load_sae(args.run).eval()
    print("| prompt | target | metric | m | correlation |\n|---|---|---|---|---|")
    for prompt, target, kind, contrast in CASES:
        metric = make_metric(lm, target, kind, contrast)
        result = attribute(lm, sae, prompt, metric)
        rho = correlation(check_ablations(lm, result, prompt, args.top))
        name = kind if contrast is None else f"{kind} vs {contrast!r}"
        print(f"| `{prompt!r}` | `{target!r}` | {name} | {result.value:.3f} | {rho:.3f} |")


if __name__ == "__main__":
    main()
