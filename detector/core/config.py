"""Configuration: one dataclass per stage, commented defaults, YAML and KEY=VALUE overrides.

The dataclass defaults are the paper's setup (``configs/ilsvrc2014.yaml`` restates them);
YAML files only override. Unknown keys and wrong types are errors naming the dotted key.
This module is the only place that reads configuration: components take plain keyword
arguments, and builders turn a stage's dataclass into them with ``dataclasses.asdict``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detector.core.digests import settings_digest
from detector.core.messages import one_line

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = "demo"  # configs/demo.yaml: the embedded demo, used when no --config is given


# The normalisation torchvision's ImageNet weights expect (RGB, [0, 1] scale).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """A bad key or value in a config file or override; the message names the key."""


MESSAGE_VALUE_CHARS = 100  # untrusted values are cut to about this many characters in messages


def short_repr(value: Any, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, saying how long it was: error
    messages echo untrusted input (a 50 MB token must not become a 50 MB message)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} chars" if isinstance(value, str) else f"{len(text)} chars as text"
    return f"{text[:limit]}... ({size})"


@dataclass
class DataConfig:
    root: str = ""  # dataset root (ILSVRC DET: the 2014 distribution's folders or the repack's Data/, Annotations/, ImageSets/); "" = the embedded demo (detector.resolve)
    format: str = "ilsvrc"  # ilsvrc | coco | voc
    train_split: str = "val1+train_pos"  # R-CNN's training set: val1 + train_N (N = train_pos_boxes); parts joined by '+': val, test, val1, val2, train_pos[_<N>], or a list in the repack's ImageSets/DET/ (docs/PROTOCOLS.md, "ILSVRC splits")
    train_pos_boxes: int = 1000  # N of a plain 'train_pos' part: per class, train_pos images up to N ground-truth boxes of it
    train_part: bool = False  # also take train_part_X images (some X unboxed) into train_pos parts
    missing_xml: str = "error"  # a val / train_pos image without XML: error (naming it) | skip (left out, counted by --dry-run)
    val_split: str = "val"  # split scored by `python -m eval.map` and validation during training
    classes: str = ""  # map_det.txt / det_classes.tsv / meta_det.mat; "" = the tree's devkit/data/map_det.txt, map_det.txt or ILSVRC2014_devkit/data/meta_det.mat, else the 200 shipped ILSVRC classes
    blacklist: str = "ilsvrc2014"  # "<val.txt index> <wnid>" lines; "ilsvrc2014" = the shipped 2014 val blacklist; "" = none
    coco_annotations: str = ""  # format=coco: instances JSON; "{split}" = the split name
    max_pixels: int = 50_000_000  # images above this many pixels are refused (decompression bombs)
    demo_dir: str = ""  # where the demo dataset is generated; "" = <cache>/demo/v<version> (detector.core.paths.cache_root)


@dataclass
class SelectiveSearchConfig:
    enabled: bool = True
    resize_width: int = 500  # R-CNN's ILSVRC protocol: images are resized to this width first
    ks: list[int] = field(
        default_factory=lambda: [100, 200]
    )  # Felzenszwalb k (R-CNN fast: [50, 100]); doubled superpixels
    min_size_factor: float = 1.0  # Felzenszwalb min_size = factor * k (R-CNN: min_size = k)
    sigma: float = 0.8  # Felzenszwalb Gaussian smoothing
    color_spaces: list[str] = field(default_factory=lambda: ["hsv", "lab"])  # hsv | lab | rgb | ...
    strategies: list[str] = field(
        default_factory=lambda: ["color+texture+size+fill", "texture+size+fill"]
    )
    min_side: int = 20  # boxes with a side below this (in resized pixels) are dropped
    max_side: int = 5000  # the resized image's longer side is capped here (a 20x10000 strip is not upscaled to 224x112000)
    workers: int = 0  # processes computing selective search; 0 = all cores
    cache_dir: str = ""  # proposal cache; "" = <cache>/proposals, "none" = off


@dataclass
class MultiBoxConfig:
    enabled: bool = True
    checkpoint: str = ""  # trained MultiBox network (safetensors); required when enabled
    num_priors: int = 800  # K boxes predicted per image
    top_k: int = 200  # boxes kept after NMS (the paper adds back 200)
    nms_iou: float = 0.7  # class-agnostic NMS threshold
    input_size: int = 224  # whole image resized to this square
    alpha: float = 0.3  # weight of the location term in the matching cost and loss
    # training
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    pretrained_backbone: bool = True  # start from torchvision ImageNet weights when cached
    output_dir: str = "runs/multibox"
    flip: bool = True  # horizontal flip augmentation
    seed: int = 0  # k-means priors, initialisation and sampling order
    loader_workers: int = 0  # data-loading processes (0 = load in the training process)
    log_every: int = 20  # optimizer steps between JSON log lines
    bn_batches: int = 20  # batches re-run before each checkpoint to recompute BatchNorm statistics (precise BN); 0 = off


@dataclass
class ProposalsConfig:
    selective_search: SelectiveSearchConfig = field(default_factory=SelectiveSearchConfig)
    multibox: MultiBoxConfig = field(default_factory=MultiBoxConfig)


@dataclass
class ModelConfig:
    members: int = 6  # ensemble size; softmax probabilities are averaged
    input_size: int = 224  # S: crops are warped to S x S
    context_pad: int = 16  # p: boxes are enlarged by S / (S - 2p) about their centre
    checkpoints: list[str] = field(default_factory=list)  # one per member (safetensors or .pt)
    checkpoint_dir: str = ""  # alternative: member_*.safetensors found here
    pretrained: bool = True  # start training from GoogLeNet_Weights.IMAGENET1K_V1 when cached
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))  # RGB, [0, 1] scale
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class InferenceConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (detector.run, eval.map: int8 on CPUs with int8 kernels, calibrated on the list's first calibration_images images; otherwise bf16 where the CPU/GPU supports it, else fp32) | fp32 | bf16 | int8
    compile: bool = False  # torch.compile the members (one fixed chunk shape)
    backend: str = "torch"  # torch | openvino (the [openvino] extra: members converted to OpenVINO IR once, cached by weight digest; CPU; fp32, bf16 or int8)
    cascade_threshold: float = 0.1  # members 1.. score only crops whose member-0 foreground probability (1 - p_background) is >= this; the rest keep member 0's; 0 = off (the paper); tune with python -m eval.cascade
    dedup_iou: float = 0.0  # proposals whose context boxes overlap at IoU >= this share one representative crop's scores; 0 = off (the paper)
    chunk_size: int = 128  # crops scored per forward pass (bounds memory)
    nms_iou: float = 0.3  # per-class greedy NMS (R-CNN)
    score_threshold: float = 0.01  # detections below this are dropped
    max_per_class: int = 100  # per image (R-CNN on ILSVRC)
    max_detections: int = 0  # per image over all classes; 0 = no limit
    threads: int = 0  # torch intra-op threads; 0 = torch's default (all cores)
    calibration_images: int = 8  # int8: detector.run calibrates on the first N images of its list (detect_many: of its items); 0 = auto never picks int8
    vis_threshold: float = 0.5  # detector.run --save-vis draws the boxes scoring at least this
    box_regression: bool = False  # refine each proposal per class with R-CNN's box regressors before NMS (heads.checkpoint; beyond the paper)
    scorer: str = "softmax"  # softmax (the ensemble's average, the paper) | svm (R-CNN's per-class SVMs on member 0's features; heads.checkpoint)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128  # regions per mini-batch
    fg_fraction: float = 0.25  # 32 positives per 128
    fg_iou: float = 0.5  # positive: IoU >= fg_iou with a ground truth of that class
    bg_iou: float = 0.5  # background: max IoU < bg_iou
    background_from: str = "complete"  # complete: background regions only from images boxed for every class (ImageRecord.exhaustive) | all: from every image, as R-CNN's fine-tuning windows
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 0  # epochs between 10x decays; 0 = constant
    flip: bool = True  # horizontal flips
    seed: int = 0  # member i uses seed + i (different sampling and order)
    loader_workers: int = 0  # data-loading processes (0 = warp in the training process)
    output_dir: str = "runs/detector"
    val_every: int = 1  # epochs between validation mAP; 0 = never
    max_images: int = 0  # use at most this many training images; 0 = all
    precision: str = "bf16"  # fp32 | bf16 (autocast; faster with AVX-512 bf16 or AMX) | auto
    device: str = "auto"  # auto | cpu | cuda (torchrun: each rank takes cuda:LOCAL_RANK)
    max_steps: int = 0  # stop after this many mini-batches; 0 = epochs x steps per epoch


@dataclass
class HeadsConfig:
    """R-CNN's box regressors and SVMs on member 0's pooled features (``detector.heads``):
    used when inference.box_regression or inference.scorer=svm; trained by
    ``python -m detector.train --heads`` after the members."""

    checkpoint: str = ""  # the heads file; "" = heads.safetensors beside member 0
    split: str = ""  # the split whose images' proposals the heads are fitted on; "" = data.train_split (R-CNN used val1 on ILSVRC)
    max_images: int = 0  # use at most this many of them; 0 = all
    feature_norm: float = (
        20.0  # features are scaled to this mean L2 norm on the training regions (R-CNN)
    )
    negatives_per_image: int = 200  # proposals below bbox_iou kept per image (random) for the SVMs' mining pool; bounds memory
    seed: int = 0  # which negatives are kept and start the SVMs
    bbox_iou: float = 0.6  # box regression trains on proposals with IoU >= this with a ground truth of the class (R-CNN)
    bbox_alpha: float = (
        1000.0  # ridge regularisation (R-CNN's lambda on pool5; sklearn Ridge alpha)
    )
    svm_neg_iou: float = 0.3  # SVM negatives: IoU below this with every ground truth of the class; positives are the ground truths (R-CNN)
    svm_c: float = 0.001  # liblinear C (R-CNN)
    svm_pos_weight: float = 2.0  # weight of the positives' hinge loss (R-CNN)
    svm_first_negatives: int = 10  # random negatives per image in the first round
    svm_rounds: int = 3  # hard-negative mining rounds after the first: add every pool negative with margin > -1, refit


@dataclass
class EvalConfig:
    iou: float = 0.5  # Jaccard overlap for a hit (capped by the devkit's small-object rule)
    max_per_class_total: int = 30_000  # submission cap per class over the whole set (R-CNN)
    coco_check_max_images: int = 5_000  # eval.map runs the pycocotools cross-check up to this many images; above it only with --coco-check (docs/DECISIONS.md)
    output_dir: str = "runs/eval"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    proposals: ProposalsConfig = field(default_factory=ProposalsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = ""  # the YAML file this config was read from ("" = defaults)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of the settings (not the source path), stored in checkpoint metadata."""
        d = self.to_dict()
        d.pop("source", None)
        return settings_digest(d)


