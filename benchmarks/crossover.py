"""Where the sparse training kernels stop paying: one training forward + backward, sparse vs
dense, across the density of touched (token, latent) entries (issue 16; KernelOptions.max_density).

JumpReLU: θ is set so a chosen fraction of entries lies in the window π > θ − 0.55ε
(saelab.kernels.jumprelu_window); TopK: k = density · d_sae. Random unit-scale inputs; the
best of --repeats runs each. Prints one JSON line per (arch, density, mode):

    .venv/bin/python benchmarks/crossover.py --out benchmarks/results-crossover-cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import saelab
from saelab.kernels import KernelOptions

DENSITIES = (0.01, 0.03, 0.06, 0.1, 0.15, 0.2, 0.3)
BANDWIDTH = 0.01


def step_seconds(sae: saelab.SAE, x: torch.Tensor, mode: str, repeats: int) -> float:
    """Best wall time of one train_forward + backward in this kernel mode."""
    sae.kernels = KernelOptions(mode=mode)
    best = float("inf")
    for _ in range(repeats):
        sae.zero_grad(set_to_none=True)
        start = time.perf_counter()
        sae.train_forward(x, 1.0).loss.backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=640)
    p.add_argument("--d-sae", type=int, default=16_384)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, help="append the JSON lines here")
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.d_in) / args.d_in**0.5
    for arch in ("jumprelu", "topk"):
        for density in DENSITIES:
            if arch == "topk":
                sae = saelab.create_sae(
                    "topk", args.d_in, args.d_sae, seed=0, k=round(density * args.d_sae)
                )
            else:
                sae = saelab.create_sae(
                    "jumprelu", args.d_in, args.d_sae, seed=0, bandwidth=BANDWIDTH
                )
                with torch.no_grad():
                    pre = sae.pre_acts(x[:256]).flatten()
                    cut = torch.quantile(pre, 1 - density).item()
                    sae.threshold.fill_(cut + 0.55 * BANDWIDTH)
            for mode in ("sparse", "dense"):
                row = {
                    "arch": arch,
                    "density": density,
                    "mode": mode,
                    "seconds": step_seconds(sae, x, mode, args.repeats),
                    "d_in": args.d_in,
                    "d_sae": args.d_sae,
                    "batch": args.batch,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                }
                print(json.dumps(row), flush=True)
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
