"""GoogLeNet region classifier: construction, ImageNet-weight loading, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import GoogLeNet

from detector.classifier import (
    CheckpointError,
    build_googlenet,
    checkpoint_metadata,
    load_checkpoint,
    load_members,
    save_checkpoint,
)
from detector.core.config import IMAGENET_MEAN, IMAGENET_STD
from detector.core.structures import ClassList
from detector.warp import WarpSettings

torch.set_num_threads(1)
CLASSES = ClassList(["n01", "n02", "n03"], ["cat", "dog", "fish"])
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def warp(size: int = 224, pad: int = 16) -> WarpSettings:
    return WarpSettings(size=size, context_pad=pad, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def meta_of(size: int = 224, member: int = 0, seed: int = 0) -> dict:
    return checkpoint_metadata(CLASSES, warp(size), config_digest="", member=member, seed=seed)


def _model(seed: int = 0, outputs: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_googlenet(outputs).eval()


def _fake_imagenet_weights(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision-format GoogLeNet state dict (1000 classes, aux heads), random values."""
    torch.manual_seed(1)
    state = GoogLeNet(num_classes=1000, aux_logits=True, init_weights=True).state_dict()
    torch.save(state, path)
    return state


def test_build_googlenet_shapes_and_no_aux_heads() -> None:
    model = _model(outputs=5)
    assert model.aux1 is None and model.aux2 is None and not model.transform_input
    assert model.fc.out_features == 5
    assert model(X).shape == (2, 5)
    with pytest.raises(ValueError, match="num_outputs"):
        build_googlenet(1)


def test_pretrained_loads_local_weights_keeps_transform_input(tmp_path: Path) -> None:
    state = _fake_imagenet_weights(tmp_path / "googlenet.pth")
    model = build_googlenet(7, pretrained=True, weights_path=tmp_path / "googlenet.pth")
    assert model.transform_input and model.fc.out_features == 7 and model.aux1 is None
    torch.testing.assert_close(model.conv1.conv.weight, state["conv1.conv.weight"])
    torch.testing.assert_close(
        model.inception5b.branch4[1].conv.weight, state["inception5b.branch4.1.conv.weight"]
    )
    with pytest.raises(ValueError, match="transform_input"):
        build_googlenet(
            7, pretrained=True, transform_input=False, weights_path=tmp_path / "googlenet.pth"
        )


def test_channels_last_transform_input_equals_torchvision(tmp_path: Path) -> None:
    ours = build_googlenet(6, transform_input=True).eval()
    theirs = GoogLeNet(num_classes=6, aux_logits=False, transform_input=True, init_weights=False)
    theirs.load_state_dict(ours.state_dict())
    theirs.eval()
    with torch.inference_mode():
        torch.testing.assert_close(ours(X), theirs(X), rtol=1e-5, atol=1e-6)


def test_missing_imagenet_weights_error_or_fallback(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_googlenet(4, pretrained=True, weights_path=missing)
    model = build_googlenet(4, pretrained=True, weights_path=missing, if_missing="random")
    assert not model.transform_input


def test_safetensors_round_trip(tmp_path: Path) -> None:
    model = _model()
    meta = checkpoint_metadata(CLASSES, warp(64, 8), config_digest="abc", member=2, seed=7)
    path = save_checkpoint(tmp_path / "sub" / "m.safetensors", model, meta)
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp file left
    loaded, got = load_checkpoint(path, classes=CLASSES)
    assert not loaded.training
    assert got["num_outputs"] == 4 and got["input_size"] == 64 and got["context_pad"] == 8
    assert got["classes"] == {"wnids": CLASSES.wnids, "names": CLASSES.names}
    assert got["member"] == 2 and got["seed"] == 7 and got["config_digest"] == "abc"
    assert got["transform_input"] is False
    with torch.inference_mode():
        torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)


def test_torch_pt_round_trip_weights_only(tmp_path: Path) -> None:
    model = _model(outputs=4)
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    torch.save(
        {"state_dict": model.state_dict(), "metadata": {"input_size": 64}}, tmp_path / "wrapped.pth"
    )
    bare, meta = load_checkpoint(tmp_path / "bare.pt")
    assert meta == {"num_outputs": 4, "transform_input": False}
    wrapped, meta = load_checkpoint(tmp_path / "wrapped.pth")
    assert meta["input_size"] == 64
    with torch.inference_mode():
        torch.testing.assert_close(bare(X), model(X), rtol=0, atol=0)
        torch.testing.assert_close(wrapped(X), model(X), rtol=0, atol=0)


