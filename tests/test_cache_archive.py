"""A class starts warm: export the run cache to one archive, import it elsewhere, train nothing."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from sodlab.engine.cache import cached_train
from sodlab.engine.cache_archive import cache_entries, export_cache, import_cache
from sodlab.errors import InputError

TINY = dict(overrides={"input_size": 128}, max_steps=2, batch_size=2)


@pytest.fixture(scope="module")
def trained(quick_dataset, tmp_path_factory):
    """A cache folder holding one tiny finished run: (cache dir, summary)."""
    cache = tmp_path_factory.mktemp("lecturer") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SODLAB_CACHE", str(cache))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _, summary = cached_train("fpn", quick_dataset, **TINY)
        finally:
            torch.set_num_threads(threads)
    assert summary["cached"] is False
    return cache, summary


def _no_training(monkeypatch):
    import importlib

    train_mod = importlib.import_module("sodlab.engine.train")  # the module, not engine.train()
    def refuse(*args, **kwargs):
        raise AssertionError("trained although the run was imported")

    monkeypatch.setattr(train_mod, "train", refuse)


def _rewrite(src: Path, dst: Path, edit_manifest=None, extra: list[tarfile.TarInfo] = ()):
    """A copy of archive ``src`` with its manifest edited and ``extra`` members added."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for info in tin.getmembers():
            data = tin.extractfile(info).read()
            if info.name == "manifest.json" and edit_manifest:
                manifest = json.loads(data)
                edit_manifest(manifest)
                data = json.dumps(manifest).encode()
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
        for info in extra:
            tout.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return dst


def test_round_trip_is_a_cache_hit_with_the_same_weights(trained, quick_dataset, tmp_path,
                                                         monkeypatch):
    from sodlab.engine.train import NUMERICS_VERSION

    cache, summary = trained
    key = summary["key"]
    out = tmp_path / "class.tar.gz"
    manifest = export_cache(out, cache_dir=cache)
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json"
    assert sorted(names[1:]) == sorted(f"runs/{key}/{n}" for n in
                                       ("summary.json", "best.pt", "config.json", "log.jsonl"))
    (run,) = manifest["runs"]
    assert run["key"] == key and run["preset"] == "fpn" and run["seed"] == 0
    assert run["images_seen"] == summary["images_seen"] == 4
    assert run["precision"] == summary["precision"]
    assert run["data_hash"] == summary["train"]["data_hash"]
    assert run["numerics_version"] == manifest["numerics_version"] == NUMERICS_VERSION
    assert run["sodlab_version"] == manifest["sodlab_version"]
    student = tmp_path / "student" / "cache"
    report = import_cache(out, cache_dir=student)
    assert [r["key"] for r in report["imported"]] == [key]
    assert report["skipped"] == report["refused"] == []
    assert not [p for p in student.iterdir() if p.name.startswith(".")]  # no temp folder left
    monkeypatch.setenv("SODLAB_CACHE", str(student))
    _no_training(monkeypatch)
    ckpt, again = cached_train("fpn", quick_dataset, **TINY)
    assert again["cached"] is True and again["key"] == key
    assert ckpt.read_bytes() == (cache / key / "best.pt").read_bytes()
    assert not (student / key / "last.pt").exists()
    landed = json.loads((student / key / "summary.json").read_text())
    assert landed["checkpoint"] == str(student / key / "best.pt")
    # a second import skips; overwrite replaces
    second = import_cache(out, cache_dir=student)
    assert second["imported"] == [] and second["skipped"][0]["reason"] == "already in the cache"
    third = import_cache(out, cache_dir=student, overwrite=True)
    assert [r["key"] for r in third["imported"]] == [key]
    assert (student / key / "best.pt").read_bytes() == ckpt.read_bytes()


def test_export_selects_by_key_prefix_and_mode_and_keeps_last_on_request(trained, tmp_path):
    cache, summary = trained
    key = summary["key"]
    m = export_cache(tmp_path / "a.tar", keys=[key[:8]], include_last=True, cache_dir=cache)
    assert [r["key"] for r in m["runs"]] == [key] and "last.pt" in m["runs"][0]["files"]
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert f"runs/{key}/last.pt" in tar.getnames()
    full = export_cache(tmp_path / "b.tar", mode="full", cache_dir=cache)
    assert full["runs"] == [] and full["left_out"] == [{"key": key, "reason": "quick mode"}]
    with pytest.raises(InputError, match="no run"):
        export_cache(tmp_path / "c.tar", keys=["ffffffff"], cache_dir=cache)
    with pytest.raises(InputError, match="mode must be"):
        export_cache(tmp_path / "c.tar", mode="slow", cache_dir=cache)
    assert not (tmp_path / "c.tar").exists()


def test_a_second_stage_brings_its_base(trained, tmp_path):
    cache, summary = trained
    lecturer = tmp_path / "lecturer"
    shutil.copytree(cache / summary["key"], lecturer / summary["key"])
    two = "ab" * 32  # stands for a second stage keyed on the base
    shutil.copytree(cache / summary["key"], lecturer / two)
    s2 = json.loads((lecturer / two / "summary.json").read_text())
    s2["key"], s2["train"]["extra"] = two, {"base_key": summary["key"]}
    (lecturer / two / "summary.json").write_text(json.dumps(s2))
    m = export_cache(tmp_path / "two.tar", keys=["abab"], cache_dir=lecturer)
    assert sorted(r["key"] for r in m["runs"]) == sorted([two, summary["key"]])
    report = import_cache(tmp_path / "two.tar", cache_dir=tmp_path / "student")
    assert len(report["imported"]) == 2
    shutil.rmtree(lecturer / summary["key"])
    with pytest.raises(InputError, match="second stage whose base"):
        export_cache(tmp_path / "two.tar", keys=[two], cache_dir=lecturer)


