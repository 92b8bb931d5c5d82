"""The training data path: prefetching keeps order, errors and early stops; same weights with
prefetch and the pixel cache on or off; the CLI switches; detect's images/s; the data-path
benchmark runs (tiny sizes, nothing timed)."""

from __future__ import annotations

import json
import sys
import threading

import pytest
import torch
from test_engine import _fake_detector_module

from sodlab.engine.train import Prefetcher, TrainConfig, prefetched
from sodlab.errors import InputError


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sodlab-prefetch"]


@pytest.fixture(scope="module")
def root(tiny_root):
    return tiny_root


class Counting:
    """An iterable of 0..n-1 that records how many items it made; raises at ``fail_at``."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.made = n, fail_at, 0

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise InputError(f"image {i}: cannot read image")
            self.made += 1
            yield i


@pytest.mark.parametrize("depth", [1, 3])
def test_prefetcher_keeps_the_order_and_ends(depth):
    with Prefetcher(Counting(20), depth) as items:
        assert list(items) == list(range(20))
    assert not _prefetch_threads()


def test_prefetcher_raises_the_loading_error_in_the_loop():
    got = []
    with pytest.raises(InputError, match="image 3: cannot read image"):
        with Prefetcher(Counting(10, fail_at=3), 2) as items:
            for i in items:
                got.append(i)
    assert got == [0, 1, 2] and not _prefetch_threads()


@pytest.mark.parametrize("depth", [1, 2])
def test_prefetcher_stops_when_the_loop_breaks_early(depth):
    source = Counting(10_000)
    with Prefetcher(source, depth) as items:
        for i in items:
            if i == 4:
                break
    assert not _prefetch_threads()
    assert 5 <= source.made <= 5 + depth  # never more than `depth` items ahead


def test_prefetcher_stops_when_the_step_raises():
    with pytest.raises(RuntimeError, match="step failed"):
        with Prefetcher(Counting(10_000), 1) as items:
            for i in items:
                if i == 2:
                    raise RuntimeError("step failed")
    assert not _prefetch_threads()


def test_prefetched_uses_a_thread_only_without_workers():
    ds = list(range(6))
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    assert isinstance(prefetched(loader, 1), Prefetcher)
    with prefetched(loader, 0) as same:
        assert same is loader
    with prefetched(loader, 2) as batches:
        assert [b.tolist() for b in batches] == [[0, 1], [2, 3], [4, 5]]
    workers = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, prefetch_factor=1)
    with prefetched(workers, 1) as same:
        assert same is workers


def test_a_dataset_error_reaches_the_training_loop(tmp_path, root):
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 2:
                raise InputError("im002.png: cannot read image")
            return torch.zeros(1)

    loader = torch.utils.data.DataLoader(Broken(), batch_size=1)
    with pytest.raises(InputError, match="im002.png"):
        with prefetched(loader, 1) as batches:
            for _ in batches:
                pass
    assert not _prefetch_threads()


def test_train_config_checks_prefetch_and_keeps_the_run_key():
    from sodlab.engine.cache import UNKEYED, _beside_defaults

    for bad in (-1, 1.5, "2"):
        with pytest.raises(InputError, match="--prefetch"):
            TrainConfig(prefetch=bad)
    def keyed(t: TrainConfig) -> dict:  # what train_key hashes of a training config
        return {k: v for k, v in _beside_defaults(t).items() if k not in UNKEYED}

    changed = TrainConfig(max_steps=9, pixel_cache=False, prefetch=3, num_workers=2)
    assert keyed(changed) == keyed(TrainConfig(max_steps=9)) == {"max_steps": 9}


def _weights(run_dir):
    from sodlab.engine import load_checkpoint

    return load_checkpoint(run_dir / "last.pt")["model"]


def test_prefetch_and_pixel_cache_do_not_change_the_weights(root, tmp_path):
    pytest.importorskip("sodlab.detector")
    from sodlab.engine import train

    torch.set_num_threads(1)
    kw = dict(batch_size=2, progress=False, device="cpu", val_every=0, seed=1,
              overrides=["input_size=64", "width=16"])  # the default chain flips at random
    settings = {"base": dict(prefetch=0, pixel_cache=False),
                "prefetch": dict(prefetch=1, pixel_cache=False),
                "deep": dict(prefetch=3, pixel_cache=False),
                "pixels": dict(prefetch=0, pixel_cache=True),
                "both": dict(prefetch=1, pixel_cache=True)}
    for name, s in settings.items():  # 6 steps: 4 per epoch, so two epochs; stops mid-epoch
        summary = train("fpn", root, tmp_path / name, max_steps=6, **kw, **s)
        assert summary["steps"] == 6 and not _prefetch_threads(), name
    base = _weights(tmp_path / "base")
    for name in settings:
        other = _weights(tmp_path / name)
        assert all(torch.equal(base[k], other[k]) for k in base), name
    meta = json.loads((tmp_path / "both" / "config.json").read_text())["train"]
    assert meta["prefetch"] == 1 and meta["pixel_cache"] is True


def test_prefetch_stops_at_stop_at_step_and_resumes_to_the_same_weights(root, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setitem(sys.modules, "sodlab.detector", _fake_detector_module())
    torch.set_num_threads(1)
    from sodlab.engine import train

    kw = dict(batch_size=3, progress=False, device="cpu", val_every=0, seed=5, prefetch=2)
    train("tiny", root, tmp_path / "straight", max_steps=5, **kw)
    s = train("tiny", root, tmp_path / "resumed", max_steps=5, stop_at_step=1, **kw)
    assert s["stopped"] == "stop_at_step" and not _prefetch_threads()
    train("tiny", root, tmp_path / "resumed", max_steps=5, resume=True, **kw)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_cli_data_path_options(root, tmp_path, monkeypatch, capsys):
    from sodlab.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--no-pixel-cache" in text and "--prefetch N" in text
    monkeypatch.setitem(sys.modules, "sodlab.detector", _fake_detector_module())
    torch.set_num_threads(1)
    out = tmp_path / "run"
    rc = main(["train", "--preset", "tiny", "--data", str(root), "--out", str(out),
               "--max-steps", "2", "--batch-size", "4", "--no-progress", "--device", "cpu",
               "--no-pixel-cache", "--prefetch", "0"])
    assert rc == 0
    meta = json.loads((out / "config.json").read_text())["train"]
    assert meta["pixel_cache"] is False and meta["prefetch"] == 0
    rc = main(["train", "--preset", "tiny", "--data", str(root), "--out", str(tmp_path / "r2"),
               "--max-steps", "1", "--no-progress", "--prefetch", "-1"])
    assert rc == 2 and "--prefetch must be an integer >= 0" in capsys.readouterr().err
    capsys.readouterr()
    rc = main(["detect", "--checkpoint", str(out), "--images", str(root / "val" / "images"),
               "--out", str(tmp_path / "d.json"), "--no-progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and lines[-1].startswith("4 images in ") and lines[-1].endswith(" images/s")


@pytest.mark.slow
def test_data_path_speed_runs_on_tiny_sizes(root, monkeypatch):
    pytest.importorskip("sodlab.detector")
    import os

    from sodlab.bench.train_speed import DATA_PATH_MODES, data_path_speed

    torch.set_num_threads(1)
    before = os.environ.get("SODLAB_PIXELS")
    r = data_path_speed(root, "fpn", steps=1, batch_size=2, rounds=1,
                        overrides=["input_size=64", "width=16"], precision="fp32")
    assert os.environ.get("SODLAB_PIXELS") == before  # its cold cache lived in a temp folder
    assert set(r["images_per_s"]) == {"compute", *DATA_PATH_MODES}
    assert all(v > 0 for v in r["images_per_s"].values())
    assert r["vs_compute"]["compute"] == 1.0 and r["pixel_cache_build_s"] > 0
    assert r["train_images"] == 8 and r["steps"] == 1 and r["precision"] == "fp32"
