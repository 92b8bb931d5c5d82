"""Pack the run cache's trained models into one archive and unpack it elsewhere: a class starts warm.

Layer L4. A lecturer runs the notebooks once (``make demo``); ``export_cache(OUT)`` writes
the finished runs of ``sodlab.engine.cache`` (each folder with ``summary.json`` and
``best.pt``) into one tar file; each student's ``import_cache(ARCHIVE)`` puts them into
their own run cache, where ``cached_train`` finds them under the same keys and trains
nothing. Used by ``sodlab cache export|import|list`` (``sodlab.cli.cache``).

Archive layout (plain tar; gzip-compressed when the name ends in ``.gz`` or ``.tgz``)::

    manifest.json              what is inside (below); the first member
    runs/<key>/summary.json    the training summary: key, preset, metrics, provenance
    runs/<key>/best.pt         the checkpoint that predicts
    runs/<key>/config.json     the detector and training configs
    runs/<key>/log.jsonl       the training log
    runs/<key>/last.pt         only with ``include_last=True`` (resuming; not needed to predict)

The manifest holds the exporter's sodlab version and ``NUMERICS_VERSION`` and one entry
per run: key, preset, seed, images seen, the precision it trained in, its data hash, its
``NUMERICS_VERSION``, the sodlab version that trained it, its mode, its base's key (a
second stage's) and each file's size and SHA-256. Importing refuses the whole archive when
a member is not a plain file or folder at a relative path without ``..`` (absolute paths,
links, devices), and refuses a run whose ``NUMERICS_VERSION`` is not this sodlab's (its key
can never be a cache hit here), whose files are missing or do not match their SHA-256.
Every run lands whole or not at all: written to a temporary folder beside its cache entry,
checked, its summary's ``out_dir``/``checkpoint`` pointed at where it lands, then
renamed. The key holds the REQUESTED precision, so a run trained in bf16 on the lecturer's
machine is a hit on a laptop that would train in fp32 (``precision_note``).
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from sodlab.errors import InputError
from sodlab.files import atomic_write, sha256_file, write_json

FORMAT = 1
MANIFEST = "manifest.json"
RUN_FILES = ("summary.json", "best.pt", "config.json", "log.jsonl")
LAST = "last.pt"
EXPORT_MODES = ("quick", "full", "all")
_KEY = re.compile(r"^[0-9a-f]{64}$")


def _root(cache_dir: str | os.PathLike | None) -> Path:
    from sodlab.engine.cache import cache_root

    return Path(cache_dir) if cache_dir else cache_root()


def _summary_of(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _facts(key: str, summary: dict) -> dict:
    """What the manifest and ``sodlab cache list`` say about one run, from its summary."""
    train = summary.get("train") or {}
    prov = summary.get("provenance") or {}
    return {"key": key, "preset": summary.get("preset"), "seed": train.get("seed"),
            "images_seen": summary.get("images_seen"), "precision": summary.get("precision"),
            "data_hash": train.get("data_hash") or prov.get("data_hash"),
            "numerics_version": train.get("numerics_version"),
            "sodlab_version": (prov.get("versions") or {}).get("sodlab"),
            "mode": prov.get("mode"), "base_key": (train.get("extra") or {}).get("base_key")}


def cache_entries(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every run folder of the cache: its facts, ``finished`` and ``bytes`` (size on disk)."""
    root = _root(cache_dir)
    out = []
    for run_dir in sorted(root.iterdir()) if root.is_dir() else []:
        if not run_dir.is_dir() or run_dir.name.startswith("."):
            continue
        summary = _summary_of(run_dir) or {}
        finished = bool(summary) and (run_dir / "best.pt").is_file()
        size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
        out.append({**_facts(run_dir.name, summary), "finished": finished, "bytes": size})
    return out


def _resolve_keys(keys: Sequence[str], entries: dict[str, dict]) -> list[str]:
    """Full keys of ``keys`` (each a key or a unique prefix of one), finished runs only."""
    out = []
    for want in keys:
        hits = [k for k in entries if k.startswith(want.strip().lower())] if want.strip() else []
        if len(hits) != 1:
            raise InputError(f"key {want!r}: {'no run' if not hits else 'several runs'} in the "
                             "run cache start with it (sodlab cache list)")
        if not entries[hits[0]]["finished"]:
            raise InputError(f"run {hits[0][:12]} is not finished (no summary.json or best.pt)")
        out.append(hits[0])
    return out


