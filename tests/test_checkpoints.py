"""Models on disk: MFD model files, and the checkpoints a run folder keeps of every node's
model as a run goes (issue 14, item 1: "models and policies are checkpointed periodically")."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mfd_core import PacketError, load_model, load_model_meta, save_model
from mfd_core import runfolder
from mfd_core.runfolder import RunFolder
from mfd_core.runtime.launch import run_on
from mfd_core.runtime.recipe import scenario_recipe

from tests.helpers import tiny


def a_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"w": torch.randn(3, 5), "half": torch.randn(4).half(), "brain": torch.randn(2).bfloat16(),
            "steps": torch.tensor([7, -3], dtype=torch.int64), "mask": torch.tensor([True, False, True]),
            "empty": torch.zeros(0, 4)}


def test_a_model_file_gives_back_exactly_what_was_saved(tmp_path: Path) -> None:
    state = a_state()
    path = save_model(tmp_path / "sub" / "m.mfdm", state, meta={"time": 2.5})
    back = load_model(path)
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    assert load_model_meta(path) == {"time": 2.5}
    assert [p.name for p in path.parent.iterdir()] == ["m.mfdm"]  # no partial file left behind


@pytest.mark.parametrize("damage", ["truncate", "append", "flip", "foreign", "empty"])
def test_a_damaged_or_foreign_file_is_refused_with_its_path(tmp_path: Path, damage: str) -> None:
    path = save_model(tmp_path / "m.mfdm", a_state())
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:-7]
    elif damage == "append":
        raw += b"\0"
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0x10
    elif damage == "foreign":
        raw = bytearray(b"PK\x03\x04 a zip, say") + raw
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(PacketError, match=str(path)):
        load_model(path)


def test_a_simulated_run_checkpoints_the_models_its_nodes_serve(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runfolder, "CHECKPOINT_EVERY_S", 0.0)  # every measurement after the first
    scenario = tiny("mfd", duration=2.0, eval_interval=0.5, topology={"nodes": 3})
    folder = RunFolder(tmp_path / "run", "core", command=["test"], scenario={}, plan=[("mfd", 0)])
    calls, served_at_end = [], {}

    def checkpoint(t, models, final):
        saved = folder.checkpoint("mfd", 0, t, models, final=final)
        calls.append((t, final, saved))
        if final:
            served_at_end.update(models())

    run_on(scenario_recipe(scenario, seed=0), "sim", checkpoint=checkpoint)
    assert calls[-1][1:] == (True, True) and calls[-1][0] == pytest.approx(2.0)
    assert [saved for _, final, saved in calls if not final][0] is False  # the first only starts the clock
    assert sum(saved for _, _, saved in calls) >= 3
    where = tmp_path / "run" / "checkpoints" / "mfd" / "seed0"
    note = json.loads((where / "checkpoint.json").read_text())
    assert note["final"] is True and note["nodes"] == [0, 1, 2] and note["time"] == pytest.approx(2.0)
    for node, state in served_at_end.items():
        back = load_model(where / f"node{node}.mfdm")
        assert list(back) == list(state) and all(torch.equal(back[k], v) for k, v in state.items())
        assert load_model_meta(where / f"node{node}.mfdm")["node"] == node


def test_checkpoints_wait_their_interval(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runfolder, "CHECKPOINT_EVERY_S", 3600.0)
    folder = RunFolder(tmp_path / "run", "core", command=["test"], scenario={}, plan=[("mfd", 0)])
    asked = []

    def models():
        asked.append(1)
        return {0: {"w": torch.ones(2)}}

    assert [folder.checkpoint("mfd", 0, t, models) for t in (1.0, 2.0, 3.0)] == [False, False, False]
    assert asked == []  # nothing is gathered for a save that does not happen
    assert folder.checkpoint("mfd", 0, 4.0, models, final=True) is True
    assert torch.equal(load_model(tmp_path / "run" / "checkpoints" / "mfd" / "seed0" / "node0.mfdm")["w"],
                       torch.ones(2))
