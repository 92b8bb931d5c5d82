"""Models (layer L2): backbones, necks, heads, the second stage and the modules that plug into it.

- ``backbones``: the tiny CPU backbone (and its depthwise-separable ``tiny_dw``), resnet18,
  mobilenet_v3 (``weights=None``), ``faceboxes`` (FaceBoxes' rapidly digested layers).
- ``necks``: none, plain, FPN (and ``fpn_dw``), SSH detection modules, PyramidBox's LFPN.
- ``heads``: the dense head shared across levels, max-out / max-in-out scores, the
  PyramidAnchors context classifier.
- ``context``: PyramidBox's context-sensitive prediction module (CPM).
- ``roi_head``: a second stage on a trained detector's boxes (RoI pooling, two FC layers).
- ``relation``: Relation Networks' object relation module and learned duplicate removal.
- ``gan``: the Perceptual GAN generator and discriminator.
- ``classifiers``, ``mismatch``: the patch classifiers of notebooks 01 and 05.
"""
