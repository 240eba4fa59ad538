"""SAE quality at equal tokens: saelab's architectures against SAELens, dictionary_learning
and sparsify, on one activation cache, scored on held-out activations and by the spliced LM.

Phases (each skips what its results file already holds, so a rerun continues):
1. saelab: every architecture and JumpReLU variant with default settings (JumpReLU and TopK
   also at 0.5× and 2× their default LR: the 3-value LR sweep), on the first --tokens rows.
2. peers (--peers): benchmarks/peers.py in the benchmark venv, each peer variant at its own
   default LR (three headline variants also at 0.5× and 2×), exported in SAELens format.
3. Δ LM loss of every saved SAE on --eval-tokens held-out tokens of the cache's corpus
   (one LM pass shared by all SAEs).
Then the table (best LR per variant) goes to OUT/table.md, the Pareto plot to OUT/pareto.png.
--check exits 1 unless issue 15's acceptance holds (JumpReLU target 32 vs TopK k=32).

    .venv/bin/python benchmarks/quality.py --cache /work/cache/l6 \\
        --heldout /work/cache/l6-heldout --out runs/quality --peers --check
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import saelab
from saelab.data.cache_format import read_manifest
from saelab.train.config import TrainConfig, recipe_for

sys.path.insert(0, str(Path(__file__).parent))
from recipes import load_rows

LR_FACTORS = (0.5, 1.0, 2.0)
# (name, architecture, SAE options): saelab's defaults for each architecture and variant.
SAELAB_VARIANTS = [
    ("jumprelu", "jumprelu", {"target_l0": 32}),
    ("topk", "topk", {"k": 32}),
    ("batchtopk", "batchtopk", {"k": 32}),
    ("gated", "gated", {}),
    ("jumprelu-tanh", "jumprelu", {"sparsity_loss": "tanh"}),
    ("relu", "relu", {}),
]
# (library, variant); each at its own default LR (benchmarks/peers.py lists them).
PEERS = [
    ("sparsify", "topk"),
    ("saelens", "jumprelu-step"),
    ("saelens", "jumprelu-tanh"),
    ("saelens", "jumprelu-target"),
    ("saelens", "topk"),
    ("saelens", "batchtopk"),
    ("dictionary_learning", "jumprelu-target"),
    ("dictionary_learning", "batchtopk"),
]
# The 3-value LR sweep: every saelab variant in SAELAB_LR_SWEEP and these peer variants (the
# others run at their default LR only: a 2-core CPU has no time for 40+ runs in one session).
SAELAB_LR_SWEEP = {"jumprelu", "topk"}
PEER_LR_SWEEP = {("saelens", "jumprelu-step"), ("sparsify", "topk")}


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def train_saelab(args, train_x: torch.Tensor, held: torch.Tensor, rows: Path) -> None:
    """Phase 1: each saelab variant at its default LR and the two sweep neighbours."""
    done = {r["name"] for r in read_rows(rows)}
    manifest = read_manifest(Path(args.cache))["config"]
    # Every variant at its default LR first (but the last), then the sweep neighbours.
    variants = [(v, a, o) for v, a, o in SAELAB_VARIANTS if v in args.variants]
    defaults = [(v, a, o, 1.0) for v, a, o in variants]
    sweep = [
        (v, a, o, f) for v, a, o in variants if v in SAELAB_LR_SWEEP
        for f in LR_FACTORS if f != 1.0
    ]  # fmt: skip
    plan = defaults[:-1] + sweep + defaults[-1:]
    for variant, arch, options, factor in plan:
        name = f"saelab-{variant}-lr{factor:g}x"
        if name in done:
            continue
        sae = saelab.create_sae(
            arch, train_x.shape[1], args.width, seed=args.seed, **options,
            model_name=manifest["model"], hook_name=manifest["hooks"][0],
            context_size=manifest["context_size"],
        )  # fmt: skip
        base = TrainConfig(total_tokens=args.tokens, seed=args.seed)
        lr = recipe_for(sae.cfg, base).lr * factor
        config = TrainConfig(total_tokens=args.tokens, seed=args.seed, lr=lr)
        start = time.perf_counter()
        saelab.train(sae, train_x, config)
        seconds = time.perf_counter() - start
        metrics = saelab.evaluate(sae, held)
        sae.save(args.out / "saes" / name)
        append_row(rows, {
            "name": name, "library": "saelab", "version": saelab.__version__,
            "variant": variant, "lr": lr, "lr_factor": factor, "default": factor == 1.0,
            "batch_size": config.batch_size, "tokens": args.tokens, "width": args.width,
            "l0": metrics["l0"], "fvu": metrics["fvu"],
            "dead_fraction": metrics["dead_fraction"],
            "dense_fraction": metrics["dense_fraction"], "seconds": seconds,
            "settings": sae.cfg.to_dict(),
        })  # fmt: skip
        print(f"{name}: L0 {metrics['l0']:.1f} FVU {metrics['fvu']:.4f} "
              f"dead {metrics['dead_fraction']:.3f} {seconds:.0f}s", flush=True)  # fmt: skip


def train_peers(args, rows: Path) -> None:
    """Phase 2: each peer variant through benchmarks/peers.py at its default LR, then (for
    the variants in PEER_LR_SWEEP) at 0.5× and 2× of it."""
    python = Path(args.bench_venv) / "bin" / "python"
    out = args.out / "peer-rows.jsonl"
    for library, variant in PEERS:
        factors = LR_FACTORS if (library, variant) in PEER_LR_SWEEP else (1.0,)
        default_lr = None
        for factor in sorted(factors, key=lambda f: f != 1.0):  # the default LR first
            name = f"{library}-{variant}-lr{factor:g}x"
            done = {r["name"]: r for r in read_rows(rows)}
            if name in done:
                default_lr = default_lr or done[name]["lr"] / factor
                continue
            lr = [] if factor == 1.0 else ["--lr", str(default_lr * factor)]
            before = len(read_rows(out))
            subprocess.run(
                [str(python), "benchmarks/peers.py", "--cache", args.cache,
                 "--heldout", args.heldout, "--library", library, "--variant", variant,
                 *lr, "--tokens", str(args.tokens), "--width", str(args.width), "--k", "32",
                 "--target-l0", "32", "--heldout-tokens", str(args.heldout_tokens),
                 "--seed", str(args.seed), "--out", str(out),
                 "--export", str(args.out / "saes" / name)],
                check=True,
            )  # fmt: skip
            peer = read_rows(out)[before]
            default_lr = default_lr or peer["lr"]
            append_row(rows, peer | {"name": name, "lr_factor": factor, "default": factor == 1.0})


def evaluate_lm(args, rows: Path, deltas: Path) -> None:
    """Phase 3: Δ LM loss of every saved SAE on the same held-out tokens."""
    from saelab.data.corpora import load_corpus
    from saelab.evals.multi import EvalTarget, evaluate_targets
    from saelab.evals.settings import EvalSettings
    from saelab.lm.loading import load_model

    have = json.loads(deltas.read_text()) if deltas.exists() else {}
    pending = [r["name"] for r in read_rows(rows) if r["name"] not in have]
    if not pending:
        return
    manifest = read_manifest(Path(args.cache))["config"]
    corpus = load_corpus(
        manifest["corpus"], text_field=manifest["text_field"],
        dataset_split=manifest["dataset_split"], heldout_fraction=manifest["heldout_fraction"],
    )  # fmt: skip
    settings = EvalSettings(corpus, args.eval_tokens, manifest["context_size"], batch_size=8)
    lm = load_model(manifest["model"], device="cpu", dtype="float32")
    hook = manifest["hooks"][0]
    targets = [
        EvalTarget(n, saelab.load_sae(args.out / "saes" / n), hook, args.out / "saes" / n,
                   args.out / "evals" / f"{n}.json")
        for n in pending
    ]  # fmt: skip
    docs, failures = evaluate_targets(lm, manifest["model"], targets, settings)
    for name, doc in docs.items():
        have[name] = doc["metrics"]["model_behavior"]
    deltas.write_text(json.dumps(have, indent=1))
    for name, error in failures.items():
        print(f"{name}: Δ LM loss failed: {error}", file=sys.stderr)


def best_rows(rows: list[dict]) -> list[dict]:
    """Per (library, variant): the LR-sweep member with the lowest held-out FVU."""
    best: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["library"], r["variant"])
        if key not in best or r["fvu"] < best[key]["fvu"]:
            best[key] = r
    return list(best.values())


def table(rows: list[dict], deltas: dict) -> str:
    """Markdown table: every run, best LR per variant marked."""
    best = {r["name"] for r in best_rows(rows)}
    lines = [
        "| library | variant | LR | best | L0 | FVU | dead | Δ LM loss | CE rec. | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["library"], r["variant"], r["lr"])):
        d = deltas.get(r["name"], {})
        delta = f"{d['delta_lm_loss']:.4f}" if "delta_lm_loss" in d else "–"
        rec = f"{d['ce_loss_recovered']:.3f}" if "ce_loss_recovered" in d else "–"
        lines.append(
            f"| {r['library']} | {r['variant']} | {r['lr']:.2e}{' (default)' * r['default']} "
            f"| {'✓' if r['name'] in best else ''} | {r['l0']:.1f} | {r['fvu']:.4f} "
            f"| {r['dead_fraction']:.1%} | {delta} | {rec} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def pareto_plot(rows: list[dict], path: Path) -> None:
    """L0 vs FVU, best LR per variant, one marker per library."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"saelab": "o", "saelens": "s", "dictionary_learning": "^", "sparsify": "D"}
    for r in best_rows(rows):
        ax.scatter(r["l0"], r["fvu"], marker=markers.get(r["library"], "x"), s=40)
        ax.annotate(f"{r['library']}:{r['variant']}", (r["l0"], r["fvu"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("held-out L0")
    ax.set_ylabel("held-out FVU")
    ax.set_title("SAE quality at equal tokens (best LR per variant)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check(rows: list[dict]) -> list[str]:
    """Issue 15's acceptance on saelab's default-LR runs; returns the failures."""
    by = {(r["library"], r["variant"], r["lr_factor"]): r for r in rows}
    jump, topk = by.get(("saelab", "jumprelu", 1.0)), by.get(("saelab", "topk", 1.0))
    if jump is None or topk is None:
        return ["saelab jumprelu and topk default runs are missing"]
    failures = []
    if abs(jump["l0"] - 32) > 0.2 * 32:
        failures.append(f"JumpReLU L0 {jump['l0']:.1f} is not within 20% of 32")
    if jump["dead_fraction"] > 0.10:
        failures.append(f"JumpReLU dead fraction {jump['dead_fraction']:.1%} > 10%")
    if jump["fvu"] > 1.1 * topk["fvu"]:
        failures.append(f"JumpReLU FVU {jump['fvu']:.4f} > 1.1 × TopK's {topk['fvu']:.4f}")
    topk_best = min(r["fvu"] for r in rows if r["library"] == "saelab" and r["variant"] == "topk")
    if topk["fvu"] > 1.1 * topk_best:
        failures.append(f"TopK default FVU {topk['fvu']:.4f} > 1.1 × its best {topk_best:.4f}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="Training activation cache folder.")
    parser.add_argument("--heldout", required=True, help="Held-out activation cache folder.")
    parser.add_argument("--out", type=Path, required=True, help="Results folder (resumable).")
    parser.add_argument("--tokens", type=int, default=500_000, help="Training tokens per SAE.")
    parser.add_argument("--heldout-tokens", type=int, default=50_000, help="Held-out rows.")
    parser.add_argument("--eval-tokens", type=int, default=8192, help="Δ LM loss tokens.")
    parser.add_argument("--width", type=int, default=4096, help="Latents per SAE.")
    parser.add_argument("--seed", type=int, default=0, help="Init and data-order seed.")
    parser.add_argument("--peers", action="store_true", help="Also train the peer libraries.")
    parser.add_argument("--bench-venv", default=".venv-bench", help="The peers' venv.")
    parser.add_argument("--skip-saelab", action="store_true", help="Skip saelab's phase.")
    parser.add_argument(
        "--variants",
        type=lambda text: text.split(","),
        default=[v for v, _, _ in SAELAB_VARIANTS],
        help="saelab variants to train, comma-separated (default: all).",
    )
    parser.add_argument("--skip-lm", action="store_true", help="Skip the Δ LM loss phase.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (saelab).")
    parser.add_argument("--check", action="store_true", help="Exit 1 unless acceptance holds.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows_path, deltas_path = args.out / "rows.jsonl", args.out / "deltas.json"
    if not args.skip_saelab:
        train_x = load_rows(args.cache, args.tokens)
        held = load_rows(args.heldout, args.heldout_tokens)
        train_saelab(args, train_x, held, rows_path)
        del train_x
    if args.peers:
        train_peers(args, rows_path)
    if not args.skip_lm:
        evaluate_lm(args, rows_path, deltas_path)
    rows = read_rows(rows_path)
    deltas = json.loads(deltas_path.read_text()) if deltas_path.exists() else {}
    (args.out / "table.md").write_text(table(rows, deltas))
    pareto_plot(rows, args.out / "pareto.png")
    print(table(rows, deltas))
    if args.check:
        failures = check(rows)
        for f in failures:
            print(f"check failed: {f}", file=sys.stderr)
        sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