def resolve_config_path(name: str | Path) -> Path:
    """A path, or a bare name of a file in ``configs/`` (``demo`` -> configs/demo.yaml)."""
    p = Path(name)
    if p.exists():
        return p
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.exists():
            return candidate
    raise ConfigError(f"config file not found: {name}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (default ``configs/demo.yaml``), then ``KEY=VALUE`` overrides.

    A key given twice in one mapping of the file is an error (YAML would keep the last).
    """
    cfg = Config()
    src = resolve_config_path(path if path else DEFAULT_CONFIG)
    data = _load_yaml(src.read_text(), str(src)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: top level must be a mapping")
    _merge(cfg, data, prefix="")
    cfg.source = str(src)
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: Config, item: str) -> None:
    """Apply ``a.b.c=VALUE`` (VALUE parsed as YAML: ``ks=[50,100]``, ``enabled=false``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {short_repr(item)} is not KEY=VALUE")
    try:
        value = _load_yaml(raw, f"override {short_repr(key)}", plain_text_ok=True)
    except _NotYaml:
        value = raw  # not YAML: the text itself (a path with a colon, ...)
    nested: dict[str, Any] = {}
    node = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    _merge(cfg, nested, prefix="")


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {short_repr(key)} at line {line}")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class words that error
                break
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


class _NotYaml(Exception):
    pass


def _load_yaml(text: str, where: str, plain_text_ok: bool = False) -> Any:
    """Safe YAML with unique keys; ConfigError naming ``where`` (a file, an override).

    ``plain_text_ok``: text that is not YAML raises :class:`_NotYaml` instead."""
    if text == "":
        return "" if plain_text_ok else None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no tags run
    except _DuplicateKey as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        if plain_text_ok:
            raise _NotYaml from None
        raise ConfigError(f"{where}: not valid YAML: {one_line(e, 300)}") from None


def _merge(obj: Any, data: dict[str, Any], prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names or key == "source":
            raise ConfigError(f"unknown config key {short_repr(dotted)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} must be a mapping")
            _merge(current, value, prefix=f"{dotted}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the field's type; ints are accepted for floats, and numeric
    strings for numeric fields (YAML 1.1 reads ``1e-3``, without a dot, as a string)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r}: {short_repr(value)} is not {hint}")
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} must be a list, got {short_repr(value)}")
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key {key!r} must be null, got {short_repr(value)}")
    if hint in (int, float) and isinstance(value, str):
        value = _number_from_text(value, hint, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and value is None:
        return ""
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key {key!r} must be {hint.__name__}, got {value!r}")
    if not isinstance(value, hint):
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(
            f"config key {key!r} must be {name}, got {type(value).__name__} {short_repr(value)}"
        )
    return value


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help text with ``(default: X)`` appended where a flag has a default worth showing
    (not None, False or empty) and its help does not state one already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, [], "", argparse.SUPPRESS)
        if shown and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _number_from_text(text: str, hint: type, key: str) -> Any:
    """``"1e-3"`` -> 0.001 for a float field, ``"3"`` -> 3 for an int field; other text is
    left as it is (and then refused as the wrong type). Non-finite numbers are refused."""
    try:
        number = hint(text.strip())
    except ValueError:
        return text
    if hint is float and not math.isfinite(number):
        raise ConfigError(f"config key {key!r} must be a finite number, got {short_repr(text)}")
    return number


def add_config_args(parser: Any) -> None:
    """The ``--config FILE`` and ``KEY=VALUE`` arguments every CLI shares (parse the command
    line with :func:`parse_args`, so that overrides may stand anywhere)."""
    parser.add_argument(
        "--config",
        default=None,
        help=f"YAML file or name in configs/ (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. inference.nms_iou=0.4 model.members=2",
    )


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.\[\]]*=")


def parse_args(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that ``KEY=VALUE`` overrides may come anywhere
    among the options (argparse alone takes only the first run of them: in
    ``--split val a=1 --no-coco-check b=2`` it calls ``b=2`` unrecognised). Overrides keep
    their order on the command line; any other leftover argument is an error as usual."""
    args, rest = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    extra = [a for a in rest if takes_overrides and _OVERRIDE.match(a)]
    unknown = [a for a in rest if not (takes_overrides and _OVERRIDE.match(a))]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(short_repr(a)[1:-1] for a in unknown)}")
    if takes_overrides:
        args.overrides = [*args.overrides, *extra]
    return args
