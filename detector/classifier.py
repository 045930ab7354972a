"""The GoogLeNet region classifier (classes + background) and its checkpoints.

A checkpoint is one safetensors file: the model's state dict plus a JSON metadata string
(under the safetensors metadata key ``"detector"``) saying what the weights expect:

    {"format": "inception-rcnn/region-classifier", "version": 1, "arch": "googlenet",
     "num_outputs": 201, "classes": {"wnids": [...], "names": [...]},
     "input_size": 224, "context_pad": 16, "mean": [...], "std": [...],
     "transform_input": true, "config_digest": "...", "member": 0, "seed": 0, ...}

``.pt``/``.pth`` files load too (``torch.load(weights_only=True)``: a bare state dict, or
``{"state_dict": ..., "metadata": {...}}``), so torchvision-style checkpoints can be used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import GoogLeNet, GoogLeNet_Weights

from detector.core.checkpoints import (
    WARP_RULES,
    CheckpointError,
    Rule,
    check_finite,
    check_metadata,
    imagenet_weights_path,
    is_int,
    load_state_strict,
    load_weights_only,
    read_safetensors,
    write_safetensors,
)
from detector.core.config import IMAGENET_MEAN, IMAGENET_STD
from detector.core.structures import ClassList
from detector.warp import WarpSettings

FORMAT = "inception-rcnn/region-classifier"
METADATA_KEY = "detector"
# What the ImageNet weights expect: torchvision maps mean/std-normalised input back to the
# [-1, 1] scaling of the original (Caffe-trained, then converted) weights.
_TI_SCALE = tuple(s / 0.5 for s in IMAGENET_STD)
_TI_SHIFT = tuple((m - 0.5) / 0.5 for m in IMAGENET_MEAN)
# torchvision GoogLeNet's layers from the input to the global average pool, in order.
TRUNK = (
    "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
    "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e",
    "maxpool4", "inception5a", "inception5b", "avgpool",
)  # fmt: skip
# Metadata that every member of an ensemble must share.
SHARED_KEYS = ("num_outputs", "classes", "input_size", "context_pad", "mean", "std")


def _is_class_list(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    wnids, names = value.get("wnids"), value.get("names")
    lists = isinstance(wnids, list) and isinstance(names, list) and len(wnids) == len(names)
    return lists and all(isinstance(v, str) for v in (*wnids, *names))


# What each metadata field must hold (checked on loading: checkpoints are untrusted).
METADATA_RULES: dict[str, Rule] = {
    **WARP_RULES,
    "num_outputs": ("an integer >= 2", lambda v: is_int(v, 2)),
    "context_pad": ("an integer >= 0", lambda v: is_int(v, 0)),
    "classes": ("a mapping with equal-length string lists 'wnids' and 'names'", _is_class_list),
    "member": ("an integer", is_int),
    "seed": ("an integer", is_int),
}


class RegionGoogLeNet(GoogLeNet):
    """torchvision's GoogLeNet whose ``transform_input`` keeps the channels_last layout.

    torchvision implements the input transform with ``torch.cat`` of channel slices, which
    returns NCHW and silently drops the CPU fast path; here it is one per-channel affine
    (identical values). The state dict is torchvision's (the constants are not saved).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("ti_scale", torch.tensor(_TI_SCALE).view(1, 3, 1, 1), False)
        self.register_buffer("ti_shift", torch.tensor(_TI_SHIFT).view(1, 3, 1, 1), False)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:
            return x * self.ti_scale + self.ti_shift
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features of the crops, ``fc``'s input: float[N, 1024].

        torchvision's trunk in its own order (aux heads and dropout act only in training), so
        ``self.fc(self.features(x))`` is the eval-mode ``self(x)`` (tested).
        """
        x = self._transform_input(x)
        for name in TRUNK:
            x = getattr(self, name)(x)
        return torch.flatten(x, 1)


def build_googlenet(
    num_outputs: int,
    *,
    pretrained: bool = False,
    transform_input: bool | None = None,
    weights_path: str | Path | None = None,
    if_missing: str = "error",
) -> nn.Module:
    """GoogLeNet with a ``num_outputs``-way classifier (classes + 1 background), no aux heads.

    This is ``torchvision.models.googlenet``, which differs from the paper's Table 1: batch
    normalisation after every convolution (the paper has none; it used local response
    normalisation after the stem instead), and the "5x5" branch of each inception module is a
    3x3 convolution (a known quirk of the torchvision port). The auxiliary classifiers are
    dropped (the pretrained ones are untrained anyway). 6.6 M parameters, 1.5 G multiply-adds
    at 224 x 224.

    Args:
        num_outputs: K + 1 outputs, column 0 the background.
        pretrained: start from ``GoogLeNet_Weights.IMAGENET1K_V1`` taken from ``weights_path``
            or the torch hub cache. Nothing is ever downloaded here.
        transform_input: map mean/std-normalised input to the [-1, 1] scale. None = True
            exactly when ImageNet weights are loaded; False together with them is an error
            (the weights would see wrongly scaled input).
        weights_path: a local copy of the ImageNet weights (a torchvision ``.pth``).
        if_missing: when pretrained weights are not available: "error" raises
            FileNotFoundError, "random" falls back to random initialisation.
    Returns:
        a :class:`RegionGoogLeNet` in train mode.
    """
    if num_outputs < 2:
        raise ValueError(f"num_outputs must be >= 2 (classes + background), got {num_outputs}")
    if if_missing not in ("error", "random"):
        raise ValueError(f"if_missing must be 'error' or 'random', got {if_missing!r}")
    state = _imagenet_state_dict(weights_path, if_missing) if pretrained else None
    if state is not None and transform_input is False:
        raise ValueError("transform_input=False with ImageNet weights: they expect it on")
    use_ti = bool(transform_input) if transform_input is not None else state is not None
    model = RegionGoogLeNet(
        num_classes=num_outputs,
        aux_logits=False,
        transform_input=use_ti,
        init_weights=state is None,
    )
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2.", "fc."))}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if set(missing) != {"fc.weight", "fc.bias"} or unexpected:
            raise CheckpointError(
                f"ImageNet GoogLeNet weights do not fit: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        # R-CNN's initialisation of the new classifier layer.
        nn.init.normal_(model.fc.weight, std=0.01)
        nn.init.zeros_(model.fc.bias)
    return model


def _imagenet_state_dict(
    weights_path: str | Path | None, if_missing: str
) -> dict[str, torch.Tensor] | None:
    path = Path(weights_path) if weights_path else imagenet_weights_path()
    if not path.is_file():
        if if_missing == "random":
            return None
        raise FileNotFoundError(
            f"{path}: GoogLeNet ImageNet weights not found (nothing is downloaded here; fetch "
            f"{GoogLeNet_Weights.IMAGENET1K_V1.url} into the torch hub cache or pass a path)"
        )
    return load_weights_only(path)


def checkpoint_metadata(
    classes: ClassList,
    warp: WarpSettings,
    *,
    config_digest: str,
    member: int,
    seed: int,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata dict :func:`save_checkpoint` expects (``extra`` keys are kept as given)."""
    return {
        "classes": {"wnids": list(classes.wnids), "names": list(classes.names)},
        "input_size": int(warp.size),
        "context_pad": int(warp.context_pad),
        "mean": [float(v) for v in warp.mean],
        "std": [float(v) for v in warp.std],
        "config_digest": config_digest,
        "member": int(member),
        "seed": int(seed),
        **extra,
    }