@pytest.mark.parametrize("name, kind", [("../evil", tarfile.REGTYPE),
                                        ("runs/../../evil", tarfile.REGTYPE),
                                        ("/tmp/evil", tarfile.REGTYPE),
                                        ("runs/link", tarfile.SYMTYPE)])
def test_an_unsafe_member_refuses_the_whole_archive(trained, tmp_path, name, kind):
    cache, _ = trained
    good = tmp_path / "good.tar"
    export_cache(good, cache_dir=cache)
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    else:
        info.size = 4
    bad = _rewrite(good, tmp_path / "bad.tar", extra=[info])
    student = tmp_path / "student" / "cache"
    with pytest.raises(InputError, match="refused, member .* nothing was imported"):
        import_cache(bad, cache_dir=student)
    assert not (tmp_path / "student" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not student.exists() or not any(student.iterdir())


def test_a_run_of_other_numerics_is_refused_with_the_reason(trained, tmp_path):
    from sodlab.engine.train import NUMERICS_VERSION

    cache, summary = trained
    good = tmp_path / "good.tar"
    export_cache(good, cache_dir=cache)

    def older(manifest):
        manifest["runs"][0]["numerics_version"] = NUMERICS_VERSION - 1

    bad = _rewrite(good, tmp_path / "old.tar", edit_manifest=older)
    student = tmp_path / "student"
    report = import_cache(bad, cache_dir=student)
    assert report["imported"] == [] and len(report["refused"]) == 1
    why = report["refused"][0]["reason"]
    assert f"NUMERICS_VERSION {NUMERICS_VERSION - 1}" in why and "never be a cache hit" in why
    assert not (student / summary["key"]).exists()


def test_a_corrupted_file_is_refused_and_leaves_no_folder(trained, tmp_path):
    cache, summary = trained
    good = tmp_path / "good.tar"
    export_cache(good, cache_dir=cache)

    def wrong_hash(manifest):
        manifest["runs"][0]["files"]["best.pt"]["sha256"] = "0" * 64

    report = import_cache(_rewrite(good, tmp_path / "bad.tar", edit_manifest=wrong_hash),
                          cache_dir=tmp_path / "student")
    assert "best.pt does not match its SHA-256" in report["refused"][0]["reason"]
    assert list((tmp_path / "student").iterdir()) == []


def test_not_an_archive_is_input_error(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(InputError, match="not a tar archive"):
        import_cache(junk, cache_dir=tmp_path / "c")
    bare = tmp_path / "bare.tar"
    with tarfile.open(bare, "w"):
        pass
    with pytest.raises(InputError, match="not a sodlab cache archive"):
        import_cache(bare, cache_dir=tmp_path / "c")


def test_a_model_trained_in_another_precision_says_so(trained, quick_dataset, tmp_path,
                                                      monkeypatch):
    from sodlab.engine.precision import resolve_precision

    cache, summary = trained
    here = resolve_precision("auto", "cpu")
    other = "fp32" if here == "bf16" else "bf16"
    lecturer = tmp_path / "lecturer"
    shutil.copytree(cache / summary["key"], lecturer / summary["key"])
    path = lecturer / summary["key"] / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "precision": other}))
    monkeypatch.setenv("SODLAB_CACHE", str(lecturer))
    _no_training(monkeypatch)
    _, got = cached_train("fpn", quick_dataset, **TINY)
    assert got["cached"] is True and got["precision"] == other
    note = got["precision_note"]
    assert isinstance(note, str) and f"trained in {other}" in note and here in note
    # the importer says the same of each run it brings in
    export_cache(tmp_path / "a.tar")
    report = import_cache(tmp_path / "a.tar", cache_dir=tmp_path / "student")
    assert report["imported"][0]["reason"] == note


def test_cli_exports_imports_and_lists(trained, tmp_path, monkeypatch, capsys):
    from sodlab.cli import main

    cache, summary = trained
    monkeypatch.setenv("SODLAB_CACHE", str(cache))
    out = tmp_path / "class.tar"
    assert main(["cache", "export", str(out)]) == 0
    assert "1 run(s)" in capsys.readouterr().out
    monkeypatch.setenv("SODLAB_CACHE", str(tmp_path / "student"))
    assert main(["cache", "import", str(out)]) == 0
    assert "1 imported, 0 skipped, 0 refused" in capsys.readouterr().out
    assert main(["cache", "list"]) == 0
    text = capsys.readouterr().out
    assert summary["key"][:12] in text and "fpn" in text and "1 finished run(s)" in text
    assert [e["key"] for e in cache_entries()] == [summary["key"]]
    for bad in (["cache", "export"], ["cache", "export", str(out), "--keys", "zz"],
                ["cache", "import", str(tmp_path / "missing.tar")]):
        assert main(bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("sodlab: error: ") and err.count("\n") == 1
