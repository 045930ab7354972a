"""The training scaffold: process context, atomic training states, the JSON-lines log."""

from __future__ import annotations

import json

import pytest
import torch

from detector.core.checkpoints import CheckpointError
from detector.core.config import TrainConfig
from detector.core.devices import DeviceError
from detector.training import scaffold
from detector.training.scaffold import TrainLog, load_state, save_state, setup


def write_lines(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_log_truncates_this_runs_tail_only(tmp_path):
    path = tmp_path / "train_log.jsonl"
    write_lines(
        path,
        [
            {"member": 0, "step": 1, "loss": 1.0},
            {"member": 1, "step": 1, "loss": 2.0},
            {"member": 0, "step": 2, "loss": 0.9},
            {"member": 0, "step": 2, "val_mAP": 0.5},
            {"member": 1, "step": 3, "loss": 1.5},
            {"member": 0, "step": 3, "loss": 0.8},  # past the resumed step: dropped
            {"note": "no step"},
        ],
    )
    with path.open("a") as f:
        f.write('{"member": 0, "step": 4, "loss"\n')  # a line cut off by the interruption
    log = TrainLog(path, enabled=True)
    log.truncate_after(2, member=0)
    assert log.records() == [
        {"member": 0, "step": 1, "loss": 1.0},
        {"member": 1, "step": 1, "loss": 2.0},
        {"member": 0, "step": 2, "loss": 0.9},
        {"member": 0, "step": 2, "val_mAP": 0.5},
        {"member": 1, "step": 3, "loss": 1.5},
        {"note": "no step"},
    ]
    log.write(member=0, step=3, loss=0.7)
    assert log.records()[-1] == {"member": 0, "step": 3, "loss": 0.7}
    # no match: every line past the step goes (MultiBox's log); a fresh run (0) empties it
    log.truncate_after(1)
    assert [r.get("step") for r in log.records()] == [1, 1, None]
    log.truncate_after(0)
    assert log.records() == [{"note": "no step"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_log.jsonl"]  # no temporaries


def test_log_of_other_ranks_writes_nothing(tmp_path):
    path = tmp_path / "log.jsonl"
    write_lines(path, [{"step": 5}])
    log = TrainLog(path, enabled=False)
    log.write(step=6)
    log.truncate_after(0)
    assert path.read_text() == '{"step": 5}\n'
    assert TrainLog(tmp_path / "none.jsonl", enabled=True).records() == []


def test_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 7, "seed": 3}
    path = save_state(tmp_path / "sub" / "member_0.state.pt", state)
    assert sorted(p.name for p in path.parent.iterdir()) == ["member_0.state.pt"]
    back = load_state(path)
    assert back["step"] == 7 and back["seed"] == 3
    for key, value in model.state_dict().items():
        assert torch.equal(back["model"][key], value)
    fresh = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(back["optimizer"])
    buf = fresh.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(buf, opt.state_dict()["state"][0]["momentum_buffer"])


class Payload:
    """A pickled class: weights_only loading must refuse to import it."""


def test_state_that_could_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "obj": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_state(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_state(tmp_path / "missing.pt")


def test_setup_alone(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = setup(TrainConfig(device="cpu", precision="fp32"))
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (0, 1, 0, True)
    assert ctx.device == torch.device("cpu") and ctx.autocast_dtype is None
    model = torch.nn.Linear(2, 2)
    assert ctx.wrap(model) is model and scaffold.unwrap(model) is model
    value = torch.tensor(2.0)
    assert ctx.mean(value) is value and ctx.broadcast(value) is value
    ctx.barrier()
    with ctx.main_first():
        pass
    with ctx.autocast():
        assert model(torch.ones(1, 2)).dtype == torch.float32
    bf16 = setup(TrainConfig(device="cpu", precision="bf16"))
    assert bf16.precision == "bf16" and bf16.autocast_dtype == torch.bfloat16
    with pytest.raises(DeviceError, match="int8"):
        setup(TrainConfig(device="cpu", precision="int8"))


def test_is_main_process_reads_rank(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert scaffold.is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun sets both
    monkeypatch.setenv("RANK", "1")
    assert not scaffold.is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert scaffold.is_main_process()
