"""The `saelab steer`, `ablate`, `prompt` and `contrast` commands (DESIGN.md "CLI")."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from saelab import cli_common as c
from saelab.analysis.dense import DENSE_THRESHOLD, MIN_SAMPLE_TOKENS
from saelab.cli_common import Device, LmDtype, SaeHook, SaeModel

if TYPE_CHECKING:
    from saelab.interventions.commands import Target

RunOrSAE = Annotated[
    Path,
    typer.Argument(
        metavar="RUN_OR_SAE",
        help="SAE: a run directory (with sae/), a saelab/SAELens directory or a Gemma Scope "
        "params.npz.",
    ),
]
Latents = Annotated[
    list[int], typer.Option("--latent", help="Latent index to edit; repeat for several.")
]
Prompt = Annotated[str, typer.Option(help="Prompt text (BOS is prepended).")]
MaxNewTokens = Annotated[int, typer.Option(help="Tokens to generate per continuation.")]
FromPosition = Annotated[
    int | None,
    typer.Option(
        help="Edit only token positions ≥ this absolute index (BOS = 0), also in generated "
        "tokens (default: every position; BOS/EOS/pad are never edited)."
    ),
]
Features = Annotated[
    Path | None,
    typer.Option(
        help="features.sqlite with latent explanations and firing frequencies (default: the "
        "run's, if it exists)."
    ),
]
DENSE_HELP = (
    "Leave out dense (always-on) latents, those firing on more than --dense-threshold of "
    "tokens, and list them apart (JSON key `dense`). Frequencies come from the run's "
    "features.sqlite (`saelab analyze`), else are measured on {where} (at least "
    f"{MIN_SAMPLE_TOKENS} tokens; fewer: no filter)."
)
DenseThreshold = Annotated[
    float,
    typer.Option(
        help="Firing frequency (fraction of tokens) above which a latent is dense; "
        f"{DENSE_THRESHOLD:g} = fires on more than half of all tokens."
    ),
]
JsonOutput = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout instead of a table.")
]


def _report(
    run: Callable[..., Any],
    target: Target,
    table: Callable[[Any], Any],
    as_json: bool,
    **options: Any,
) -> None:
    """Print run(target, **options) as JSON or a rich table; bad input → `Error: …`, exit 1."""
    with c.exit_on(*c.INPUT_ERRORS, OSError):
        result = run(target, **options)
    if as_json:
        typer.echo(json.dumps(result.to_dict() if hasattr(result, "to_dict") else result))
        return
    from rich.console import Console

    Console().print(table(result))


def _strengths(latents: list[int], strength: list[float]) -> dict[int, float]:
    """{latent: strength}: one strength for all latents, or one per latent in order."""
    if len(strength) not in (1, len(latents)):
        raise typer.BadParameter(
            f"give one --strength for all latents or one per --latent ({len(latents)}), "
            f"got {len(strength)}",
            param_hint="--strength",
        )
    values = strength * len(latents) if len(strength) == 1 else strength
    return dict(zip(latents, values, strict=True))


def steer_command(
    path: RunOrSAE,
    latent: Latents,
    strength: Annotated[
        list[float],
        typer.Option(
            help="add: α in x + α·d_i; clamp: the value latent i is set to. One for all "
            "latents, or one per --latent in order."
        ),
    ],
    prompt: Prompt,
    max_new_tokens: MaxNewTokens = 32,
    mode: Annotated[
        str,
        typer.Option(
            help="add (x + α·d_i) or clamp (latent i := strength with the SAE in the loop and "
            "its reconstruction error kept)."
        ),
    ] = "add",
    from_position: FromPosition = None,
    sample: Annotated[
        bool, typer.Option(help="Sample (temperature 1) instead of greedy decoding.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Torch seed before each generation.")] = 0,
    model: SaeModel = None,
    hook: SaeHook = None,
    device: Device = None,
    dtype: LmDtype = "float32",
    json_output: JsonOutput = False,
) -> None:
    """Generate from a prompt with and without steering SAE latents; show both side by side."""
    from saelab.interventions.commands import Target, run_steer
    from saelab.interventions.render import steering_table

    if mode not in ("add", "clamp"):
        raise typer.BadParameter(f"{mode!r}; valid: add, clamp", param_hint="--mode")
    latents = _strengths(latent, strength)
    target = Target(path, model, hook, device, dtype)
    _report(
        run_steer, target, steering_table, json_output, latents=latents, prompt=prompt,
        mode=mode, max_new_tokens=max_new_tokens, from_position=from_position, seed=seed,
        sample=sample,
    )  # fmt: skip


def ablate_command(
    path: RunOrSAE,
    latent: Latents,
    prompt: Prompt,
    max_new_tokens: MaxNewTokens = 32,
    from_position: FromPosition = None,
    model: SaeModel = None,
    hook: SaeHook = None,
    device: Device = None,
    dtype: LmDtype = "float32",
    json_output: JsonOutput = False,
) -> None:
    """Generate with and without zeroing SAE latents (reconstruction error kept); side by side."""
    from saelab.interventions.commands import Target, run_steer
    from saelab.interventions.render import steering_table

    target = Target(path, model, hook, device, dtype)
    _report(
        run_steer, target, steering_table, json_output, latents=dict.fromkeys(latent, 0.0),
        prompt=prompt, mode="ablate", max_new_tokens=max_new_tokens, from_position=from_position,
    )  # fmt: skip


def prompt_command(
    path: RunOrSAE,
    prompt: Prompt,
    k: Annotated[int, typer.Option(help="Latents shown per token (only those that fire).")] = 5,
    exclude_dense: Annotated[
        bool,
        typer.Option(
            "--exclude-dense/--include-dense", help=DENSE_HELP.format(where="the prompt's tokens")
        ),
    ] = True,
    dense_threshold: DenseThreshold = DENSE_THRESHOLD,
    features: Features = None,
    model: SaeModel = None,
    hook: SaeHook = None,
    device: Device = None,
    dtype: LmDtype = "float32",
    json_output: JsonOutput = False,
) -> None:
    """Top SAE latents at each token of a prompt, with explanations when the run has them."""
    from saelab.interventions.commands import Target, run_prompt
    from saelab.interventions.render import prompt_table

    target = Target(path, model, hook, device, dtype)
    _report(
        run_prompt, target, prompt_table, json_output, prompt=prompt, k=k, features=features,
        exclude_dense=exclude_dense, dense_threshold=dense_threshold,
    )  # fmt: skip


def contrast_command(
    path: RunOrSAE,
    positive: Annotated[
        str,
        typer.Option(
            help="Corpus whose specific latents are wanted: a .txt file (documents separated "
            "by blank lines), .jsonl/.parquet file, folder, or datasets name."
        ),
    ],
    negative: Annotated[str, typer.Option(help="Corpus to contrast against (same forms).")],
    top: Annotated[int, typer.Option(help="Latents to report.")] = 20,
    rank_by: Annotated[
        str,
        typer.Option(
            help="Ranking: auroc (separates the corpora best), freq_diff (fires on many "
            "positive and few negative documents) or ratio (mean activation ratio)."
        ),
    ] = "auroc",
    examples: Annotated[int, typer.Option(help="Top examples per latent and corpus.")] = 3,
    max_documents: Annotated[int, typer.Option(help="Documents read per corpus.")] = 500,
    context_size: Annotated[
        int, typer.Option(help="Tokens kept per document, BOS included.")
    ] = 128,
    batch_size: Annotated[int, typer.Option(help="Documents per LM forward pass.")] = 8,
    text_field: c.TextField = "text",
    exclude_dense: Annotated[
        bool,
        typer.Option(
            "--exclude-dense/--include-dense",
            help=DENSE_HELP.format(where="each corpus's tokens (dense: above it in both)"),
        ),
    ] = True,
    dense_threshold: DenseThreshold = DENSE_THRESHOLD,
    features: Features = None,
    model: SaeModel = None,
    hook: SaeHook = None,
    device: Device = None,
    dtype: LmDtype = "float32",
    json_output: JsonOutput = False,
) -> None:
    """Rank latents by how specifically they fire on --positive vs --negative documents.

    Per latent: AUROC and one-sided Mann–Whitney p-value (BH q-value) of the per-document
    max activation, firing frequencies, mean activations and their ratio, top examples.
    """
    from saelab.interventions.commands import Target, run_contrast
    from saelab.interventions.render import contrast_table

    for name, value in (("--top", top), ("--max-documents", max_documents)):
        if value < 1:
            raise typer.BadParameter(f"must be ≥ 1, got {value}", param_hint=name)
    target = Target(path, model, hook, device, dtype)
    _report(
        run_contrast, target, contrast_table, json_output, positive=positive, negative=negative,
        top=top, rank_by=rank_by, examples=examples, max_documents=max_documents,
        context_size=context_size, batch_size=batch_size, text_field=text_field,
        features=features, exclude_dense=exclude_dense, dense_threshold=dense_threshold,
    )  # fmt: skip


def attribute_command(
    runs: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUN [RUN2 ...]",
            help="SAEs to splice in together (runs, saelab/SAELens directories or .npz), each "
            "at the hook its cfg records; a transcoder writes its target hook.",
        ),
    ],
    prompt: Prompt,
    target: Annotated[
        str,
        typer.Option(
            help="Next token whose log-probability is explained, one token (often with its "
            'leading space: " Paris").'
        ),
    ],
    metric: Annotated[
        str,
        typer.Option(
            help="logprob: m = log p(target) at the last position; logit-diff: m = "
            "logit(target) − logit(--contrast)."
        ),
    ] = "logprob",
    contrast: Annotated[
        str | None, typer.Option(help="The other token of --metric logit-diff.")
    ] = None,
    top: Annotated[int, typer.Option(help="Latents shown per position (all SAEs).")] = 3,
    edges: Annotated[
        int,
        typer.Option(
            help="With two or more SAEs: the strongest edges between consecutive SAEs to "
            "report, from one vector-Jacobian product per downstream node (0: none)."
        ),
    ] = 0,
    check: Annotated[
        int,
        typer.Option(
            help="Zero-ablate the top N latents one at a time and report the measured change "
            "of the metric beside the estimate, and their correlation (0: no check)."
        ),
    ] = 0,
    model: SaeModel = None,
    device: Device = None,
    dtype: LmDtype = "float32",
    json_output: JsonOutput = False,
) -> None:
    """Which latents cause the prediction: attribution f·∂m/∂f of every latent (SPEC §5), with
    each SAE's error node kept so the model's output is unchanged."""
    from rich.console import Console

    from saelab.interventions.commands import run_attribute
    from saelab.interventions.render import attribution_tables

    with c.exit_on(*c.INPUT_ERRORS, OSError):
        report = run_attribute(
            runs, prompt=prompt, target=target, metric=metric, contrast=contrast, top=top,
            edges=edges, check=check, model=model, device=device, dtype=dtype,
        )  # fmt: skip
    if json_output:
        typer.echo(json.dumps(report))
    else:
        Console().print(attribution_tables(report))
