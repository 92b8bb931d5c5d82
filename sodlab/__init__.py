"""sodlab: small-object detection, taught in notebooks and measured on a CPU.

Layers (imports only go downwards; tests/test_layers.py enforces it; docs/design.md says
why):

    L0  boxes errors files provenance
    L1  data augment tiling anchors matching metrics receptive viz snip slicing nms
    L2  models losses
    L3  detector
    L4  engine bench cli widgets
"""

__version__ = "0.1.0"


def load(checkpoint, device: str = "cpu"):
    """Load a trained detector from a checkpoint; ``.predict(image_or_path)`` runs it."""
    from sodlab.engine import load_detector

    return load_detector(checkpoint, device=device)
