"""A checkpoint written before a config field existed loads with that field's default."""

from __future__ import annotations

import dataclasses

from sodlab.detector import DetectorConfig, make_config
from sodlab.engine.checkpoint import upgrade_config


def test_fields_added_later_take_their_defaults():
    cfg = dataclasses.asdict(make_config("fpn", num_classes=1))
    old = {k: v for k, v in cfg.items() if k not in ("matcher", "nwd_constant", "dotd_size")}
    up = upgrade_config({"format": 2, "config": old})
    assert up == cfg
    assert up["matcher"] == DetectorConfig().matcher == "iou"


def test_other_configs_are_left_alone():
    assert upgrade_config({"format": 2, "config": {"width": 8}}) == {"width": 8}
