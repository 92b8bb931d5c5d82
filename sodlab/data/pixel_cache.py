"""The pixel cache: a split folder's images decoded once, on disk, shared by every run.

Layer L1. ``PixelCache.open_or_build(split_dir)`` decodes each image of a split with
``sodlab.data.dataset.read_rgb8`` (uint8 RGB ``[H, W, 3]``, not resized, so the pixels are
exactly those of reading the file) into one flat uint8 file, ``pixels.u8``, beside a small
JSON index, ``index.json`` (per image: its offset in the flat file, ``H``, ``W``, and the
image file's byte size and ``mtime_ns`` when it was decoded). Reading memory-maps the flat
file with numpy, so ``get(i)`` is a view: no decoding, and the pages are the operating
system's, shared by every DataLoader worker and every run on the machine. A training epoch
after the first (and every epoch of the next run) reads pixels instead of decoding PNGs.

Where: ``<pixels root>/<key>/``, the pixels root being ``pixels/`` beside the run cache
(``sodlab.engine.cache.cache_root().parent / "pixels"``, so ``runs/pixels`` in a checkout)
unless ``SODLAB_PIXELS`` names another folder. The key is the SHA-256 of the cache format
version, Pillow's version (a decoder may change pixels between releases), the split's
resolved annotations path and bytes, and each listed image file's name, byte size and
``mtime_ns``: a rewritten image, or an edited ``annotations.json``, gives a new key and so
a fresh cache, never stale pixels. ``get`` also checks the file's size and ``mtime_ns``
against the index on every read and decodes the file instead when they differ.

A build writes into a hidden temporary folder beside the entry and renames it into place
at the end, so an interrupted build leaves nothing that is ever read (an unfinished folder
left by a killed process is removed by a later build after an hour). A build needs about
``H * W * 3`` bytes of disk per image; when the disk would keep less than
``KEEP_FREE_BYTES`` free, or writing fails, it is skipped with one warning and
``open_or_build`` returns None (the caller decodes as before). An image that cannot be read is not cached: reading it
raises the same ``InputError`` as without the cache.

Dimension legend: H x W image height and width in pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sodlab.data.coco import annotations_path, images_dir, load_coco
from sodlab.data.dataset import read_rgb8
from sodlab.errors import InputError
from sodlab.files import repo_root, write_json

PIXEL_CACHE_VERSION = 1
DATA = "pixels.u8"
INDEX = "index.json"
KEEP_FREE_BYTES = 1 << 30  # a build never leaves the disk with less than 1 GiB free
STALE_SECONDS = 3600  # unfinished build folders older than this are removed


def pixels_root() -> Path:
    """Where pixel caches live: ``SODLAB_PIXELS``, else ``pixels/`` beside the run cache.

    The run cache is ``SODLAB_CACHE`` or ``runs/cache`` under the repository root
    (``sodlab.engine.cache.cache_root``; restated here because data sits below the engine).
    """
    env = os.environ.get("SODLAB_PIXELS")
    if env:
        return Path(env)
    run_cache = os.environ.get("SODLAB_CACHE")
    return (Path(run_cache) if run_cache else repo_root() / "runs" / "cache").parent / "pixels"


def _file_stats(folder: Path, file_names: Sequence[str]) -> list[tuple[int, int]]:
    """``(byte size, mtime_ns)`` of each image file; ``(-1, -1)`` for one that is missing."""
    out = []
    for name in file_names:
        try:
            st = os.stat(folder / name)
            out.append((int(st.st_size), int(st.st_mtime_ns)))
        except OSError:
            out.append((-1, -1))
    return out


def pixel_key(ann_path: Path, file_names: Sequence[str],
              stats: Sequence[tuple[int, int]]) -> str:
    """The cache key (hex SHA-256) of a split: format and Pillow versions, the resolved
    annotations path and bytes, and each image's name, byte size and ``mtime_ns``."""
    import PIL

    h = hashlib.sha256()
    h.update(f"sodlab pixels {PIXEL_CACHE_VERSION}; pillow {PIL.__version__}\n".encode())
    h.update(f"{Path(ann_path).resolve()}\n".encode())
    h.update(Path(ann_path).read_bytes())
    for name, (size, mtime) in zip(file_names, stats, strict=True):
        h.update(f"\n{name}\0{size}\0{mtime}".encode())
    return h.hexdigest()


