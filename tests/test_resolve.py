"""The resolve step: which blacklist a dataset gets."""

from __future__ import annotations

from detector.core.config import load_config
from detector.datasets.ilsvrc import SHIPPED_BLACKLISTS
from detector.resolve import SCORE_FILE, resolve_config


def _resolved(root, *overrides):
    cfg = load_config("ilsvrc2014", [f"data.root={root}", *overrides])
    return resolve_config(cfg, needs=SCORE_FILE)


def test_shipped_blacklist_kept_for_an_ilsvrc_tree(tmp_path):
    assert _resolved(tmp_path).data.blacklist == str(SHIPPED_BLACKLISTS["ilsvrc2014"])


def test_shipped_blacklist_not_applied_to_voc_or_coco(tmp_path, capsys):
    for fmt in ("voc", "coco"):
        assert _resolved(tmp_path, f"data.format={fmt}").data.blacklist == ""
        err = capsys.readouterr().err
        assert (
            f"note: blacklist 'ilsvrc2014' names ILSVRC val images; ignored for data.format={fmt}"
            in err
        )


def test_shipped_blacklist_not_applied_to_another_class_list(tmp_path, capsys):
    (tmp_path / "map_det.txt").write_text("n01 1 cat\nn02 2 dog\n")
    assert _resolved(tmp_path).data.blacklist == ""
    err = capsys.readouterr().err
    assert "names ILSVRC 2014 classes" in err and str(tmp_path / "map_det.txt") in err


def test_a_blacklist_file_of_ones_own_is_kept_on_any_format(tmp_path):
    bl = tmp_path / "mine.txt"
    bl.write_text("1 1\n")
    assert _resolved(tmp_path, "data.format=voc", f"data.blacklist={bl}").data.blacklist == str(bl)


def test_auto_precision_is_int8_only_where_calibration_images_are_at_hand(tmp_path):
    """A run over a list (detector.run, eval.map) calibrates on its first images, so auto
    takes int8 on this x86 CPU; the API (one image at a time) and calibration_images=0 keep
    the float default."""
    import torch

    from detector.core.devices import cpu_supports_int8, resolve_precision
    from detector.resolve import Needs

    assert cpu_supports_int8(torch.device("cpu"))  # x86: the project's CI and dev machines
    float_default = resolve_precision("auto", torch.device("cpu"))
    assert float_default in ("bf16", "fp32")
    listing = Needs(members=False, multibox=False, heads=False, image_list=True)
    assert _resolved(tmp_path).inference.precision == float_default
    assert resolve_config(load_config("ilsvrc2014", [f"data.root={tmp_path}"]), needs=listing).inference.precision == "int8"  # fmt: skip
    off = load_config("ilsvrc2014", [f"data.root={tmp_path}", "inference.calibration_images=0"])
    assert resolve_config(off, needs=listing).inference.precision == float_default
    explicit = load_config("ilsvrc2014", [f"data.root={tmp_path}", "inference.precision=bf16"])
    assert resolve_config(explicit, needs=listing).inference.precision == "bf16"
