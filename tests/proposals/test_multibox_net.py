"""MultiBoxNet, decoding, inference and checkpoint I/O (real torch models, real files)."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from detector.core.config import IMAGENET_MEAN, IMAGENET_STD
from detector.core.structures import ProposalSource
from proposals.multibox.__main__ import main
from proposals.multibox.model import (
    BOX_SCALE,
    CheckpointError,
    MultiBox,
    MultiBoxNet,
    decode_proposals,
    save_checkpoint,
)

torch.set_num_threads(2)
PRIORS = np.array(
    [[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0.25, 0.25, 0.75, 0.75]], np.float32
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return MultiBoxNet(4, PRIORS).eval()


def test_forward_shapes_and_boxes_start_at_the_priors(net):
    with torch.no_grad():
        boxes, logits = net(torch.randn(2, 3, 64, 64))
    assert boxes.shape == (2, 4, 4) and logits.shape == (2, 4)
    # head weights start tiny: every slot begins within a few hundredths of its prior
    assert (boxes - torch.from_numpy(PRIORS)).abs().max() < 0.05
    assert torch.allclose(logits, torch.full_like(logits, -math.log(4)), atol=0.05)
    assert BOX_SCALE == 0.1


def test_decode_by_hand():
    boxes = torch.tensor(
        [
            [0.1, 0.1, 0.5, 0.5],
            [0.1, 0.1, 0.5, 0.51],  # near-duplicate of slot 0, lower score: NMS removes it
            [0.6, 0.6, 1.2, 1.0],  # sticks out: clipped to the image
            [0.3, 0.3, 0.3, 0.8],  # zero width: dropped though it scores best
        ]
    )
    logits = torch.tensor([2.0, 1.0, 0.0, 3.0])
    p = decode_proposals(boxes, logits, width=100, height=50, top_k=200, nms_iou=0.7)
    np.testing.assert_allclose(p.boxes, [[10, 5, 50, 25], [60, 30, 100, 50]], atol=1e-4)
    np.testing.assert_allclose(p.scores, [1 / (1 + math.exp(-2)), 0.5], rtol=1e-6)
    assert p.source.tolist() == [ProposalSource.MULTIBOX] * 2
    assert len(decode_proposals(boxes, logits, 100, 50, top_k=1, nms_iou=0.7)) == 1


def test_decode_empty_and_non_finite():
    assert (
        len(decode_proposals(torch.zeros(0, 4), torch.zeros(0), 10, 10, top_k=200, nms_iou=0.7))
        == 0
    )
    p = decode_proposals(
        torch.tensor([[float("nan"), 0, 1, 1]]), torch.tensor([0.0]), 10, 10, top_k=200, nms_iou=0.7
    )
    assert len(p) == 0 and p.boxes.shape == (0, 4)


def test_propose_and_batch_agree(net):
    model = MultiBox(net, input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD, top_k=3, nms_iou=0.7)
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (40, 70, 3), dtype=np.uint8),
        rng.integers(0, 256, (90, 30, 3), dtype=np.uint8),
    ]
    batch = model.propose_batch(images)
    for image, props in zip(images, batch, strict=True):
        single = model.propose(image)
        np.testing.assert_allclose(single.boxes, props.boxes, atol=1e-4)
        h, w = image.shape[:2]
        assert 1 <= len(props) <= 3
        assert (props.boxes[:, [0, 2]] <= w).all() and (props.boxes[:, [1, 3]] <= h).all()
        assert (props.boxes >= 0).all() and np.all(np.diff(props.scores) <= 0)
    assert model.propose_batch([]) == []
    with pytest.raises(ValueError, match="uint8"):
        model.propose(np.zeros((8, 8), np.uint8))


def test_checkpoint_round_trip(net, tmp_path):
    path = save_checkpoint(
        tmp_path / "mb.safetensors",
        net,
        input_size=64,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        extra={"epoch": 3},
    )
    assert not list(tmp_path.glob("*.tmp"))
    model = MultiBox.from_checkpoint(path, top_k=5, nms_iou=0.7, num_priors=4, input_size=64)
    assert model.input_size == 64 and model.top_k == 5
    torch.testing.assert_close(model.net.priors, torch.from_numpy(PRIORS))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(net(x), model.net(x), strict=True):
            torch.testing.assert_close(a, b)


def test_checkpoint_mismatches_say_what_was_expected(net, tmp_path):
    path = save_checkpoint(
        tmp_path / "mb.safetensors", net, input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    with pytest.raises(CheckpointError, match=r"num_priors=4 but num_priors=800 was expected"):
        MultiBox.from_checkpoint(path, num_priors=800, top_k=200, nms_iou=0.7)
    with pytest.raises(CheckpointError, match=r"input_size=64 but input_size=224 was expected"):
        MultiBox.from_checkpoint(path, input_size=224, top_k=200, nms_iou=0.7)
    # metadata claiming 5 priors over tensors holding 4
    tensors = load_file(str(path))
    meta = {
        "num_priors": 5,
        "input_size": 64,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
        "transform_input": False,
    }
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={"multibox": json.dumps(meta)})
    with pytest.raises(
        CheckpointError,
        match=r"bad.safetensors: tensor 'priors' has shape \(4, 4\), expected \(5, 4\)",
    ):
        MultiBox.from_checkpoint(tmp_path / "bad.safetensors", top_k=200, nms_iou=0.7)
    save_file(tensors, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a MultiBox checkpoint"):
        MultiBox.from_checkpoint(tmp_path / "plain.safetensors", top_k=200, nms_iou=0.7)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="junk.safetensors: not a readable safetensors file"):
        MultiBox.from_checkpoint(tmp_path / "junk.safetensors", top_k=200, nms_iou=0.7)
    with pytest.raises(CheckpointError, match="missing.safetensors: MultiBox checkpoint not found"):
        MultiBox.from_checkpoint(tmp_path / "missing.safetensors", top_k=200, nms_iou=0.7)


def test_pretrained_without_cache_warns_and_keeps_transform_input(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: nothing is downloaded
    with pytest.warns(UserWarning, match="not in the torch hub cache"):
        fresh = MultiBoxNet(2, pretrained=True)
    assert fresh.transform_input is False
    kept = MultiBoxNet(2, transform_input=True)
    path = save_checkpoint(
        tmp_path / "t.safetensors", kept, input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    assert MultiBox.from_checkpoint(path, top_k=200, nms_iou=0.7).net.transform_input is True


def test_propose_command(net, tmp_path, capsys):
    from PIL import Image

    path = save_checkpoint(
        tmp_path / "mb.safetensors", net, input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(tmp_path / "a.png")
    assert (
        main(["propose", "--checkpoint", str(path), "--top-k", "2", str(tmp_path / "a.png")]) == 0
    )
    rec = json.loads(capsys.readouterr().out.strip())
    assert rec["image"].endswith("a.png") and 1 <= len(rec["boxes"]) <= 2
    assert main(["propose", "--checkpoint", str(tmp_path / "none.safetensors"), "x.png"]) == 2
    assert main(["propose", "--checkpoint", str(path), str(tmp_path / "missing.png")]) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_size", "abc"),
        ("input_size", -5),
        ("num_priors", 2.5),
        ("mean", [1]),
        ("std", [0, 1, 1]),
        ("std", [1, 1, float("inf")]),
        ("transform_input", "no"),
    ],
)
def test_bad_metadata_is_a_checkpoint_error_naming_file_and_field(net, tmp_path, field, value):
    path = save_checkpoint(
        tmp_path / "mb.safetensors", net, input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    tensors = load_file(str(path))
    meta = {"num_priors": 4, "input_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1]}
    meta.update({"transform_input": False, field: value})
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"multibox": json.dumps(meta)})
    with pytest.raises(CheckpointError) as info:
        MultiBox.from_checkpoint(bad, top_k=200, nms_iou=0.7)
    msg = str(info.value)
    assert msg.startswith(f"{bad}: ") and f"'{field}'" in msg and "\n" not in msg


def test_non_finite_weights_or_priors_are_a_checkpoint_error(net, tmp_path):
    path = save_checkpoint(
        tmp_path / "mb.safetensors", net, input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    meta = {"num_priors": 4, "input_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1]}
    meta["transform_input"] = False
    for name in ("priors", "head.weight"):
        tensors = load_file(str(path))
        tensors[name].view(-1)[0] = float("nan")
        bad = tmp_path / "nan.safetensors"
        save_file(tensors, str(bad), metadata={"multibox": json.dumps(meta)})
        with pytest.raises(CheckpointError, match=rf"nan.safetensors: tensor '{name}' holds NaN"):
            MultiBox.from_checkpoint(bad, top_k=200, nms_iou=0.7)
