"""The pixel cache: exactly read_rgb8's pixels, a fresh cache for a changed image, atomic builds."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sodlab.data import pixel_cache as pc
from sodlab.data.dataset import DetectionDataset, read_rgb8
from sodlab.data.transforms import Compose, RandomHFlip
from sodlab.errors import InputError


def _image(kind: str, rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A noise image in one of PIL's modes (each converts to RGB its own way)."""
    if kind == "L":
        return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    if kind == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if kind == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA")
    if kind == "P":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).quantize(16)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_mixed_split(split_dir: Path, seed: int = 0) -> Path:
    """Images of several sizes and modes (PNG and JPEG), one box each."""
    rng = np.random.default_rng(seed)
    (split_dir / "images").mkdir(parents=True)
    kinds = [("RGB", "png"), ("L", "png"), ("I;16", "png"), ("RGBA", "png"), ("P", "png"),
             ("RGB", "jpg")]
    images, anns = [], []
    for i, (kind, ext) in enumerate(kinds):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        name = f"sub/im{i}.{ext}" if i == 2 else f"im{i}.{ext}"
        (split_dir / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        _image(kind, rng, h, w).save(split_dir / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 8, 8],
                     "area": 64.0, "iscrowd": 0})
    (split_dir / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return split_dir


@pytest.fixture
def pixels(tmp_path, monkeypatch) -> Path:
    """A private pixel cache folder for one test."""
    folder = tmp_path / "pixels"
    monkeypatch.setenv("SODLAB_PIXELS", str(folder))
    return folder


@pytest.fixture
def split(tmp_path) -> Path:
    return make_mixed_split(tmp_path / "train")


def _names(split_dir: Path) -> list[str]:
    return [im["file_name"] for im in json.loads((split_dir / "annotations.json").read_text())
            ["images"]]


def _entries(folder: Path) -> list[Path]:
    """Everything in the pixels folder (entries and unfinished builds alike)."""
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_cached_pixels_are_read_rgb8_exactly(split, pixels):
    cache = pc.PixelCache.open_or_build(split)
    names = _names(split)
    assert len(cache) == len(names)
    total = 0
    for i, name in enumerate(names):
        want = read_rgb8(split / "images" / name)  # the oracle: decoding the file
        for got in (cache.get(i), cache.get(name)):
            assert got.dtype == np.uint8 and got.shape == want.shape
            assert np.array_equal(got, want), name
            assert not got.flags.writeable  # a view into the shared file
        total += want.nbytes
    # one entry: the flat file holds H * W * 3 bytes per image, nothing else
    (entry,) = _entries(pixels)
    assert (entry / pc.DATA).stat().st_size == total
    assert json.loads((entry / pc.INDEX).read_text())["bytes"] == total
    # a second open maps the same entry without building
    again = pc.PixelCache.open_or_build(split)
    assert again.folder == entry and _entries(pixels) == [entry]
    # a pickled cache (a spawned worker) maps the file again and reads the same pixels
    copy = pickle.loads(pickle.dumps(cache))
    assert all(np.array_equal(copy.get(i), cache.get(i)) for i in range(len(names)))
    with pytest.raises(InputError, match="holds 6 images"):
        cache.get(6)
    with pytest.raises(InputError, match="not an image"):
        cache.get("nope.png")


def test_dataset_items_are_the_same_with_and_without_the_pixel_cache(split, pixels):
    kw = dict(transforms=Compose([RandomHFlip()]), seed=3)
    plain = DetectionDataset(split, **kw)
    cached = DetectionDataset(split, pixel_cache=True, **kw)
    assert plain.pixels is None and cached.pixels is not None
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(plain)):
            (a, ta), (b, tb) = plain[i], cached[i]
            assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])


def test_default_folder_is_beside_the_run_cache(monkeypatch, tmp_path):
    from sodlab.engine.cache import cache_root

    monkeypatch.delenv("SODLAB_PIXELS", raising=False)
    monkeypatch.delenv("SODLAB_CACHE", raising=False)
    assert pc.pixels_root() == cache_root().parent / "pixels"
    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "elsewhere" / "cache"))
    assert pc.pixels_root() == cache_root().parent / "pixels" == tmp_path / "elsewhere" / "pixels"
    monkeypatch.setenv("SODLAB_PIXELS", str(tmp_path / "mine"))
    assert pc.pixels_root() == tmp_path / "mine"


