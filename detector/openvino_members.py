"""Ensemble members run by OpenVINO instead of torch (``inference.backend=openvino``).

An optional extra (``pip install -e ".[openvino]"``: OpenVINO and NNCF, its quantizer). Each
member is converted once to OpenVINO IR with a dynamic batch (so the cascade's varying
subsets need no recompiling) and cached on disk by the digest of its weights and crop size;
an int8 member is quantized by NNCF on warped crops and cached by the digest of the weights
and of those crops. OpenVINO fuses batch norm into the convolutions and pools without
indices by itself. The IR files are the project's own cache (written atomically), never
files a user hands in.

    members = openvino_members(models, precision="bf16", size=224, threads=2)
    logits = members[0](crops)   # torch float32[N, C]; thread-safe
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detector.core.paths import cache_root

BACKENDS = ("torch", "openvino")
INSTALL_HINT = 'inference.backend=openvino needs the openvino extra: pip install -e ".[openvino]"'
# OpenVINO's names for the project's floating-point precisions (int8 runs in the IR's own types).
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
# NNCF averages the activation ranges it sees per sample: one crop per sample gave ranges
# far too narrow (demo val: max |p - p_fp32| 0.92, top-1 agreement 0.86), batches of 64 the
# ranges of the whole set (0.05 and 0.997, as torch's int8).
CALIBRATION_BATCH = 64


def check_backend(backend: str) -> str:
    """``backend`` when it is one of :data:`BACKENDS`; openvino also when it is installed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown inference.backend {backend!r}; expected one of {BACKENDS}")
    if backend == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise ValueError(INSTALL_HINT) from None
    return backend


def cache_dir() -> Path:
    """Where converted and quantized members are kept (under the project's cache root)."""
    return cache_root() / "openvino"


class OpenVinoMember:
    """One compiled member: ``float[N, 3, S, S]`` crops (torch) -> ``float32[N, C]`` logits.

    Each calling thread gets its own infer request (a request is not reentrant), so one
    member may be scored from several threads at once, as ``detect_many`` does.
    """

    def __init__(self, compiled) -> None:
        self._compiled = compiled
        self._local = threading.local()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        crops = x.detach().float().contiguous().cpu().numpy()
        request.infer({0: crops})
        # the output buffer belongs to the request and is reused by its next call: copy
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, dtype=np.float32))


def openvino_members(
    models: Sequence[nn.Module], *, precision: str, size: int, threads: int
) -> list[OpenVinoMember]:
    """fp32 or bf16 members: converted (or read from the cache) and compiled for the CPU."""
    return [_compile(_ir(model, size, None), precision, threads) for model in models]


def quantized_members(
    models: Sequence[nn.Module], crops: torch.Tensor, *, size: int, threads: int
) -> list[OpenVinoMember]:
    """int8 members: each quantized by NNCF on ``crops`` (float32[N, 3, S, S] warped crops of
    real images), or read from the cache when these weights met these crops before."""
    return [_compile(_ir(model, size, crops), "int8", threads) for model in models]


def member_digest(model: nn.Module, size: int, crops: torch.Tensor | None) -> str:
    """SHA-256 of the weights (names, dtypes, shapes, bytes), the crop size, the OpenVINO and
    NNCF versions and, for int8, the calibration recipe and crops: the cache key of a
    converted member."""
    import openvino

    h = hashlib.sha256(f"size={size};openvino={openvino.__version__}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if crops is not None:
        import nncf

        recipe = f"nncf={nncf.__version__};batch={CALIBRATION_BATCH};crops={tuple(crops.shape)}"
        h.update(recipe.encode())  # a changed recipe must not read an older IR back
        h.update(crops.float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _ir(model: nn.Module, size: int, crops: torch.Tensor | None):
    """The member's OpenVINO model, from the cache or converted (and quantized) and cached."""
    import openvino as ov

    kind = "int8" if crops is not None else "float"
    path = cache_dir() / f"{member_digest(model, size, crops)[:32]}-{kind}.xml"
    core = ov.Core()
    if path.is_file() and path.with_suffix(".bin").is_file():
        return core.read_model(path)
    ov_model = _convert(model, size)
    if crops is not None:
        ov_model = _quantize(ov_model, crops)
    _save(ov_model, path)
    return ov_model


def _convert(model: nn.Module, size: int):
    import openvino as ov

    model = model.float().eval()
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # OpenVINO traces with torch.jit
        return ov.convert_model(
            model, example_input=example, input=[ov.PartialShape([-1, 3, size, size])]
        )


def _quantize(ov_model, crops: torch.Tensor):
    """NNCF post-training quantization on batches of :data:`CALIBRATION_BATCH` crops."""
    import nncf

    samples = [c.float().contiguous().numpy() for c in crops.split(CALIBRATION_BATCH)]
    # NNCF draws progress bars on stdout for every member: the detector's own output
    # (its progress bar, the summary) is what a user reads.
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(
            ov_model,
            nncf.Dataset(samples),
            subset_size=len(samples),
            preset=nncf.QuantizationPreset.PERFORMANCE,
        )


def _save(ov_model, path: Path) -> None:
    """Write ``.xml`` + ``.bin`` atomically: the ``.xml`` appears last, so a present ``.xml``
    means a complete pair (a crash leaves only a temporary file behind)."""
    import openvino as ov

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.xml")
    try:
        ov.save_model(ov_model, tmp, compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)


def _compile(ov_model, precision: str, threads: int) -> OpenVinoMember:
    import openvino as ov

    config = {
        "INFERENCE_PRECISION_HINT": _HINTS[precision],
        "INFERENCE_NUM_THREADS": str(max(1, threads)),
        "PERFORMANCE_HINT": "LATENCY",  # one stream: a request uses every thread it is given
    }
    return OpenVinoMember(ov.Core().compile_model(ov_model, "CPU", config))
