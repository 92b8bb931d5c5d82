"""Small notebooks that build each explorer exactly as its teaching notebook does.

Serving notebooks 01, 04, 05 and 06 themselves would train detectors (minutes on a cold
cache), so each page here is a generated notebook: a setup cell that makes tiny stand-ins
for the names the teaching notebook has defined by then (a random patch classifier and
image, a random feature net, a random image with three boxes), then the teaching
notebook's own explorer cell, copied from the ``.ipynb`` file. A change to that cell is
therefore what the browser sees.

The teaching notebooks still pass ``draw=False`` from the days when a first figure could
stall papermill; it is dropped from the copied call (the explorers now draw at
construction everywhere), and ``tests/test_widgets.py`` asks for it to go from the
notebooks themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
EXPLORER_CALL = re.compile(r"^(?:chip_)?explorer\(.*$", re.M)
DRAW_FALSE = re.compile(r",\s*draw=False")


@dataclass(frozen=True)
class ExplorerPage:
    """One explorer page: its teaching notebook, the setup source and the slider to move."""

    notebook: str  # stem of the teaching notebook
    setup: str     # defines what the explorer cell uses, on tiny inputs
    slider: str    # description of the slider the test moves with the keyboard
    presses: int = 1  # arrow-key presses that move the view to a new picture


SLIDING = '''\
import torch

from sodlab.models.classifiers import build_patch_classifier
from sodlab.widgets.sliding import explorer, make_state

torch.manual_seed(0)
model = build_patch_classifier(24).eval()
image = torch.rand(3, 60, 72, generator=torch.Generator().manual_seed(1))  # [3, H, W]
state = make_state(model, image, scale_step=2 ** 0.5)
'''

RECEPTIVE = '''\
import torch
from torch import nn

from sodlab.receptive import receptive_fields
from sodlab.widgets.receptive import ExplorerState, explorer

g = torch.Generator().manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                    nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1)).eval()
with torch.no_grad():
    for p in net.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.3)


class Features(nn.Module):  # stands in for the notebook's SSHFeatures
    def __init__(self):
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"M1": self.net[:4](x), "M2": self.net(x)}


features = Features()
rfs = receptive_fields(features, (1, 3, 48, 48))
image = torch.rand(3, 48, 48, generator=g)  # [3, H, W]
state = ExplorerState(features, image, {k: rfs[f"output.{k}"] for k in ("M1", "M2")},
                      anchor_sizes={"M1": [4, 8], "M2": [16]}, anchor_offset=0.5)
'''

CHIPS = '''\
import torch

from sodlab.widgets.chips import chip_explorer

INPUT_SIZE = 64
image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(2))  # [3, H, W]
boxes = torch.tensor([[4.0, 4, 12, 12], [30, 20, 40, 30], [10, 8, 50, 44]])  # [N, 4]
'''

ANCHORS = '''\
from sodlab.widgets.anchors import explorer
'''

PAGES = {
    "sliding": ExplorerPage("01_sliding_window_pyramid", SLIDING, "x (level px)"),
    # one pixel to the right can stay in the same M1 unit (stride 1, centres at i + 0.5)
    "receptive": ExplorerPage("04_ssh_receptive_fields", RECEPTIVE, "x", presses=3),
    "chips": ExplorerPage("05_snip_sniper", CHIPS, "scale index"),
    "anchors": ExplorerPage("06_dense_anchors", ANCHORS, "box x"),
}


def explorer_cell(notebook: str) -> str:
    """The source of the one code cell of ``notebooks/<notebook>.ipynb`` that shows an explorer."""
    nb = nbformat.read(str(NOTEBOOKS / f"{notebook}.ipynb"), as_version=4)
    cells = [c.source for c in nb.cells
             if c.cell_type == "code" and EXPLORER_CALL.search(c.source)]
    assert len(cells) == 1, f"{notebook}: {len(cells)} cells show an explorer, expected 1"
    return DRAW_FALSE.sub("", cells[0])


def write_page(name: str, directory: Path) -> Path:
    """Write ``directory/<name>.ipynb`` (setup cell + the teaching notebook's explorer cell)."""
    page = PAGES[name]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(page.setup),
                nbformat.v4.new_code_cell(explorer_cell(page.notebook))]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python",
                                 "display_name": "Python 3"}
    path = Path(directory) / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return path
