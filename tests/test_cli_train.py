"""`sodlab train` and `sodlab detect` end to end on a tiny dataset (ids 7 and 42)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from test_engine import CATS, TinyDetector, _fake_detector_module

from sodlab.cli import main


@pytest.fixture(scope="module")
def root(tiny_root):
    return tiny_root


@pytest.fixture
def fake(monkeypatch):
    m = _fake_detector_module()
    monkeypatch.setitem(sys.modules, "sodlab.detector", m)
    torch.set_num_threads(1)
    return m


@pytest.fixture
def run_dir(root, tmp_path_factory, fake):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--preset", "tiny", "--data", str(root), "--out", str(out),
               "--max-steps", "3", "--batch-size", "4", "--no-progress", "--device", "cpu"])
    assert rc == 0
    return out


def test_train_cli_writes_run(run_dir, capsys):
    for name in ("last.pt", "best.pt", "log.jsonl", "config.json"):
        assert (run_dir / name).is_file()
    end = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
    assert end["event"] == "end" and end["steps"] == 3 and end["images_seen"] == 12


def test_train_cli_resume_is_a_no_op_when_done(root, run_dir, capsys):
    rc = main(["train", "--preset", "tiny", "--data", str(root), "--out", str(run_dir),
               "--max-steps", "3", "--batch-size", "4", "--no-progress", "--resume"])
    assert rc == 0 and "3 steps" in capsys.readouterr().out


def test_train_cli_unknown_preset(root, tmp_path, fake, capsys):
    rc = main(["train", "--preset", "nope", "--data", str(root), "--out", str(tmp_path / "r"),
               "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown preset" in err and "\n" == err[-1] and err.count("\n") == 1


def test_train_cli_divergence_exit_3(root, tmp_path, fake, capsys):
    class NanDetector(TinyDetector):
        def forward(self, images, targets=None):
            out = super().forward(images, targets)
            return {**out, "loss": out["loss"] * float("inf")} if self.training else out

    fake.build_detector = NanDetector
    rc = main(["train", "--preset", "tiny", "--data", str(root), "--out", str(tmp_path / "r"),
               "--max-steps", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 3 and "diverged" in err and err.count("\n") == 1


def test_detect_with_ann_evaluates_and_keeps_ids(root, run_dir, tmp_path, capsys):
    from sodlab.metrics import evaluate

    dets_path, viz = tmp_path / "dets.json", tmp_path / "viz"
    rc = main(["detect", "--checkpoint", str(run_dir / "best.pt"), "--images",
               str(root / "val" / "images"), "--ann", str(root / "val" / "annotations.json"),
               "--out", str(dets_path), "--viz", str(viz), "--no-progress", "--viz-thresh", "0"])
    assert rc == 0
    dets = json.loads(dets_path.read_text())
    assert dets and {d["category_id"] for d in dets} <= {c["id"] for c in CATS}
    assert {d["image_id"] for d in dets} <= {100, 101, 102, 103}
    m = evaluate(root / "val" / "annotations.json", dets)
    assert 0.0 <= m["AP"] <= 1.0
    assert len(list(viz.glob("*.png"))) == 4


def test_detect_without_ann_and_one_file(root, run_dir, tmp_path):
    out = tmp_path / "d.json"
    rc = main(["detect", "--checkpoint", str(run_dir), "--images",
               str(root / "val" / "images" / "im001.png"), "--out", str(out), "--no-progress",
               "--score-thresh", "0.01"])
    dets = json.loads(out.read_text())
    assert rc == 0 and all(d["file_name"] == "im001.png" and d["score"] >= 0.01 for d in dets)


def test_detect_errors(root, run_dir, tmp_path, capsys):
    rc = main(["detect", "--checkpoint", str(tmp_path / "missing.pt"), "--images",
               str(root / "val" / "images"), "--out", str(tmp_path / "d.json")])
    assert rc == 2 and "no such checkpoint" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    rc = main(["detect", "--checkpoint", str(run_dir / "best.pt"), "--images",
               str(tmp_path / "empty"), "--out", str(tmp_path / "d.json")])
    assert rc == 2 and "no image files" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    rc = main(["detect", "--checkpoint", str(tmp_path / "junk.pt"), "--images",
               str(root / "val" / "images"), "--out", str(tmp_path / "d.json")])
    assert rc == 2 and "not a sodlab checkpoint" in capsys.readouterr().err


def test_load_predict_path(root, run_dir):
    import sodlab

    pred = sodlab.load(run_dir / "best.pt")
    assert pred.cat_ids == [7, 42] and sodlab.load(run_dir).cat_ids == [7, 42]
    out = pred.predict(root / "val" / "images" / "im000.png")
    assert set(out) == {"boxes", "scores", "category_ids"}
    assert set(out["category_ids"].tolist()) <= {7, 42}


# ---------------------------------------------------------------- the real detector
@pytest.fixture
def real_run(root, tmp_path):
    pytest.importorskip("sodlab.detector")
    torch.set_num_threads(1)
    out = tmp_path / "real"
    rc = main(["train", "--preset", "fpn", "--data", str(root), "--out", str(out),
               "--max-steps", "2", "--batch-size", "2", "--no-progress", "--device", "cpu",
               "--set", "input_size=64", "--set", "width=16"])
    assert rc == 0
    return out


def test_real_detector_train_detect_load(root, real_run, tmp_path):
    import sodlab
    from sodlab.metrics import evaluate

    dets_path = tmp_path / "dets.json"
    rc = main(["detect", "--checkpoint", str(real_run / "best.pt"), "--images",
               str(root / "val" / "images"), "--ann", str(root / "val"), "--out",
               str(dets_path), "--no-progress"])
    assert rc == 0
    dets = json.loads(dets_path.read_text())
    assert {d["category_id"] for d in dets} <= {7, 42}
    assert 0.0 <= evaluate(root / "val" / "annotations.json", dets)["AP"] <= 1.0
    pred = sodlab.load(real_run / "best.pt")
    out = pred.predict(root / "val" / "images" / "im000.png")
    assert set(out["category_ids"].tolist()) <= {7, 42}
    if len(out["boxes"]):
        assert float(out["boxes"][:, 2].max()) <= 64 and float(out["boxes"][:, 3].max()) <= 48


def test_real_detector_resume_same_weights(root, tmp_path):
    pytest.importorskip("sodlab.detector")
    from sodlab.engine import load_checkpoint, train

    torch.set_num_threads(1)
    kw = dict(batch_size=2, progress=False, device="cpu", val_every=0, seed=1,
              overrides=["input_size=64", "width=16"])
    train("fpn", root, tmp_path / "a", max_steps=4, **kw)
    train("fpn", root, tmp_path / "b", max_steps=4, stop_at_step=2, **kw)
    train("fpn", root, tmp_path / "b", max_steps=4, resume=True, **kw)
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
