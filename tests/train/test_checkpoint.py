"""Checkpoints: safetensors + JSON (no pickle), exact round trip, atomic writes, planted files."""

import math
import pickle

import pytest
import torch

import saelab
from saelab.train.checkpoint import load_latest_checkpoint, read_checkpoint, save_checkpoint
from saelab.train.trainer import Lockstep


def _payload(marker):
    """Pickle bytes whose unpickling runs code (it creates `marker`)."""

    class Exploit:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    return pickle.dumps(Exploit())


def _assert_same(a, b, where="state"):
    """Equal values of equal types all the way down (tensors: dtype, shape and bits)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def _lockstep(x):
    cfg = saelab.TrainConfig(total_tokens=1200, batch_size=100, lr=1e-3, seed=5, log_every=4)
    saes = [saelab.create_sae("jumprelu", 8, 24, seed=0), saelab.create_sae("topk", 8, 24, k=4)]
    return Lockstep(saes, [cfg, cfg], x)


def test_lockstep_state_round_trips_exactly_and_training_continues_bit_exactly(tmp_path):
    x = torch.randn(450, 8)  # not a multiple of the batch: the stream carries rows across epochs
    straight = _lockstep(x)
    straight.prepare()
    for _ in range(5):
        straight.train_step()
    state = straight.state_dict()
    path = save_checkpoint(tmp_path, straight.step, {"lockstep": state, "extra": (1, None, 2.5)})
    loaded = read_checkpoint(path)
    _assert_same(loaded, {"lockstep": state, "extra": (1, None, 2.5)})
    assert loaded["lockstep"]["torch_rng"].dtype == torch.uint8
    assert sorted(loaded["lockstep"]["trainers"][0]["optimizer"]["state"]) == [0, 1, 2, 3, 4]

    resumed = _lockstep(x)
    resumed.load_state_dict(loaded["lockstep"])
    for run in (straight, resumed):
        while run.step < run.total_steps:
            run.train_step()
    for a, b in zip(straight.saes, resumed.saes, strict=True):
        for key, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[key]), key
    _assert_same(straight.latest_metrics(), resumed.latest_metrics())


def test_state_with_odd_keys_and_values_round_trips(tmp_path):
    state = {
        "ints": {0: "a", 7: [1, 2]},
        "__dunder__": {"__tensor__": "not a reference"},
        "floats": [0.1, -0.0, float("inf"), float("nan"), 1e-300],
        "big": 2**80,
        "tensors": [torch.tensor(3.5), torch.empty(0, dtype=torch.long), torch.arange(9)[2:5]],
        "flags": torch.tensor([True, False]),
    }
    _assert_same(read_checkpoint(save_checkpoint(tmp_path, 1, state)), state)
    with pytest.raises(TypeError, match="cannot store a set"):
        save_checkpoint(tmp_path, 2, {"bad": {1, 2}})


def test_only_the_newest_two_are_kept_and_no_temp_file_is_left(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"step": step})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_000000020.safetensors",
        "step_000000030.safetensors",
    ]
    state, path = load_latest_checkpoint(tmp_path)
    assert state == {"step": 30} and path.name == "step_000000030.safetensors"
    assert load_latest_checkpoint(tmp_path / "none") is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        # The text in brackets is safetensors' own parse error.
        ("step_000000099.safetensors", "unreadable checkpoint ("),
        ("step_000000099.pt", "old-format (pickled) checkpoint; saelab does not unpickle them"),
    ],
)
def test_planted_pickle_is_rejected_without_running_it(name, reason, tmp_path):
    control = tmp_path / "control"
    pickle.loads(_payload(control))  # the payload is live: unpickling it runs code
    assert control.exists()
    ckpts = tmp_path / "checkpoints"
    save_checkpoint(ckpts, 20, {"step": 20})
    marker = tmp_path / "pwned"
    (ckpts / name).write_bytes(_payload(marker))
    warnings = []
    state, path = load_latest_checkpoint(ckpts, warnings.append)
    assert not marker.exists()
    assert state == {"step": 20} and path == ckpts / "step_000000020.safetensors"
    (warning,) = warnings
    assert warning.startswith(f"{ckpts / name}: {reason}")
    assert warning.endswith("; trying the previous one") and "\n" not in warning


def test_no_loadable_checkpoint_left_is_a_one_line_error(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "step_000000020.pt").write_bytes(_payload(marker))
    (tmp_path / "step_000000040.safetensors").write_bytes(b"")
    warnings = []
    with pytest.raises(ValueError) as error:
        load_latest_checkpoint(tmp_path, warnings.append)
    assert str(error.value) == (
        f"{tmp_path}: no loadable checkpoint to resume from (rejected: "
        "step_000000040.safetensors, step_000000020.pt); delete these files to restart the run "
        "from step 0, or train into a new --out"
    )
    assert len(warnings) == 2 and not marker.exists()


def test_a_safetensors_file_that_is_not_a_checkpoint_is_rejected(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "step_000000005.safetensors"))
    with pytest.raises(ValueError, match="not a saelab-checkpoint/1 file"):
        read_checkpoint(tmp_path / "step_000000005.safetensors")
