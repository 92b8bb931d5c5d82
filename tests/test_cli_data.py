"""`sodlab data make|import|check`: exit codes, one-line errors, summaries, --help."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sodlab.cli import main
from sodlab.data.coco import load_coco, save_coco

WIDER_TXT = "a.jpg\n1\n2 3 10 12 0 0 0 1 0 0\nb.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n"


def _images(folder, names, w=40, h=30):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.full((h, w, 3), 128, dtype=np.uint8)).save(folder / n)
    return folder


def test_import_then_check_clean(tmp_path, capsys):
    imgs = _images(tmp_path / "imgs", ["a.jpg", "b.jpg"])
    gt = tmp_path / "gt.txt"
    gt.write_text(WIDER_TXT)
    out = tmp_path / "val"
    rc = main(["data", "import", "--format", "wider", "--src", str(gt), "--images", str(imgs),
               "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0 and "2 images, 1 annotations (1 iscrowd)" in text
    assert load_coco(out)["annotations"][0]["iscrowd"] == 1
    assert main(["data", "check", str(out)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_reports_problems_exit_1(tmp_path, capsys):
    _images(tmp_path / "images", ["a.png"])
    save_coco(tmp_path, {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                                    {"id": 2, "file_name": "b.png", "width": 4, "height": 3}],
                         "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                          "bbox": [35, 0, 10, 5], "area": 50}],
                         "categories": [{"id": 1, "name": "x"}]})
    assert main(["data", "check", str(tmp_path / "annotations.json")]) == 1
    text = capsys.readouterr().out
    assert "2 problems (box_outside_image 1, missing_image 1)" in text
    assert "image 2 (b.png): missing_image" in text


@pytest.mark.parametrize("argv", [
    ["data", "import", "--format", "wider", "--src", "{tmp}/nope.txt", "--images", "{tmp}",
     "--out", "{tmp}/out"],
    ["data", "check", "{tmp}/nothing_here"],
])
def test_unusable_input_exit_2_one_line(tmp_path, capsys, argv):
    rc = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("sodlab: error: ")
    assert "nothing_here" in err or "nope.txt: no such file" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_malformed_wider_exit_2_subprocess(tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.jpg"])
    gt = tmp_path / "gt.txt"
    gt.write_text("a.jpg\nmany\n")
    r = subprocess.run([sys.executable, "-m", "sodlab", "data", "import", "--format", "wider",
                        "--src", str(gt), "--images", str(imgs), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().endswith("gt.txt:2: expected the number of faces of a.jpg, got "
                                     "'many'")


def test_help_texts(capsys):
    for action, words in (("import", ["x1 = xmin - 1", "iscrowd 1", "8-bit RGB", "x2 = x + w"]),
                          ("check", ["exit status", "1 problems found"]),
                          ("make", ["--size", "--seed"])):
        with pytest.raises(SystemExit) as exc:
            main(["data", action, "--help"])
        assert exc.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for w in words:
            assert w in text, (action, w)


@pytest.mark.skipif(importlib.util.find_spec("sodlab.data.synth") is None,
                    reason="sodlab.data.synth (the generator) is not in this checkout yet")
@pytest.mark.slow
def test_make_writes_a_checkable_root(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "make", "--out", str(out), "--size", "quick", "--seed", "0",
                 "--no-progress"]) == 0
    assert "dataset root" in capsys.readouterr().out
    assert (out / "train" / "annotations.json").is_file()
    assert main(["data", "check", str(out)]) == 0


def test_make_with_a_stand_in_generator(tmp_path, monkeypatch, capsys):
    """The command's own logic (cache kept unless --force, --out), with a stand-in synth."""
    import json
    import types

    import sodlab.data as data

    calls = []

    def make_dataset(out, *, size="quick", seed=0, progress=True):
        calls.append((out, size, seed))
        for split in ("train", "val"):
            _images(out / split / "images", ["a.png"])
            save_coco(out / split, {"images": [{"id": 1, "file_name": "a.png", "width": 40,
                                                "height": 30}], "annotations": [],
                                    "categories": [{"id": 1, "name": "face"}]})
        (out / "meta.json").write_text(json.dumps({"generator_version": "t1"}))
        return out

    fake = types.SimpleNamespace(GENERATOR_VERSION="t1", make_dataset=make_dataset,
                                 default_dataset_dir=lambda size, seed: tmp_path / "cache")
    monkeypatch.setitem(sys.modules, "sodlab.data.synth", fake)
    monkeypatch.setattr(data, "synth", fake, raising=False)
    assert main(["data", "make", "--no-progress", "--seed", "3"]) == 0
    assert calls == [(tmp_path / "cache", "quick", 3)]
    assert "1 images, 0 annotations" in capsys.readouterr().out
    assert main(["data", "make", "--no-progress", "--seed", "3"]) == 0
    assert len(calls) == 1 and "up to date" in capsys.readouterr().out
    assert main(["data", "make", "--no-progress", "--force"]) == 0 and len(calls) == 2
    assert main(["data", "make", "--out", str(tmp_path / "x"), "--size", "full"]) == 0
    assert calls[-1] == (tmp_path / "x", "full", 0)
