"""`saelab sweep`: train architectures × sparsity in lockstep, evaluate every SAE, tabulate, plot.

Resumable at every stage: training continues from its checkpoint (a finished run is loaded,
not redone), and an SAE whose eval.json already holds the same eval settings is not evaluated
again. The table and plots are rebuilt from the eval.json files each time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saelab.data.cache_format import read_manifest
from saelab.data.corpora import Corpus, load_corpus
from saelab.evals.command import EVAL_FILE
from saelab.evals.multi import EvalTarget, evaluate_targets
from saelab.evals.pareto import save_pareto_plots
from saelab.evals.settings import EvalSettings, same_settings
from saelab.evals.sweep_table import sweep_row, write_csv, write_markdown
from saelab.formats.saelens import CFG_FILE, WEIGHTS_FILE
from saelab.lm.dtypes import dtype_name, parse_dtype
from saelab.sae import SAE
from saelab.train.pipeline import CONFIG_FILE, _warn, member_layout, run_training
from saelab.train.run_config import TOPK_ARCHS, RunConfig

SWEEP_FILE = "sweep.yaml"  # the eval settings, reused by --resume unless flags override them
CSV_FILE = "sweep.csv"
MARKDOWN_FILE = "sweep.md"
PLOTS_DIR = "plots"
EVAL_DEFAULTS: dict[str, Any] = {
    "tokens": 8192,
    "corpus": None,
    "batch_size": 8,
    "context_size": None,
}


@dataclass
class PlannedMember:
    """One SAE of the sweep: how it was configured and where its files are."""

    name: str
    hook: str
    arch: str
    sparsity: float | None
    k: int | None
    directory: Path
    target_hook: str | None = None  # a transcoder's: where it is spliced in (SPEC §2.6)

    @property
    def spliced(self) -> str:
        return self.target_hook or self.hook

    @property
    def sae_dir(self) -> Path:
        return self.directory / "sae"

    @property
    def eval_file(self) -> Path:
        return self.directory / EVAL_FILE


@dataclass
class SweepResult:
    """What a sweep produced: table rows, failed evaluations (name → error), files written."""

    out: Path
    rows: list[dict[str, Any]]
    failures: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    title: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "run": str(self.out),
            "rows": self.rows,
            "failed": self.failures,
            "files": self.files,
        }


def plan_members(cfg: RunConfig) -> list[PlannedMember]:
    """Every SAE of cfg's sweep, in training order, with its λ or k."""
    layout = member_layout(cfg, Path(cfg.out))
    return [
        PlannedMember(
            name,
            hook,
            arch,
            None if arch in TOPK_ARCHS else sparsity,
            options.get("k"),
            directory,
            cfg.target_hook,
        )
        for (name, directory), (hook, arch, options, sparsity) in zip(
            layout, cfg.sweep(), strict=True
        )
    ]


def resolve_eval_options(out: Path, given: dict[str, Any], resume: bool) -> dict[str, Any]:
    """Eval options: the flags given, else (on --resume) those stored in sweep.yaml, else defaults."""
    stored: dict[str, Any] = {}
    path = out / SWEEP_FILE
    if resume and path.is_file():
        stored = (yaml.safe_load(path.read_text()) or {}).get("eval", {})
        unknown = sorted(set(stored) - set(EVAL_DEFAULTS))
        if unknown:
            raise ValueError(
                f"{path}: unknown eval option(s) {unknown}; valid: {sorted(EVAL_DEFAULTS)}"
            )
    options = EVAL_DEFAULTS | stored | {k: v for k, v in given.items() if v is not None}
    for key in ("tokens", "batch_size"):
        if options[key] < 1:
            raise ValueError(f"eval_{key}: must be ≥ 1, got {options[key]}")
    if options["context_size"] is not None and options["context_size"] < 2:
        raise ValueError(
            f"eval_context_size: must be ≥ 2 (BOS + text), got {options['context_size']}"
        )
    return options


def eval_settings(cfg: RunConfig, options: dict[str, Any]) -> EvalSettings:
    """Held-out tokens: --eval-corpus, else the training corpus (a cache's recorded corpus)."""
    cache = read_manifest(Path(cfg.cache))["config"] if cfg.cache else None
    corpus: Corpus
    if options["corpus"] is not None:
        corpus = load_corpus(options["corpus"])
    elif cache is not None:
        corpus = load_corpus(
            cache["corpus"], text_field=cache["text_field"], dataset_split=cache["dataset_split"],
            heldout_fraction=cache["heldout_fraction"],
        )  # fmt: skip
    else:
        corpus = load_corpus(cfg.corpus)
    trained_context = cache["context_size"] if cache is not None else cfg.context_size
    return EvalSettings(
        corpus=corpus,
        tokens=options["tokens"],
        context_size=options["context_size"] or trained_context,
        batch_size=options["batch_size"],
    )


def load_trained(members: list[PlannedMember]) -> dict[str, SAE] | None:
    """Every member's final SAE, or None when training has not finished (some are missing)."""
    from saelab.formats.load import load_sae

    if not all((m.sae_dir / CFG_FILE).is_file() for m in members):
        return None
    try:
        return {m.name: load_sae(m.sae_dir) for m in members}
    except (ValueError, OSError):  # e.g. a cfg.json cut short by a kill while saving
        return None


