"""Config loading: defaults, YAML overrides, KEY=VALUE, and errors that name the key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from detector.core.config import Config, ConfigError, add_config_args, apply_override, load_config


def test_paper_config_states_the_paper_setup() -> None:
    cfg = load_config("ilsvrc2014")
    assert cfg.proposals.selective_search.ks == [100, 200]
    assert cfg.proposals.selective_search.resize_width == 500
    assert cfg.proposals.multibox.top_k == 200
    assert cfg.model.members == 6
    assert cfg.model.input_size == 224
    assert cfg.model.context_pad == 16
    assert cfg.inference.nms_iou == 0.3
    assert cfg.data.blacklist == "ilsvrc2014"


def test_rcnn_fast_preset_halves_superpixel_size() -> None:
    fast = load_config("selective_search_rcnn_fast").proposals.selective_search
    doubled = load_config("ilsvrc2014").proposals.selective_search
    assert [2 * k for k in fast.ks] == doubled.ks


def test_override_parses_yaml_values() -> None:
    cfg = load_config(
        "ilsvrc2014", ["proposals.selective_search.ks=[50,100]", "inference.nms_iou=1"]
    )
    assert cfg.proposals.selective_search.ks == [50, 100]
    assert cfg.inference.nms_iou == 1.0 and isinstance(cfg.inference.nms_iou, float)
    apply_override(cfg, "proposals.multibox.enabled=false")
    assert cfg.proposals.multibox.enabled is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.memberz=3", "'model.memberz'"),
        ("model.members=six", "'model.members'"),
        ("model.members=true", "'model.members'"),
        ("proposals.selective_search.ks=[a]", "'proposals.selective_search.ks[0]'"),
        ("model=3", "'model'"),
        ("nokey", "KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("ilsvrc2014", [override])


def test_unknown_key_in_yaml_file_names_the_key(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("inference:\n  nms_iuo: 0.4\n")
    with pytest.raises(ConfigError, match="'inference.nms_iuo'"):
        load_config(path)


def test_missing_config_file_is_an_error() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config_anywhere")


def test_digest_depends_on_settings_only(tmp_path) -> None:
    a = load_config("ilsvrc2014")
    copy = tmp_path / "copy.yaml"
    copy.write_text(Path(a.source).read_text())
    b = load_config(copy)
    assert a.digest() == b.digest()
    apply_override(b, "inference.nms_iou=0.4")
    assert a.digest() != b.digest()


def test_cli_arguments_parse_config_and_overrides() -> None:
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--config", "ilsvrc2014", "model.members=2"])
    cfg = load_config(args.config, args.overrides)
    assert isinstance(cfg, Config) and cfg.model.members == 2


def test_the_paper_config_equals_the_defaults():
    """configs/ilsvrc2014.yaml restates the dataclass defaults: nothing in it differs."""
    paper = load_config("ilsvrc2014").to_dict()
    defaults = Config().to_dict()
    paper.pop("source"), defaults.pop("source")
    assert paper == defaults


def test_the_demo_config_drops_the_ilsvrc_blacklist():
    assert load_config("demo").data.blacklist == ""


def test_numbers_yaml_reads_as_strings_are_coerced_for_numeric_fields(tmp_path) -> None:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a float field takes it as 0.001."""
    cfg = load_config("ilsvrc2014", ["inference.score_threshold=1e-3", "train.lr=5E-4"])
    assert cfg.inference.score_threshold == 0.001 and isinstance(
        cfg.inference.score_threshold, float
    )
    assert cfg.train.lr == 0.0005
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  weight_decay: 1e-4\n  epochs: '3'\n")
    cfg = load_config(path)
    assert cfg.train.weight_decay == 1e-4 and cfg.train.epochs == 3
    for bad in (
        "inference.score_threshold=abc",
        "inference.score_threshold=nan",
        "model.members=2.5",
    ):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config("ilsvrc2014", [bad])
    assert load_config("ilsvrc2014", ["data.root=1e3"]).data.root == "1e3"  # str stays str


def test_duplicate_yaml_keys_are_an_error_naming_key_and_file(tmp_path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("inference:\n  nms_iou: 0.4\n  nms_iou: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:") and "duplicate key 'nms_iou'" in msg and "line 3" in msg
    path.write_text("data:\n  root: a\ndata:\n  format: voc\n")
    with pytest.raises(ConfigError, match="duplicate key 'data'"):
        load_config(path)


def test_overrides_anywhere_among_the_options() -> None:
    from detector.core.config import parse_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--split")
    parser.add_argument("--no-coco-check", action="store_true")
    add_config_args(parser)
    argv = ["a.b=1", "--split", "val", "inference.nms_iou=0.4", "--no-coco-check", "c=2"]
    args = parse_args(parser, argv)
    assert args.overrides == ["a.b=1", "inference.nms_iou=0.4", "c=2"]
    assert args.split == "val" and args.no_coco_check
    with pytest.raises(SystemExit):
        parse_args(parser, ["a=1", "--split", "val", "stray"])


def test_every_command_line_accepts_overrides_after_an_option() -> None:
    import importlib

    for module in ("eval.map", "eval.recall", "detector.demo", "detector.train"):
        parser = importlib.import_module(module).get_args_parser()
        from detector.core.config import parse_args

        args = parse_args(
            parser, ["--config", "demo", "model.members=2", "--config", "demo", "x.y=1"]
        )
        assert args.overrides == ["model.members=2", "x.y=1"], module
    from proposals.multibox.__main__ import get_args_parser

    args = parse_args(get_args_parser(), ["train", "a=1", "--config", "demo", "b=2"])
    assert args.overrides == ["a=1", "b=2"]


def test_long_values_are_cut_in_error_messages() -> None:
    token = "x" * 5_000_000
    for override in (f"model.members={token}", f"{token}=1", token):
        with pytest.raises(ConfigError) as info:
            load_config("ilsvrc2014", [override])
        assert len(str(info.value)) < 400


def test_the_heads_preset_is_the_paper_plus_rcnn_heads():
    """Off by default (the paper); configs/ilsvrc2014_rcnn_heads.yaml turns both on, nothing else."""
    assert Config().inference.box_regression is False and Config().inference.scorer == "softmax"
    heads = load_config("ilsvrc2014_rcnn_heads")
    assert heads.inference.box_regression is True and heads.inference.scorer == "svm"
    heads.inference.box_regression, heads.inference.scorer = False, "softmax"
    paper, preset = load_config("ilsvrc2014").to_dict(), heads.to_dict()
    paper.pop("source"), preset.pop("source")
    assert preset == paper
