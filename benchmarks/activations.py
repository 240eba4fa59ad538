"""Benchmark: activation generation with early stop vs a full HF forward, and cache read throughput.

    .venv/bin/python benchmarks/activations.py [--model gemma-3-270m] [--hook blocks.6.hook_resid_post]

Generation: the same packed python-stdlib contexts go through (a) LanguageModel.activations,
which stops after the hook's layer, and (b) a plain full forward with output_hidden_states=True
(all layers + LM head); batches alternate between (a) and (b) so both see the same machine load,
and the two outputs are checked to be identical. Cache: a cache is written with `write_cache`
and read back through ActivationStore.from_cache (sha256-verified shards, shuffled batches);
reads come from the OS page cache when the file was just written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from saelab.data import ActivationStore, ContextStream, load_corpus, write_cache
from saelab.lm import load_model


def _hidden_index(hook: str) -> int:
    """hidden_states index equal to a resid_post hook (layer + 1)."""
    layer, kind = hook.split(".")[1:]
    if kind != "hook_resid_post":
        raise SystemExit("the full-forward comparison needs a hook_resid_post hook")
    return int(layer) + 1


def bench_generation(lm, hook: str, batches: list[torch.Tensor]) -> dict:
    """Tokens/s of early-stopped hook capture vs full forward, alternating per batch."""
    index = _hidden_index(hook)
    lm.activations(batches[0], hook)  # warm-up both paths
    with torch.inference_mode():
        lm.model(batches[0], output_hidden_states=True)
    times = {"early_stop": 0.0, "full_forward": 0.0}
    for batch in batches:
        start = time.perf_counter()
        ours = lm.activations(batch, hook)[hook]
        times["early_stop"] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode():
            full = lm.model(batch, output_hidden_states=True).hidden_states[index]
        times["full_forward"] += time.perf_counter() - start
        if not torch.equal(ours, full):
            raise AssertionError("early-stopped activations differ from the full forward's")
    tokens = sum(batch.numel() for batch in batches)
    rates = {name: tokens / seconds for name, seconds in times.items()}
    return {
        "tokens": tokens,
        "early_stop_tok_s": rates["early_stop"],
        "full_forward_tok_s": rates["full_forward"],
        "speedup": rates["early_stop"] / rates["full_forward"],
    }


def bench_cache(
    lm, hook: str, corpus, tokens: int, context_size: int, batch_size: int, read_epochs: int
) -> dict:
    """Write a cache (LM included), then read it back through the store `read_epochs` times."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "cache"
        start = time.perf_counter()
        cache = write_cache(
            lm, hook, corpus, out, tokens, context_size=context_size, batch_size=batch_size
        )
        write_s = time.perf_counter() - start
        nbytes = sum(shard["files"][hook]["bytes"] for shard in cache.shards)
        store = ActivationStore.from_cache(cache, batch_size=4096, epochs=read_epochs, device="cpu")
        start = time.perf_counter()
        read = sum(len(batch) for batch in store)
        read_s = time.perf_counter() - start
    return {
        "cache_tokens": tokens,
        "read_tokens": read,
        "cache_mb": nbytes / 1e6,
        "write_tok_s": tokens / write_s,
        "read_tok_s": read / read_s,
        "read_mb_s": nbytes * read_epochs / 1e6 / read_s,
    }


def _cpu_name() -> str:
    """CPU model name from /proc/cpuinfo (falls back to platform.machine())."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    """Parse options, run both benchmarks, print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--hook", default="blocks.6.hook_resid_post")
    parser.add_argument("--contexts", type=int, default=48, help="contexts for the generation test")
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="contexts per forward pass")
    parser.add_argument("--cache-tokens", type=int, default=1 << 14)
    parser.add_argument(
        "--read-epochs", type=int, default=8, help="passes over the cache when reading"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()

    start = time.perf_counter()
    lm = load_model(args.model, device="cpu")
    load_s = time.perf_counter() - start
    corpus = load_corpus("python-stdlib")
    stream = ContextStream(corpus, lm.tokenizer, args.context_size)
    batches = [stream.next_batch(args.batch_size) for _ in range(args.contexts // args.batch_size)]
    results = {
        "model": args.model,
        "hook": args.hook,
        "machine": f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "load_s": load_s,
        **bench_generation(lm, args.hook, batches),
        **bench_cache(
            lm,
            args.hook,
            corpus,
            args.cache_tokens,
            args.context_size,
            args.batch_size,
            args.read_epochs,
        ),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