def _reusable(member: PlannedMember, wanted: dict[str, Any]) -> bool:
    """Whether the member's eval.json has the wanted settings and is newer than its weights."""
    try:
        report = json.loads(member.eval_file.read_text())
        newer = member.eval_file.stat().st_mtime >= (member.sae_dir / WEIGHTS_FILE).stat().st_mtime
    except (OSError, ValueError):
        return False
    return newer and same_settings(report.get("eval_config", {}), wanted)


def train_or_load(
    cfg: RunConfig,
    members: list[PlannedMember],
    *,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    warn: Callable[[str], None],
) -> dict[str, SAE]:
    """The trained SAEs by name: loaded when a resumed run already finished, else trained."""
    saes = load_trained(members) if resume else None
    if saes is not None:
        log(f"training of {cfg.out} already finished: loaded {len(saes)} SAE(s)")
        return saes
    run_training(cfg, resume=resume, progress=progress, log=log, warn=warn)
    saes = load_trained(members)
    if saes is None:
        raise OSError(f"training finished but the SAEs of {cfg.out} could not be loaded")
    return saes


def run_sweep(
    cfg: RunConfig,
    eval_options: dict[str, Any],
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = _warn,
) -> SweepResult | None:
    """Train (or resume) cfg's sweep, evaluate every SAE on the same held-out tokens, write
    sweep.csv, sweep.md and the Pareto plots at cfg.out. None on non-main DDP ranks.

    warn gets the training's one-line warnings (as in run_training)."""
    out = Path(cfg.out)
    if not resume and (out / CONFIG_FILE).exists():
        raise FileExistsError(
            f"{out} already holds a run; use --resume {out} or choose another --out"
        )
    members = plan_members(cfg)
    options = resolve_eval_options(out, eval_options, resume)
    settings = eval_settings(cfg, options)  # bad eval options fail before any training
    if os.environ.get("RANK", "0") != "0":  # torchrun: every rank trains, rank 0 does the rest
        if not (resume and load_trained(members) is not None):
            run_training(cfg, resume=resume, progress=progress, log=log, warn=warn)
        return None
    out.mkdir(parents=True, exist_ok=True)
    (out / SWEEP_FILE).write_text(yaml.safe_dump({"eval": options}, sort_keys=False))
    saes = train_or_load(cfg, members, resume=resume, progress=progress, log=log, warn=warn)

    first = saes[members[0].name].cfg
    model_name = first.model_name or cfg.model
    device = cfg.train_config(None, None).device
    dtype = dtype_name(parse_dtype(cfg.model_dtype))
    wanted = {
        m.name: settings.eval_config(model_name, m.spliced, device, dtype, m.hook) for m in members
    }
    pending = [m for m in members if not _reusable(m, wanted[m.name])]
    failures: dict[str, str] = {}
    if pending:
        log(
            f"evaluating {len(pending)} of {len(members)} SAE(s) on {settings.tokens:,} held-out tokens"
        )
        failures = _evaluate(pending, saes, model_name, device, cfg.model_dtype, settings, log)
    else:
        log(f"all {len(members)} SAE(s) already evaluated with these settings")
    rows = [
        sweep_row(m.name, m.hook, m.arch, m.sparsity, m.k, json.loads(m.eval_file.read_text()))
        for m in members
        if m.name not in failures and _reusable(m, wanted[m.name])
    ]
    short = sorted({row["n_tokens"] for row in rows if row["n_tokens"] < settings.tokens})
    if short:
        log(
            f"Warning: the held-out split of {settings.corpus.spec} had only {short[0]:,} of the "
            f"{settings.tokens:,} requested tokens; use a larger --eval-corpus for tighter numbers"
        )
    title = (
        f"{model_name} · d_sae {first.d_sae:,} · {cfg.tokens:,} training tokens · "
        f"{min((r['n_tokens'] for r in rows), default=0):,} held-out tokens of {settings.corpus.spec}"
    )
    return SweepResult(out, rows, failures, write_outputs(out, rows, title), title)


def write_outputs(out: Path, rows: list[dict[str, Any]], title: str) -> dict[str, str]:
    """sweep.csv, sweep.md and the Pareto plots at the run root; returns {kind: path}."""
    files = {
        "csv": write_csv(out / CSV_FILE, rows),
        "markdown": write_markdown(out / MARKDOWN_FILE, rows, title),
    }
    for path in save_pareto_plots(rows, out / PLOTS_DIR, title):
        files[path.name.replace(".", "_")] = path
    return {kind: str(path) for kind, path in files.items()}


def _evaluate(
    pending: list[PlannedMember],
    saes: dict[str, SAE],
    model_name: str,
    device: str,
    model_dtype: str,
    settings: EvalSettings,
    log: Callable[[str], None],
) -> dict[str, str]:
    """Load the LM once and evaluate the pending members; returns failures (name → error)."""
    from saelab.lm.hooks import resolve_hook
    from saelab.lm.loading import load_model

    lm = load_model(model_name, device=device, dtype=model_dtype)
    for hook in {h for m in pending for h in (m.hook, m.spliced)}:
        resolve_hook(lm.model, hook)
    targets = [EvalTarget(m.name, saes[m.name], m.spliced, m.sae_dir, m.eval_file) for m in pending]
    _, failures = evaluate_targets(lm, model_name, targets, settings, log)
    return failures
