"""A technique's backbone initialised from a finished run of the run cache (``init``)."""

from __future__ import annotations

import sys

import pytest
import torch
from test_engine import TinyConfig, TinyDetector, _fake_detector_module

from sodlab.errors import InputError

TINY = {"max_steps": 3, "batch_size": 2, "overrides": {}}


class BackboneTiny(TinyDetector):
    """The stand-in detector with its layers split into ``backbone`` and ``head``."""

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__(cfg)
        layers = list(self._modules.pop("net"))
        self.backbone = torch.nn.Sequential(*layers[:-1])
        self.head = layers[-1]

    def net(self, images):  # what TinyDetector.forward calls
        return self.head(self.backbone(images))


@pytest.fixture
def env(tiny_root, tmp_path, monkeypatch):
    """The tiny data, a temporary run cache and the split stand-in as ``sodlab.detector``."""
    fake = _fake_detector_module()
    fake.build_detector = BackboneTiny
    fake.parse_overrides = lambda o: dict(o)
    monkeypatch.setitem(sys.modules, "sodlab.detector", fake)
    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    return tiny_root


def _train(root, **over):
    from sodlab.engine.cache import cached_train

    _, summary = cached_train("tiny", root, overrides=over, max_steps=3, batch_size=2,
                              precision="fp32")
    return summary["key"]


def _fresh(cfg, seed=0):
    torch.manual_seed(seed)
    return BackboneTiny(cfg)


def test_backbone_comes_from_the_run_and_the_rest_is_a_fresh_model(env):
    from sodlab.engine.cache import backbone_init_builder, cached_path
    from sodlab.engine.checkpoint import load_checkpoint

    key = _train(env)
    trained = load_checkpoint(cached_path(key) / "best.pt")["model"]
    cfg = TinyConfig(preset="tiny")
    fresh = _fresh(cfg).state_dict()
    torch.manual_seed(0)
    got = backbone_init_builder(key)(cfg).state_dict()
    assert set(got) == set(fresh)
    backbone = [k for k in got if k.startswith("backbone.")]
    assert backbone and len(backbone) < len(got)
    for k, v in got.items():
        want = trained[k] if k.startswith("backbone.") else fresh[k]
        assert torch.equal(v, want), k
    assert any(not torch.equal(trained[k], fresh[k]) for k in backbone)  # it did train


def test_a_missing_run_or_another_shape_is_an_input_error(env):
    from sodlab.engine.cache import init_backbone

    with pytest.raises(InputError, match="no finished run"):
        init_backbone(_fresh(TinyConfig(preset="tiny")), "0" * 64)
    key = _train(env)
    with pytest.raises(InputError, match=r"backbone\.0\.weight"):
        init_backbone(_fresh(TinyConfig(preset="tiny", width=16)), key)


def test_init_is_keyed_only_when_set_and_trains_from_the_run(env, monkeypatch):
    import sodlab.engine.cache as cache
    from sodlab.engine.cache import train_key
    from sodlab.engine.experiment import MODES, Technique, _facts, _load, plan

    plain = Technique("tiny", "tiny")
    assert "init" not in plain.as_dict()
    p = plan(plain, env, seed=0, budget=TINY)
    old = train_key("tiny", env, overrides={}, seed=0, max_steps=3, batch_size=2,
                    recipe=None, **_facts(env))[0]  # the key as computed before init existed
    assert p["key"] == old and "extra" not in p["kwargs"]
    key = _train(env)
    tech = Technique("tiny (from a run)", "tiny", init=key)
    assert tech.as_dict() == {**plain.as_dict(), "name": tech.name, "init": key}
    q = plan(tech, env, seed=0, budget=TINY)
    assert q["key"] != old and q["kwargs"]["extra"] == {"init_backbone": key}
    calls = []
    orig = cache.init_backbone
    monkeypatch.setattr(cache, "init_backbone",
                        lambda m, k, **kw: calls.append(k) or orig(m, k, **kw))
    _, summary = _load(tech, env, q, budget=TINY, stage_budget={}, mode=MODES["full"],
                       progress=False)
    assert summary["key"] == q["key"] and calls and set(calls) == {key}
    with pytest.raises(InputError, match="single-stage"):
        Technique("x", "tiny", init=key, stage_two={"kind": "roi"})


def test_budget_curve_key_is_the_key_the_learning_curve_trains(env, monkeypatch):
    import sodlab.engine.experiment as experiment
    from sodlab.bench import budget_curve

    def fake_run(tech, root, *, seed, mode, budget, progress):
        key = experiment.plan(tech, root, seed=seed, budget=budget)["key"]
        return {"key": key, "train_seconds": None, "metrics": dict.fromkeys(budget_curve.KEYS, 0.0)}

    monkeypatch.setattr(experiment, "run_technique", fake_run)
    curve = budget_curve.run(quick=True, data_root=env, presets=("tiny",), multiples=(1, 2))
    keys = {r["multiple"]: r["key"] for r in curve["rows"]}
    assert keys == {m: budget_curve.budget_curve_key("tiny", m, env, quick=True) for m in (1, 2)}
    assert budget_curve.budget_curve_key("tiny", 2, env) != keys[2]  # full budget: another run