def _decoded_bytes(folder: Path, file_names: Sequence[str]) -> int:
    """Bytes the decoded images take (``H * W * 3`` each), from the files' headers only."""
    from PIL import Image

    total = 0
    for name in file_names:
        try:
            with Image.open(folder / name) as im:
                total += im.size[0] * im.size[1] * 3
        except OSError:  # unreadable: not cached, so it takes nothing
            pass
    return total


def _remove_stale_builds(root: Path) -> None:
    """Remove unfinished build folders (``.*.tmp``) older than ``STALE_SECONDS``."""
    now = time.time()
    for tmp in root.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


class PixelCache:
    """The decoded images of one split folder, memory-mapped from the pixel cache.

    Make one with ``open_or_build``. ``get(i)`` (position in the annotations' ``images``
    list) or ``get(file_name)`` returns a uint8 view ``[H, W, 3]``, read-only, equal to
    ``read_rgb8`` of the file; when the file's size or ``mtime_ns`` no longer match the
    index, the file is decoded instead. Picklable: a DataLoader worker started by spawn
    maps the file again rather than copying the pixels.
    """

    def __init__(self, folder: Path, images: Path, entries: list[dict]) -> None:
        self.folder = Path(folder)
        self.images_dir = Path(images)
        self.entries = entries
        self._by_name: dict[str, int] = {}
        for i, e in enumerate(entries):
            self._by_name.setdefault(e["file_name"], i)
        self._flat: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_flat": None}

    @classmethod
    def open_or_build(cls, split_dir: str | os.PathLike, progress: bool = False, *,
                      file_names: Sequence[str] | None = None) -> PixelCache | None:
        """The pixel cache of a split folder (or annotations file), built if missing.

        ``file_names``: the annotations' image file names in order, when the caller has
        parsed them already. None when the split has no images or the disk is short of
        space (one warning). ``progress``: a tqdm bar while building.
        """
        ann = annotations_path(split_dir)
        if not ann.is_file():
            raise InputError(f"{ann}: no such annotations file")
        folder = images_dir(ann)
        if file_names is None:
            file_names = [im["file_name"] for im in load_coco(ann)["images"]]
        if not file_names:
            return None
        stats = _file_stats(folder, file_names)
        key = pixel_key(ann, file_names, stats)
        dest = pixels_root() / key
        found = cls._open(dest, folder)
        if found is not None:
            return found
        return cls._build(dest, ann, folder, file_names, stats, progress)

    @classmethod
    def _open(cls, dest: Path, folder: Path) -> PixelCache | None:
        """The finished cache in ``dest``, or None when there is none (or it is damaged)."""
        try:
            index = json.loads((dest / INDEX).read_text())
            if (index.get("version") != PIXEL_CACHE_VERSION
                    or (dest / DATA).stat().st_size != index["bytes"]):
                return None
            return cls(dest, folder, index["images"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def _build(cls, dest: Path, ann: Path, folder: Path, file_names: Sequence[str],
               stats: Sequence[tuple[int, int]], progress: bool) -> PixelCache | None:
        """Decode every image into a temporary folder, then rename it to ``dest``."""
        root = dest.parent
        try:
            root.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(root).free
        except OSError as exc:
            warnings.warn(f"pixel cache not built: cannot use {root} ({exc})", stacklevel=3)
            return None
        need = _decoded_bytes(folder, file_names)
        if free - need < KEEP_FREE_BYTES:
            warnings.warn(f"pixel cache not built: {ann.parent} needs {need / 2**20:.0f} MiB "
                          f"but {root} has {free / 2**20:.0f} MiB free; decoding each time",
                          stacklevel=3)
            return None
        _remove_stale_builds(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name[:16]}.", suffix=".tmp", dir=root))
        try:
            entries = _decode_into(tmp / DATA, folder, file_names, stats, progress)
            write_json(tmp / INDEX, {"version": PIXEL_CACHE_VERSION, "annotations": str(ann),
                                     "bytes": (tmp / DATA).stat().st_size, "images": entries})
            return _move_into_place(tmp, dest, lambda: cls._open(dest, folder))
        except OSError as exc:  # the disk filled up, the folder went away: decode instead
            shutil.rmtree(tmp, ignore_errors=True)
            warnings.warn(f"pixel cache not built: writing {root} failed ({exc})", stacklevel=3)
            return None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _data(self) -> np.ndarray:
        """The flat uint8 file, memory-mapped copy-on-write (once per process): pages are
        shared with every other reader until written, and a write never reaches the file."""
        if self._flat is None:
            self._flat = np.memmap(self.folder / DATA, dtype=np.uint8, mode="c")
        return self._flat

    def _position(self, item: int | str) -> int:
        """The entry number of a position or a file name; InputError if there is none."""
        if isinstance(item, (int, np.integer)):
            if not 0 <= int(item) < len(self.entries):
                raise InputError(f"image {item}: the pixel cache of {self.images_dir.parent} "
                                 f"holds {len(self.entries)} images")
            return int(item)
        if item not in self._by_name:
            raise InputError(f"{item}: not an image of {self.images_dir.parent}")
        return self._by_name[item]

    def get(self, item: int | str, *, writable: bool = False) -> np.ndarray:
        """Image ``item`` (position or ``file_name``) as uint8 RGB ``[H, W, 3]``.

        A read-only view into the cache; the file decoded instead when it changed since
        the cache was built (or could not be decoded then). ``writable=True``: the view
        without the read-only flag, for ``torch.from_numpy`` (which warns about read-only
        arrays); a write through it would stay in this process's copy-on-write pages, so
        only callers that never write (``rgb8_to_tensor`` copies) should ask for it.
        """
        e = self.entries[self._position(item)]
        path = self.images_dir / e["file_name"]
        try:
            st = os.stat(path)
            same = (e["offset"] >= 0 and st.st_size == e["size"]
                    and st.st_mtime_ns == e["mtime_ns"])
        except OSError:
            same = False
        if not same:
            return read_rgb8(path)  # [H, W, 3] uint8 (InputError if unreadable)
        h, w = e["height"], e["width"]
        view = self._data()[e["offset"]:e["offset"] + h * w * 3].reshape(h, w, 3)
        view.flags.writeable = writable
        return view


def _decode_into(data_path: Path, folder: Path, file_names: Sequence[str],
                 stats: Sequence[tuple[int, int]], progress: bool) -> list[dict]:
    """Append each image's ``read_rgb8`` pixels to ``data_path``; the index entries.

    An image that cannot be read gets offset -1 (not cached). The size and ``mtime_ns``
    recorded are those taken before decoding, so a file changed meanwhile never matches.
    """
    from tqdm.auto import tqdm

    entries, offset = [], 0
    with open(data_path, "wb") as fh:
        for name, (size, mtime) in zip(tqdm(file_names, disable=not progress,
                                            desc="pixel cache", unit="image"), stats,
                                       strict=True):
            entry = {"file_name": name, "offset": -1, "height": 0, "width": 0,
                     "size": size, "mtime_ns": mtime}
            try:
                rgb = read_rgb8(folder / name)  # [H, W, 3] uint8
            except InputError:
                entries.append(entry)
                continue
            fh.write(np.ascontiguousarray(rgb).data)
            entry.update(offset=offset, height=int(rgb.shape[0]), width=int(rgb.shape[1]))
            offset += rgb.nbytes
            entries.append(entry)
    return entries


def _move_into_place(tmp: Path, dest: Path, reopen) -> PixelCache | None:
    """Rename the finished ``tmp`` to ``dest``; when another build got there first, keep
    its cache (or replace a damaged one). Returns ``reopen()``."""
    try:
        os.rename(tmp, dest)
    except OSError:
        found = reopen()
        if found is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return found
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
    return reopen()


__all__ = ["PixelCache", "pixels_root", "pixel_key", "PIXEL_CACHE_VERSION", "KEEP_FREE_BYTES"]
