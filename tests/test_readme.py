"""The README's Python snippet runs as printed, on a tiny model instead of gemma-3-270m."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest

import saelab

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_snippet() -> str:
    """The first ```python block of the README's "## Python" section."""
    section = README.read_text().split("\n## Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_snippet_runs_as_printed(tiny_model, tmp_path, monkeypatch, capsys):
    # The only changes: a tiny random gemma3 (4 layers) for gemma-3-270m, and fewer tokens.
    substitutions = {
        '"gemma-3-270m"': repr(str(tiny_model("gemma3"))),
        '"blocks.6.hook_resid_post"': '"blocks.2.hook_resid_post"',
        "n_train, n_held_out = 4096, 512": "n_train, n_held_out = 512, 128",
    }
    code = _python_snippet()
    for printed, replacement in substitutions.items():
        assert code.count(printed) == 1, printed
        code = code.replace(printed, replacement)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    budget = [str(w.message) for w in caught if re.search("total_tokens|cycled", str(w.message))]
    assert budget == []  # the printed sizes need no rounding and no cycling of the data
    metrics = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n_tokens"] == 128
    assert {"l0", "fvu", "explained_variance", "cosine"} <= set(metrics)
    assert 0 < metrics["l0"] <= 4 * 64 and metrics["fvu"] == pytest.approx(
        1 - metrics["explained_variance"], rel=1e-6
    )
    saved = saelab.load_sae(tmp_path / "my_sae")
    assert (saved.cfg.architecture, saved.cfg.d_in, saved.cfg.d_sae) == ("jumprelu", 64, 256)
