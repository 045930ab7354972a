"""Reading and writing checkpoints that cannot run code.

A checkpoint is a safetensors file: tensors plus JSON metadata stored as one string under a
key of the safetensors header (``"detector"`` for region classifiers, ``"multibox"`` for
MultiBox). ``.pt``/``.pth`` files are read only with ``torch.load(weights_only=True)``.
Every error is a :class:`CheckpointError` whose message starts with the file.

Checkpoints are untrusted input: floating-point tensors must be finite
(:func:`check_finite`: a NaN weight would silently give no detections), and metadata
fields are checked against their expected types (:func:`check_metadata`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torchvision.models import GoogLeNet_Weights

from detector.core.atomic import atomic_path
from detector.core.config import short_repr
from detector.core.messages import one_line


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit; the message names the file."""


def imagenet_weights_path() -> Path:
    """Where ``torch.hub`` caches ``GoogLeNet_Weights.IMAGENET1K_V1`` (may not exist).

    Nothing is ever downloaded: pretrained weights are used only when this file is present.
    """
    name = GoogLeNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def write_safetensors(
    path: str | Path, tensors: dict[str, torch.Tensor], key: str, metadata: dict[str, Any]
) -> Path:
    """Write ``tensors`` and ``metadata`` (JSON under ``key``) atomically; returns the path."""
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={key: json.dumps(metadata)})
    return Path(path)


def read_safetensors(path: str | Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and the JSON metadata under ``key`` ({} when the file has none)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(key)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no __iter__)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({one_line(e, 300)})"
        ) from None
    check_finite(path, tensors)
    if raw is None:
        return tensors, {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: {key!r} metadata is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: {key!r} metadata is not a JSON object")
    return tensors, meta


def load_weights_only(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers, never pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors vary: report the file and the cause
        raise CheckpointError(
            f"{path}: cannot load with weights_only=True ({type(e).__name__}: {one_line(e, 300)})"
        ) from None


def save_weights_only(path: str | Path, obj: Any) -> Path:
    """``torch.save`` of tensors and plain containers, atomically (read back with
    :func:`load_weights_only`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_state_strict(model: torch.nn.Module, state: dict, path: str | Path, what: str) -> None:
    """``model.load_state_dict(state, strict=True)``; a mismatch is a CheckpointError naming
    the file and what the weights should have fit (``what``)."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit {what}: {' '.join(first[:3])}") from None


def check_finite(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Every floating-point tensor finite; else a CheckpointError naming the file and tensor."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinity")


# A metadata rule: (what the value must be, in words; a test of the value).
Rule = tuple[str, Callable[[Any], bool]]


def check_metadata(path: str | Path, meta: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Each present, non-null field of ``meta`` that ``rules`` names passes its test; else a
    one-line CheckpointError naming the file and the field (the value cut short)."""
    for key, (what, ok) in rules.items():
        value = meta.get(key)
        if value is None:
            continue
        try:
            good = bool(ok(value))
        except (TypeError, ValueError):
            good = False
        if not good:
            raise CheckpointError(
                f"{path}: metadata {key!r} must be {what}, got {short_repr(value)}"
            )


def is_int(value: Any, minimum: int | None = None) -> bool:
    """A JSON integer (not a bool), at least ``minimum``."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    return ok and (minimum is None or value >= minimum)


def finite_numbers(value: Any, length: int, positive: bool = False) -> bool:
    """A list of ``length`` finite JSON numbers (each > 0 when ``positive``)."""
    if not isinstance(value, (list, tuple)) or len(value) != length:
        return False
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return numbers and all(math.isfinite(v) and (v > 0 or not positive) for v in value)


WARP_RULES: dict[str, Rule] = {
    "input_size": ("an integer >= 1", lambda v: is_int(v, 1)),
    "mean": ("a list of 3 finite numbers", lambda v: finite_numbers(v, 3)),
    "std": ("a list of 3 finite numbers > 0", lambda v: finite_numbers(v, 3, positive=True)),
    "transform_input": ("true or false", lambda v: isinstance(v, bool)),
}
