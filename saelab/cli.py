"""The `saelab` command: one subcommand per pipeline stage (DESIGN.md "CLI")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from saelab import __version__
from saelab import cli_common as c

# Plain click help (rich_markup_mode=None): it puts a long option name on a line of its own
# where typer's rich tables cut it short at 80 columns, and wraps the help text beside it.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_show_locals=False, rich_markup_mode=None)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"saelab {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """saelab: train, evaluate and interpret sparse autoencoders on LM activations."""


@app.command()
def demo(
    out: str = typer.Option("demo_out", help="Folder for the demo's SAEs and report."),
    seed: int = typer.Option(0, help="Random seed (data, initialisation, shuffling)."),
    toy: bool = typer.Option(
        False, help="Instead: JumpReLU vs TopK on synthetic data with a known dictionary (no LM)."
    ),
) -> None:
    """End-to-end quickstart on the built-in defaults (gemma-3-270m, python-stdlib, JumpReLU)."""
    from saelab.demo import run_demo, run_toy_demo

    (run_toy_demo if toy else run_demo)(out=out, seed=seed)


@app.command()
def cache(
    model: Annotated[
        str,
        typer.Option(help="Model: alias (gemma-3-270m), local model dir, .gguf file or hub id."),
    ],
    hook: Annotated[
        list[str],
        typer.Option(
            help="Hook, TransformerLens name (e.g. blocks.6.hook_resid_post); repeatable."
        ),
    ],
    tokens: Annotated[
        int, typer.Option(help="Token positions to cache (BOS/EOS/pad not counted).")
    ],
    out: Annotated[Path, typer.Option(help="Cache folder; rerun the same command to resume it.")],
    corpus: Annotated[
        str,
        typer.Option(
            help="Corpus: python-stdlib, a local .txt/.jsonl/.parquet file or folder, a "
            "save_to_disk folder, or a datasets name (NAME or NAME:CONFIG, streamed)."
        ),
    ] = "python-stdlib",
    context_size: Annotated[
        int, typer.Option(help="Tokens per packed context, BOS included.")
    ] = 128,
    batch_size: c.BatchSize = 8,
    shard_tokens: Annotated[int, typer.Option(help="Token positions per shard file.")] = 65536,
    device: c.Device = None,
    dtype: Annotated[
        str, typer.Option(help="Storage dtype of the activations: float32, float16 or bfloat16.")
    ] = "float32",
    model_dtype: c.LmDtype = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the document order.")] = 0,
    split: Annotated[
        str, typer.Option(help="Document split: train, heldout (for evaluation) or all.")
    ] = "train",
    heldout_fraction: Annotated[
        float, typer.Option(help="Fraction of documents (chosen by content hash) held out.")
    ] = 0.05,
    include_special_tokens: Annotated[
        bool, typer.Option(help="Also cache BOS/EOS/pad positions (excluded by default).")
    ] = False,
    text_field: c.TextField = "text",
    dataset_split: Annotated[
        str, typer.Option(help="Split of a datasets corpus to read.")
    ] = "train",
    json_output: c.JsonSummary = False,
) -> None:
    """Run an LM over a corpus and write hook activations to a sharded, checksummed disk cache."""
    from saelab.data.cache_command import run_cache_command

    with c.exit_on(*c.INPUT_ERRORS):
        summary = run_cache_command(
            model=model, hooks=hook, corpus=corpus, tokens=tokens, out=out,
            context_size=context_size, batch_size=batch_size, shard_tokens=shard_tokens,
            device=device, dtype=dtype, model_dtype=model_dtype, seed=seed, split=split,
            include_special_tokens=include_special_tokens, text_field=text_field,
            dataset_split=dataset_split, heldout_fraction=heldout_fraction,
        )  # fmt: skip
    if json_output:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"Cached {summary['tokens']:,} tokens x {summary['d_in']} in {summary['shards']} "
            f"shards at {summary['out']}"
        )


@app.command("eval")
def eval_command(
    path: Annotated[
        Path,
        typer.Argument(
            help="SAE to evaluate: a saelab/SAELens directory, a run directory (with sae/), "
            "or a Gemma Scope params.npz."
        ),
    ],
    model: c.SaeModel = None,
    hook: c.SaeHook = None,
    corpus: Annotated[
        str, typer.Option(help="Corpus whose held-out split is evaluated (as in `cache`).")
    ] = "python-stdlib",
    tokens: Annotated[
        int, typer.Option(help="Evaluation tokens (BOS/EOS/pad not counted).")
    ] = 8192,
    batch_size: c.BatchSize = 8,
    context_size: c.SaeContextSize = None,
    device: c.Device = None,
    dtype: c.LmDtype = "float32",
    seed: Annotated[int, typer.Option(help="Seed of the held-out document order.")] = 0,
    out: Annotated[
        Path | None,
        typer.Option(help="eval.json path (default: PATH/eval.json, or beside an .npz)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print eval.json on stdout instead of a table.")
    ] = False,
    reuse_reference: Annotated[
        bool,
        typer.Option(
            help="Reuse the clean and zero-ablation passes of the same model, hook and eval "
            "settings from saelab's cache (saved by the first evaluation), so only the spliced "
            "pass runs; --no-reuse-reference runs all three."
        ),
    ] = True,
    probing: Annotated[
        bool,
        typer.Option(
            help="Also run sparse probing (SPEC §3): logistic probes on the top 1, 2 and 5 "
            "latents vs on the raw activation, for Python token kinds (comment, string, name, "
            "number, operator, keyword) of held-out Python source; results in eval.json "
            '"probing".'
        ),
    ] = False,
    probing_tokens: Annotated[
        int, typer.Option(help="Labelled held-out tokens for --probing.")
    ] = 8192,
    absorption: Annotated[
        bool,
        typer.Option(
            help="Also measure feature absorption on the first-letter task (SPEC §3, SAEBench's "
            "metric): letter probes on the activations of vocabulary words in spelling "
            "prompts, the letter's main latents by k-sparse probing, and the share of the "
            'probe direction other latents carry instead; results in eval.json "absorption".'
        ),
    ] = False,
    absorption_words: Annotated[
        int,
        typer.Option(
            help="Vocabulary words for --absorption (80% fit the probes, 20% are scored); each "
            "is one LM pass over about 70 prompt tokens."
        ),
    ] = 8000,
) -> None:
    """SPEC §3 metrics + spliced-LM loss on held-out text → eval.json, latent stats, density plot."""
    from rich.console import Console

    from saelab.evals.command import run_eval_command
    from saelab.evals.report import report_table

    with c.exit_on(*c.INPUT_ERRORS):
        report, written = run_eval_command(
            path=path, model=model, hook=hook, corpus=corpus, tokens=tokens,
            batch_size=batch_size, context_size=context_size, device=device, dtype=dtype,
            seed=seed, out=out, reuse_reference=reuse_reference,
            probing_tokens=probing_tokens if probing else 0,
            absorption_words=absorption_words if absorption else 0,
        )  # fmt: skip
    if report["n_tokens"] < tokens:
        typer.echo(f"Warning: the held-out split had only {report['n_tokens']:,} tokens.", err=True)
    if json_output:
        typer.echo(json.dumps(report))
    else:
        Console().print(report_table(report))
        typer.echo(f"Wrote {written} (+ latent stats and density plot beside it)")


from saelab.train.cli_train import train_command  # noqa: E402

app.command("train")(train_command)

from saelab.evals.cli_sweep import sweep_command  # noqa: E402

app.command("sweep")(sweep_command)

from saelab.interventions import cli as interventions_cli  # noqa: E402

app.command("steer")(interventions_cli.steer_command)
app.command("ablate")(interventions_cli.ablate_command)
app.command("prompt")(interventions_cli.prompt_command)
app.command("contrast")(interventions_cli.contrast_command)
app.command("attribute")(interventions_cli.attribute_command)

from saelab.formats.cli import push_command  # noqa: E402

app.command("push")(push_command)

from saelab.analysis.cli import analyze_command, neuronpedia_command  # noqa: E402
from saelab.explorer.cli import dashboard_command, serve_command  # noqa: E402

app.command("analyze")(analyze_command)
app.command("neuronpedia")(neuronpedia_command)
app.command("dashboard")(dashboard_command)
app.command("serve")(serve_command)

from saelab.autointerp.cli import explain_command  # noqa: E402

app.command("explain")(explain_command)


if __name__ == "__main__":
    app()