def _rewrite(path: Path, size: tuple[int, int], seed: int) -> np.ndarray:
    """Write a new image over ``path`` (another size and content, a later mtime)."""
    st = path.stat()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
                    ).save(path, format="PNG")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    return read_rgb8(path)


def test_a_changed_image_never_gives_stale_pixels(split, pixels):
    old = pc.PixelCache.open_or_build(split)
    name = _names(split)[0]
    new = _rewrite(split / "images" / name, (31, 17), seed=9)
    # the open cache notices the file changed and decodes it
    assert np.array_equal(old.get(0), new) and np.array_equal(old.get(name), new)
    # opening again gives another key: a fresh cache with the new pixels
    fresh = pc.PixelCache.open_or_build(split)
    assert fresh.folder != old.folder and len(_entries(pixels)) == 2
    got = fresh.get(0)
    assert not got.flags.writeable and np.array_equal(got, new)  # from the new cache
    # the same bytes with only a new mtime also counts as changed
    path = split / "images" / name
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert pc.PixelCache.open_or_build(split).folder not in (old.folder, fresh.folder)


def test_an_edited_annotations_file_gives_another_key(split, pixels):
    first = pc.PixelCache.open_or_build(split)
    coco = json.loads((split / "annotations.json").read_text())
    coco["images"] = coco["images"][::-1]
    (split / "annotations.json").write_text(json.dumps(coco))
    second = pc.PixelCache.open_or_build(split)
    assert second.folder != first.folder
    assert np.array_equal(second.get(0), read_rgb8(split / "images" / coco["images"][0]
                                                   ["file_name"]))


def test_an_interrupted_build_leaves_nothing_that_is_read(split, pixels, monkeypatch):
    calls = []

    def failing(path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the build
        return read_rgb8(path)

    monkeypatch.setattr(pc, "read_rgb8", failing)
    with pytest.raises(KeyboardInterrupt):
        pc.PixelCache.open_or_build(split)
    assert _entries(pixels) == []  # neither an entry nor an unfinished folder
    monkeypatch.setattr(pc, "read_rgb8", read_rgb8)
    cache = pc.PixelCache.open_or_build(split)
    assert all(np.array_equal(cache.get(n), read_rgb8(split / "images" / n))
               for n in _names(split))


def test_a_damaged_entry_is_rebuilt_not_read(split, pixels):
    cache = pc.PixelCache.open_or_build(split)
    with open(cache.folder / pc.DATA, "r+b") as fh:  # e.g. a disk that filled up
        fh.truncate(10)
    again = pc.PixelCache.open_or_build(split)
    assert again.folder == cache.folder
    assert all(np.array_equal(again.get(n), read_rgb8(split / "images" / n))
               for n in _names(split))


def test_short_disk_skips_the_build_with_one_warning(split, pixels, monkeypatch):
    class Usage:
        free = pc.KEEP_FREE_BYTES  # nothing to spare

    monkeypatch.setattr(pc.shutil, "disk_usage", lambda path: Usage)
    with pytest.warns(UserWarning, match="pixel cache not built") as caught:
        ds = DetectionDataset(split, pixel_cache=True)
    assert len(caught) == 1 and ds.pixels is None and _entries(pixels) == []
    assert torch.equal(ds[0][0], DetectionDataset(split)[0][0])  # decoded as before


def test_a_failed_write_skips_the_build_with_one_warning(split, pixels, monkeypatch):
    def full(path, *args):
        with open(path, "wb"):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(pc, "_decode_into", full)
    with pytest.warns(UserWarning, match="No space left") as caught:
        assert pc.PixelCache.open_or_build(split) is None
    assert len(caught) == 1 and _entries(pixels) == []


def test_an_unreadable_image_raises_as_without_the_cache(split, pixels):
    name = _names(split)[1]
    (split / "images" / name).write_bytes(b"not an image")
    cache = pc.PixelCache.open_or_build(split)
    with pytest.raises(InputError, match="cannot read image"):
        cache.get(name)
    assert np.array_equal(cache.get(0), read_rgb8(split / "images" / _names(split)[0]))
    with pytest.raises(InputError, match="cannot read image"):
        DetectionDataset(split, pixel_cache=True)[1]


def test_a_split_without_images_has_no_cache(tmp_path, pixels):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "annotations.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []}))
    assert pc.PixelCache.open_or_build(tmp_path / "empty") is None
    with pytest.raises(InputError, match="no such annotations file"):
        pc.PixelCache.open_or_build(tmp_path / "missing.json")
