import collections
import json
import logging
import pickle
import random

import numpy as np
import pytest
import torch

from bilevel_rl import checkpoint as ck
from bilevel_rl.checkpoint import (
    CheckpointError,
    CorruptCheckpointError,
    LegacyCheckpointError,
    newest_intact_checkpoint,
    read_checkpoint,
    write_checkpoint,
)

Pair = collections.namedtuple("Pair", "a b")


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(5, 3, generator=g)).sum().backward()
    opt.step()
    base = torch.randn(4, 6, generator=g, dtype=torch.float64)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    shared = {"k": torch.ones(2)}
    return {
        "model": net.state_dict(),
        "shared1": shared,
        "shared2": shared,
        "optim": opt.state_dict(),
        "base": base,
        "view": base.t()[::2],  # non-contiguous view sharing base's storage
        "scalar": torch.tensor(3.5),
        "ints": torch.arange(5, dtype=torch.int8),
        "flags": torch.tensor([True, False]),
        "bf16": torch.ones(2, dtype=torch.bfloat16),
        "grad": torch.zeros(2, requires_grad=True),
        "on_device": [torch.full((2,), i, device=d) for i, d in enumerate(devices)],
        "numpy": {"obs": np.arange(12, dtype=np.uint8).reshape(3, 4), "r": np.float32(1.5)},
        "tuple": (1, torch.ones(1), "x"),
        "named": Pair(torch.zeros(1), [None, 2.0]),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "iteration": 7,
    }


def _assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.device, a.shape, a.stride(), a.requires_grad) == (
            b.dtype,
            b.device,
            b.shape,
            b.stride(),
            b.requires_grad,
        )
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_keeps_values_types_views_and_rng(tmp_path):
    state = _state()
    path = write_checkpoint(tmp_path, 100, state)
    assert path == tmp_path / "checkpoints" / "step_0000000100"
    back = read_checkpoint(path)
    _assert_same(state, back)
    assert back["model"]._metadata == state["model"]._metadata  # state-dict versions survive
    assert back["shared1"] is back["shared2"]  # objects shared in the tree stay shared
    assert back["view"].untyped_storage().data_ptr() == back["base"].untyped_storage().data_ptr()
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    torch.set_rng_state(back["rng"]["torch"])
    draws = (random.random(), np.random.rand(), torch.rand(1))
    ck.restore_rng(state["rng"])
    assert draws == (random.random(), np.random.rand(), torch.rand(1))