def warp_from_metadata(metadata: dict[str, Any], fallback: WarpSettings) -> WarpSettings:
    """The warp the members were trained with; ``fallback`` fills what bare state dicts lack."""

    def pick(key: str, default: Any) -> Any:
        return metadata.get(key) if metadata.get(key) is not None else default

    return WarpSettings(
        size=int(pick("input_size", fallback.size)),
        context_pad=int(pick("context_pad", fallback.context_pad)),
        mean=tuple(pick("mean", fallback.mean)),
        std=tuple(pick("std", fallback.std)),
    )


def classes_from_metadata(metadata: dict[str, Any]) -> ClassList | None:
    """The :class:`ClassList` stored in checkpoint metadata, or None when absent."""
    c = metadata.get("classes")
    return ClassList(list(c["wnids"]), list(c["names"])) if c else None


def save_checkpoint(path: str | Path, model: nn.Module, metadata: dict[str, Any]) -> Path:
    """Write ``model``'s weights and ``metadata`` as one safetensors file, atomically.

    ``num_outputs``, ``transform_input``, ``arch`` and ``format`` are filled in from the
    model; a class list that does not match ``num_outputs - 1`` is an error.
    """
    path = Path(path)
    meta = dict(metadata)
    num_outputs = int(model.fc.out_features)
    meta.update(
        format=FORMAT,
        version=1,
        arch="googlenet",
        num_outputs=num_outputs,
        transform_input=bool(getattr(model, "transform_input", False)),
    )
    classes = classes_from_metadata(meta)
    if classes is not None and len(classes) + 1 != num_outputs:
        raise CheckpointError(
            f"{path}: {len(classes)} classes + background != {num_outputs} model outputs"
        )
    return write_safetensors(path, model.state_dict(), METADATA_KEY, meta)


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    classes: ClassList | None = None,
    num_outputs: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a region classifier in eval mode on ``device``, with its metadata.

    Args:
        path: a safetensors checkpoint (:func:`save_checkpoint`) or a ``.pt``/``.pth`` file.
        classes, num_outputs: what the caller expects; a mismatch is a CheckpointError.
    Returns:
        (model, metadata); for a bare state dict the metadata holds only ``num_outputs``
        (from the weights) and ``transform_input`` (False).
    """
    path = Path(path)
    state, meta = _read_checkpoint(path)
    _check_metadata(path, meta)
    if "fc.weight" not in state:
        raise CheckpointError(f"{path}: no fc.weight: not a GoogLeNet region classifier")
    found = int(state["fc.weight"].shape[0])
    expected = meta.get("num_outputs", found)
    _expect(path, "outputs (fc.weight rows)", expected, found)
    meta.setdefault("num_outputs", found)
    meta.setdefault("transform_input", False)
    stored = classes_from_metadata(meta)
    if stored is not None:
        _expect(path, "outputs (its metadata's classes + background)", len(stored) + 1, found)
    if num_outputs is not None:
        _expect(path, "outputs", num_outputs, found)
    if classes is not None:
        _expect(path, "outputs (classes + background)", len(classes) + 1, found)
        if stored is not None and stored.wnids != classes.wnids:
            raise CheckpointError(f"{path}: class list differs from the expected one")
    model = RegionGoogLeNet(
        num_classes=found,
        aux_logits=False,
        transform_input=bool(meta["transform_input"]),
        init_weights=False,
    )
    state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    load_state_strict(model, state, path, "GoogLeNet")
    return model.to(device).eval(), meta


def load_members(
    paths: Sequence[str | Path], device: str | torch.device = "cpu"
) -> tuple[list[nn.Module], dict[str, Any]]:
    """Load ensemble members; all must agree on classes, input size and normalisation.

    Returns:
        (models, metadata): the first member's metadata, with ``members`` listing each one's
        ``member``/``seed``/path.
    """
    if not paths:
        raise CheckpointError("no checkpoints given for the ensemble")
    models, metas = zip(*(load_checkpoint(p, device) for p in paths), strict=True)
    first = metas[0]
    for p, meta in zip(paths[1:], metas[1:], strict=True):
        for key in SHARED_KEYS:
            a, b = first.get(key), meta.get(key)
            if a is not None and b is not None and a != b:
                raise CheckpointError(
                    f"{p}: {key} differs from {paths[0]} "
                    f"({_short(b)} vs {_short(a)}): members must agree"
                )
    merged = dict(first)
    for key in SHARED_KEYS:  # a bare state dict leaves gaps the others can fill
        merged[key] = next((m[key] for m in metas if m.get(key) is not None), None)
    merged["members"] = [
        {"path": str(p), "member": m.get("member"), "seed": m.get("seed")}
        for p, m in zip(paths, metas, strict=True)
    ]
    return list(models), merged


def _check_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Types and ranges of the metadata fields; the warp's size must exceed twice its pad."""
    check_metadata(path, meta, METADATA_RULES)
    size, pad = meta.get("input_size"), meta.get("context_pad")
    if size is not None and pad is not None and size <= 2 * pad:
        raise CheckpointError(
            f"{path}: metadata 'context_pad' {pad} must be below half of 'input_size' {size}"
        )


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if path.suffix in (".pt", ".pth"):
        return _read_torch(path)
    return read_safetensors(path, METADATA_KEY)


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    obj = load_weights_only(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        state, meta = obj["state_dict"], dict(obj.get("metadata") or {})
    else:
        state, meta = obj, {}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    check_finite(path, state)
    return dict(state), meta


def _expect(path: Path, what: str, expected: Any, found: Any) -> None:
    if expected != found:
        raise CheckpointError(f"{path}: expected {expected} {what}, found {found}")


def _short(value: Any) -> str:
    if isinstance(value, dict) and "wnids" in value:
        return f"{len(value['wnids'])} classes"
    return repr(value)