def _select(entries: dict[str, dict], keys: Sequence[str] | None,
            mode: str) -> tuple[list[str], list[dict]]:
    """(keys to export, runs left out with why): named keys plus their bases, or by mode."""
    from sodlab.engine.train import NUMERICS_VERSION

    if mode not in EXPORT_MODES:
        raise InputError(f"mode must be one of {', '.join(EXPORT_MODES)}, got {mode!r}")
    left_out = []
    if keys is not None:
        chosen = _resolve_keys(keys, entries)
    else:
        chosen = []
        for k, e in entries.items():
            why = ("not finished" if not e["finished"] else
                   f"numerics version {e['numerics_version']}, this sodlab's is "
                   f"{NUMERICS_VERSION}" if e["numerics_version"] != NUMERICS_VERSION else
                   f"{e['mode']} mode" if mode != "all" and e["mode"] != mode else None)
            if why:
                left_out.append({"key": k, "reason": why})
            else:
                chosen.append(k)
    for k in list(chosen):  # a second stage needs its base: cached_stage_two asks for it first
        base = entries[k]["base_key"]
        if base and base not in chosen:
            if base not in entries or not entries[base]["finished"]:
                raise InputError(f"run {k[:12]} is a second stage whose base {base[:12]} is not "
                                 "a finished run in the cache")
            chosen.append(base)
    return sorted(set(chosen)), left_out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(_dt.datetime.now().timestamp()), 0o644
    tar.addfile(info, io.BytesIO(data))


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No user or group names of the exporting machine in the archive."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def export_cache(out_path: str | os.PathLike, *, keys: Sequence[str] | None = None,
                 mode: str = "quick", include_last: bool = False,
                 cache_dir: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Write the runs ``keys`` (default: every finished run of ``mode``) into one archive.

    ``keys``: full keys or unique prefixes; a second stage's base comes along. ``mode``:
    which runs the default takes, by the mode their summary records: ``"quick"`` (what
    ``make demo`` trains), ``"full"`` or ``"all"``; runs with another ``NUMERICS_VERSION``
    are left out (they would never be a cache hit). Returns the manifest (written as
    ``manifest.json`` at the archive's root, with ``left_out``: each run not taken, and why).
    """
    from tqdm.auto import tqdm

    from sodlab import __version__
    from sodlab.engine.train import NUMERICS_VERSION

    root = _root(cache_dir)
    entries = {e["key"]: e for e in cache_entries(root)}
    chosen, left_out = _select(entries, keys, mode)
    names = RUN_FILES + ((LAST,) if include_last else ())
    runs = []
    for key in chosen:
        files = {n: {"bytes": (root / key / n).stat().st_size, "sha256": sha256_file(root / key / n)}
                 for n in names if (root / key / n).is_file()}
        runs.append({**{k: v for k, v in entries[key].items() if k not in ("finished", "bytes")},
                     "files": files})
    manifest = {"format": FORMAT, "sodlab_version": __version__,
                "numerics_version": NUMERICS_VERSION, "mode": mode, "include_last": include_last,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "runs": runs, "left_out": left_out}
    out_path = Path(out_path)
    gz = out_path.name.endswith((".gz", ".tgz"))
    with atomic_write(out_path, "wb") as fh, tarfile.open(fileobj=fh, mode="w:gz" if gz else "w",
                                                          format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1).encode() + b"\n")
        for run in tqdm(runs, disable=not progress, desc="export", unit="run"):
            for name in run["files"]:
                tar.add(root / run["key"] / name, arcname=f"runs/{run['key']}/{name}",
                        recursive=False, filter=_anonymous)
    return manifest


def _unsafe(info: tarfile.TarInfo) -> str | None:
    """Why a member must not be extracted, or None."""
    path = PurePosixPath(info.name)
    if info.name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", info.name):
        return "an absolute path"
    if ".." in path.parts or "\\" in info.name:
        return "a path that climbs out of the cache ('..' or a backslash)"
    if info.issym() or info.islnk():
        return f"a link (to {info.linkname!r})"
    if not (info.isfile() or info.isdir()):
        return "not a plain file or folder"
    return None


def _members(tar: tarfile.TarFile, archive: Path) -> dict[str, dict[str, tarfile.TarInfo]]:
    """``{key: {file name: member}}`` of the archive; InputError on any unsafe member."""
    runs: dict[str, dict[str, tarfile.TarInfo]] = {}
    for info in tar.getmembers():
        why = _unsafe(info)
        if why:
            raise InputError(f"{archive}: refused, member {info.name!r} is {why}; nothing was "
                             "imported")
        parts = PurePosixPath(info.name).parts
        if info.isfile() and len(parts) == 3 and parts[0] == "runs":
            runs.setdefault(parts[1], {})[parts[2]] = info
    return runs


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> dict:
    try:
        fh = tar.extractfile(MANIFEST)
        manifest = json.loads(fh.read()) if fh else None
    except (KeyError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise InputError(f"{archive}: not a sodlab cache archive (no readable {MANIFEST}; "
                         "make one with 'sodlab cache export')")
    if manifest.get("format") != FORMAT:
        raise InputError(f"{archive}: archive format {manifest.get('format')!r}, this sodlab "
                         f"reads format {FORMAT}")
    return manifest


def _refusal(run: dict, files: dict[str, tarfile.TarInfo]) -> str | None:
    """Why a manifest run cannot be imported, or None."""
    from sodlab.engine.train import NUMERICS_VERSION

    key = str(run.get("key"))
    if not _KEY.match(key):
        return "not a run key (64 hex digits)"
    if run.get("numerics_version") != NUMERICS_VERSION:
        return (f"trained with NUMERICS_VERSION {run.get('numerics_version')}, this sodlab's is "
                f"{NUMERICS_VERSION}: its key can never be a cache hit here (import an archive "
                "exported by a sodlab with the same numerics, or retrain)")
    listed = run.get("files") or {}
    missing = [n for n in ("summary.json", "best.pt") if n not in files or n not in listed]
    if missing:
        return f"incomplete: no {' or '.join(missing)} in the archive"
    return None


def _install(tar: tarfile.TarFile, run: dict, files: dict[str, tarfile.TarInfo],
             root: Path) -> None:
    """Extract one run into a temporary folder beside its entry, check it, rename it in."""
    key, listed = run["key"], run["files"]
    tmp = Path(tempfile.mkdtemp(prefix=f".import-{key[:12]}-", dir=root))
    try:
        for name, want in listed.items():
            if name not in files or name not in RUN_FILES + (LAST,):
                continue
            with tar.extractfile(files[name]) as src, open(tmp / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if sha256_file(tmp / name) != want.get("sha256"):
                raise InputError(f"{name} does not match its SHA-256 in the manifest")
        summary = _summary_of(tmp)
        if summary is None or summary.get("key") != key:
            raise InputError("its summary.json does not carry the run's key")
        if (summary.get("train") or {}).get("numerics_version") != run["numerics_version"]:
            raise InputError("its summary.json and the manifest disagree on NUMERICS_VERSION")
        # the paths the exporting machine wrote, now where the run lands here
        summary["out_dir"] = str(root / key)
        summary["checkpoint"] = str(root / key / Path(summary.get("checkpoint") or "best.pt").name)
        write_json(tmp / "summary.json", summary)
        _swap_in(tmp, root / key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first, then removed."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".replaced-{target.name[:12]}-", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def import_cache(archive: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 overwrite: bool = False) -> dict:
    """Put the runs of an ``export_cache`` archive into the run cache (default ``cache_root()``).

    Returns ``{"archive", "cache_dir", "imported", "skipped", "refused", "manifest"}``; each
    of the three lists holds ``{"key", "preset", "reason"}`` (an imported run's reason is
    its precision note or None). A finished run already in the cache is skipped unless
    ``overwrite``. InputError (nothing imported) for an unreadable archive or an unsafe member.
    """
    from sodlab.engine.cache import _precision_note, cached_path
    from sodlab.engine.precision import resolve_precision

    archive, root = Path(archive), _root(cache_dir)
    if not archive.is_file():
        raise InputError(f"no such archive: {archive}")
    try:
        tar = tarfile.open(archive, "r:*")
    except tarfile.TarError as exc:
        raise InputError(f"{archive}: not a tar archive ({exc})") from None
    here = resolve_precision("auto", "cpu")
    report: dict = {"archive": str(archive), "cache_dir": str(root), "imported": [],
                    "skipped": [], "refused": []}
    with tar:
        files = _members(tar, archive)
        report["manifest"] = manifest = _read_manifest(tar, archive)
        root.mkdir(parents=True, exist_ok=True)
        for run in manifest["runs"]:
            row = {"key": str(run.get("key")), "preset": run.get("preset"), "reason": None}
            why = _refusal(run, files.get(row["key"], {}))
            if why is None and not overwrite and cached_path(row["key"], root) is not None:
                report["skipped"].append({**row, "reason": "already in the cache"})
                continue
            if why is None:
                try:
                    _install(tar, run, files[row["key"]], root)
                except (InputError, tarfile.TarError, OSError, EOFError) as exc:
                    why = f"could not be extracted: {exc}"
                else:
                    report["imported"].append({**row, "reason": _precision_note(run, here)})
                    continue
            report["refused"].append({**row, "reason": why})
    return report


__all__ = ["FORMAT", "MANIFEST", "RUN_FILES", "EXPORT_MODES", "cache_entries", "export_cache",
           "import_cache"]
