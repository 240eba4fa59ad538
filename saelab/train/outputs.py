"""What a run writes besides checkpoints: metrics.jsonl (+ optional loggers) and curve plots."""

from __future__ import annotations

import json
from pathlib import Path

PLOTTED = ("loss", "l0", "fvu", "dead_fraction")


class MetricsWriter:
    """Appends per-step metrics to metrics.jsonl and forwards them to optional loggers."""

    def __init__(
        self, directory: Path, name: str, loggers: list[str], enabled: bool = True
    ) -> None:
        self.path = directory / "metrics.jsonl"
        self.name, self.enabled = name, enabled
        self.backends = [_make_backend(kind, directory, name) for kind in loggers]

    def truncate(self, n_lines: int) -> None:
        """Keep the first n_lines (the steps covered by the checkpoint being resumed)."""
        if self.enabled and self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)[:n_lines]
            self.path.write_text("".join(lines))

    def write(self, rows: list[dict[str, float]]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        for backend in self.backends:
            for row in rows:
                backend(row)


def _make_backend(kind: str, directory: Path, name: str):
    """A callable logging one metrics row: TensorBoard event files or wandb in offline mode."""
    if kind == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ValueError(
                "loggers: 'tensorboard' needs the tensorboard package installed"
            ) from e
        writer = SummaryWriter(log_dir=str(directory / "tensorboard"))

        def log_tb(row: dict[str, float]) -> None:
            for key, value in row.items():
                if key != "step":
                    writer.add_scalar(key, value, int(row["step"]))
            writer.flush()

        return log_tb
    try:
        import wandb
    except ImportError as e:
        raise ValueError("loggers: 'wandb' needs the wandb package installed") from e
    run = wandb.init(project="saelab", name=name, dir=str(directory), mode="offline", reinit=True)

    def log_wandb(row: dict[str, float]) -> None:
        run.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    return log_wandb


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.jsonl file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_metrics(metrics_path: Path, window: int, dead_window: int) -> dict[str, float]:
    """The end-of-run summary: L0 and FVU averaged over the last `window` steps' training
    batches, and the dead fraction (no firing in the last dead_window tokens) at the last step."""
    rows = read_metrics(metrics_path)[-window:]
    return {
        "l0": sum(r["l0"] for r in rows) / len(rows),
        "fvu": sum(r["fvu"] for r in rows) / len(rows),
        "dead_fraction": rows[-1]["dead_fraction"],
        "steps_averaged": len(rows),
        "dead_window_tokens": dead_window,
    }


def plot_training_curves(metrics_path: Path, out: Path, title: str) -> Path:
    """Loss, L0, FVU and dead fraction against step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2))
    for ax, key in zip(axes, PLOTTED, strict=True):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], lw=1)
        ax.set_title(key)
        ax.set_xlabel("step")
        if key in ("loss", "fvu"):
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