def test_mismatches_raise_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    path = save_checkpoint(tmp_path / "m.safetensors", _model(outputs=4), meta_of())
    five = ClassList([f"n{i}" for i in range(5)], [f"c{i}" for i in range(5)])
    with pytest.raises(CheckpointError, match="expected 6 outputs .* found 4"):
        load_checkpoint(path, classes=five)
    with pytest.raises(CheckpointError, match="3 classes"):
        save_checkpoint(tmp_path / "bad.safetensors", _model(outputs=5), meta_of())
    state = _model().state_dict()
    state["conv1.conv.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="shape.pt: weights do not fit"):
        load_checkpoint(tmp_path / "shape.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")


def test_load_members_agree_or_fail(tmp_path: Path) -> None:
    paths = [
        save_checkpoint(
            tmp_path / f"member_{i}.safetensors",
            _model(i),
            meta_of(64, member=i, seed=i),
        )
        for i in range(2)
    ]
    models, meta = load_members(paths)
    assert len(models) == 2 and meta["input_size"] == 64
    assert [m["seed"] for m in meta["members"]] == [0, 1]
    other = save_checkpoint(tmp_path / "other.safetensors", _model(), meta_of(96))
    with pytest.raises(CheckpointError, match="input_size differs"):
        load_members([paths[0], other])
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_members([])


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    return save_checkpoint(folder / "good.safetensors", _model(), meta_of())


def _tampered(src: Path, dst: Path, meta_update: dict | None = None, tensors=None) -> Path:
    """``src`` rewritten with some metadata fields replaced, or a tensor edited in place."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["detector"])
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta.update(meta_update or {})
    if tensors is not None:
        tensors(state)
    save_file(state, str(dst), metadata={"detector": json.dumps(meta)})
    return dst


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_size", "abc"),
        ("input_size", 0),
        ("input_size", True),
        ("context_pad", -3),
        ("context_pad", 200),  # not below input_size / 2
        ("mean", [1]),
        ("mean", "abc"),
        ("std", [0, 0.2, 0.2]),
        ("std", [0.2, -1, 0.2]),
        ("std", [0.2, float("nan"), 0.2]),
        ("classes", ["n01", "n02", "n03"]),
        ("classes", {"wnids": ["n01", "n02", "n03"]}),
        ("classes", {"wnids": [1, 2, 3], "names": ["a", "b", "c"]}),
        ("num_outputs", "4"),
        ("transform_input", "yes"),
    ],
)
def test_bad_metadata_is_a_checkpoint_error_naming_file_and_field(
    good_checkpoint, tmp_path, field, value
) -> None:
    bad = _tampered(good_checkpoint, tmp_path / "bad.safetensors", {field: value})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    msg = str(info.value)
    assert msg.startswith(f"{bad}: ") and f"'{field}'" in msg and "\n" not in msg


def test_bad_metadata_of_one_member_names_that_member(good_checkpoint, tmp_path) -> None:
    bad = _tampered(good_checkpoint, tmp_path / "bad.safetensors", {"input_size": "abc"})
    with pytest.raises(CheckpointError, match=f"^{bad}: metadata 'input_size'"):
        load_members([good_checkpoint, bad])


def test_non_finite_weights_are_a_checkpoint_error(good_checkpoint, tmp_path) -> None:
    good = good_checkpoint

    def poison(state):
        state["fc.weight"][0, 0] = float("nan")

    bad = _tampered(good, tmp_path / "nan.safetensors", tensors=poison)
    with pytest.raises(CheckpointError, match=r"nan.safetensors: tensor 'fc.weight' holds NaN"):
        load_checkpoint(bad)
    state = _model().state_dict()
    state["inception3a.branch1.bn.running_var"][:] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    with pytest.raises(
        CheckpointError, match=r"inf.pt: tensor 'inception3a.branch1.bn.running_var'"
    ):
        load_checkpoint(tmp_path / "inf.pt")


def test_a_member_with_another_class_count_is_refused(tmp_path) -> None:
    three = save_checkpoint(tmp_path / "m3.safetensors", _model(outputs=4), meta_of())
    four = ClassList(["n01", "n02", "n03", "n04"], list("abcd"))
    meta4 = checkpoint_metadata(four, warp(), config_digest="", member=1, seed=1)
    other = save_checkpoint(tmp_path / "m4.safetensors", _model(outputs=5), meta4)
    torch.save(_model(outputs=5).state_dict(), tmp_path / "bare4.pt")
    for odd in (other, tmp_path / "bare4.pt"):
        with pytest.raises(CheckpointError, match=r"members must agree") as info:
            load_members([three, odd])
        assert str(info.value).startswith(f"{odd}: ")