def test_tensors_file_is_weights_only_and_manifest_describes_files(tmp_path):
    path = write_checkpoint(tmp_path, 3, _state())
    tensors = torch.load(path / "tensors.pt", weights_only=True)
    assert isinstance(tensors, list) and all(isinstance(t, torch.Tensor) for t in tensors)
    assert len(tensors) >= 15

    def no_tensor(obj):
        if isinstance(obj, dict):
            return all(no_tensor(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return all(no_tensor(v) for v in obj)
        return not isinstance(obj, torch.Tensor)

    with (path / "state.pkl").open("rb") as f:
        assert no_tensor(pickle.load(f))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["version"] == ck.FORMAT_VERSION and manifest["step"] == 3
    for name in ("tensors.pt", "state.pkl"):
        assert manifest["files"][name]["bytes"] == (path / name).stat().st_size
        assert manifest["files"][name]["sha256"] == ck._sha256(path / name)


def test_rotation_keeps_the_newest(tmp_path):
    for step in (5, 40, 300, 2000):
        write_checkpoint(tmp_path, step, {"step": step}, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000000300", "step_0000002000"]
    assert (root / "latest").read_text() == "step_0000002000"
    assert newest_intact_checkpoint(tmp_path)[1] == {"step": 2000}
    write_checkpoint(tmp_path, 1000, {"step": 1000}, keep=1)  # resumed from an older one: the newer ones go
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000001000"]


def _truncate_tensors(p):
    data = (p / "tensors.pt").read_bytes()
    (p / "tensors.pt").write_bytes(data[: len(data) // 2])


def _garble_state(p):
    data = bytearray((p / "state.pkl").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    (p / "state.pkl").write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated tensors.pt": (_truncate_tensors, "tensors.pt has"),
    "garbled state.pkl": (_garble_state, "state.pkl does not match its sha256"),
    "empty state.pkl": (lambda p: (p / "state.pkl").write_bytes(b""), "state.pkl is empty"),
    "deleted manifest": (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
    "garbled manifest": (lambda p: (p / "manifest.json").write_text("{"), "manifest.json is unreadable"),
    "stale latest pointer": (lambda p: ck.shutil.rmtree(p), "does not exist"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_latest_is_reported_and_skipped(tmp_path, caplog, kind):
    damage, why = CORRUPTIONS[kind]
    write_checkpoint(tmp_path, 1, {"step": 1, "w": torch.ones(3)})
    newest = write_checkpoint(tmp_path, 2, {"step": 2, "w": torch.ones(3) * 2, "pad": np.zeros(100)})
    damage(newest)
    with pytest.raises(CorruptCheckpointError) as err:
        read_checkpoint(newest)
    assert "\n" not in str(err.value) and str(newest) in str(err.value) and why in str(err.value)
    with caplog.at_level(logging.WARNING, logger=ck.__name__):
        path, state = newest_intact_checkpoint(tmp_path)
    assert path.name == "step_0000000001" and state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {newest} is corrupt ({err.value.reason}); trying an older one"
    ]


def test_undecodable_file_with_matching_checksum_is_corrupt(tmp_path):
    path = write_checkpoint(tmp_path, 1, {"a": 1})
    (path / "state.pkl").write_bytes(b"not a pickle")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["state.pkl"] = {"bytes": 12, "sha256": ck._sha256(path / "state.pkl")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptCheckpointError, match="does not load although its checksums match") as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value)


def test_all_corrupt_or_none_raises_one_line(tmp_path, caplog):
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*checkpoints \(0 corrupt\)$"):
        newest_intact_checkpoint(tmp_path)
    for step in (1, 2):
        _garble_state(write_checkpoint(tmp_path, step, {"x": np.arange(50), "t": torch.ones(2)}))
    with caplog.at_level(logging.WARNING, logger=ck.__name__), pytest.raises(CheckpointError) as err:
        newest_intact_checkpoint(tmp_path)
    assert not isinstance(err.value, CorruptCheckpointError)
    assert str(err.value) == (f"checkpoint.resume_from: no intact checkpoint in {tmp_path / 'checkpoints'} (2 corrupt)")
    assert len(caplog.records) == 2


def test_kill_mid_write_leaves_previous_checkpoint_usable(tmp_path, caplog, monkeypatch):
    write_checkpoint(tmp_path, 1, {"step": 1})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.pickle, "dump", killed)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, 2, {"step": 2, "t": torch.ones(2)})
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert (root / ".tmp_step_0000000002" / "tensors.pt").exists()
    with caplog.at_level(logging.WARNING, logger=ck.__name__):
        path, state = newest_intact_checkpoint(tmp_path)
    assert (path.name, state, caplog.records) == ("step_0000000001", {"step": 1}, [])
    write_checkpoint(tmp_path, 3, {"step": 3})
    assert not list(root.glob(".tmp_step_*"))


def test_missing_or_garbled_pointer_does_not_matter(tmp_path, caplog):
    for step in (1, 2):
        write_checkpoint(tmp_path, step, {"step": step})
    pointer = tmp_path / "checkpoints" / "latest"
    with caplog.at_level(logging.WARNING, logger=ck.__name__):
        pointer.unlink()
        assert newest_intact_checkpoint(tmp_path)[1] == {"step": 2}
        pointer.write_text("../../etc")
        assert newest_intact_checkpoint(tmp_path)[1] == {"step": 2}
    assert caplog.records == []


def _legacy_checkpoint(run_dir, step):
    """A checkpoint as the manifest-less writer of earlier versions left it (tensors.pt + state.pkl)."""
    path = run_dir / "checkpoints" / f"step_{step:010d}"
    path.mkdir(parents=True)
    torch.save({"torch_rng": torch.get_rng_state()}, path / "tensors.pt")
    (path / "state.pkl").write_bytes(pickle.dumps({"iteration": 2}))
    (run_dir / "checkpoints" / "latest").write_text(path.name)
    return path


def test_legacy_checkpoint_is_recognised_and_refused(tmp_path, caplog):
    path = _legacy_checkpoint(tmp_path, 4)
    with pytest.raises(LegacyCheckpointError, match="older bilevel_rl without a manifest") as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING, logger=ck.__name__), pytest.raises(CheckpointError) as err2:
        newest_intact_checkpoint(tmp_path)
    assert str(err2.value).endswith("(0 corrupt, 1 written by an older bilevel_rl without a manifest)")
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {path} is legacy ({err.value.reason}); trying an older one"
    ]
