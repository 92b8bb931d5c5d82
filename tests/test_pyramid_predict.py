"""detect_pyramid: detections at several input sizes map back to original pixels and merge."""

import torch

from sodlab.engine.predict import detect_batch, detect_pyramid


class BlobDetector(torch.nn.Module):
    """Finds the bright square in each (padded) input; boxes in the input tensor's pixels."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        outs = []
        for img in x:
            m = img[0] > 0.5
            ys, xs = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
            b = torch.tensor([[xs[0], ys[0], xs[-1] + 1, ys[-1] + 1]], dtype=torch.float32)
            outs.append({"boxes": b, "scores": torch.tensor([0.9]),
                         "labels": torch.tensor([0])})
        return outs


def test_pyramid_maps_back_and_merges():
    image = torch.zeros(3, 120, 200)
    image[:, 40:60, 100:140] = 1.0
    model = BlobDetector()
    single = detect_batch(model, [image], input_size=200)[0]
    torch.testing.assert_close(single["boxes"], torch.tensor([[100.0, 40, 140, 60]]))
    out = detect_pyramid(model, [image, image], input_sizes=[100, 200, 400])
    assert len(out) == 2
    for o in out:
        assert len(o["boxes"]) == 1  # three scales, one object after NMS
        torch.testing.assert_close(o["boxes"][0], torch.tensor([100.0, 40, 140, 60]),
                                   atol=2.0, rtol=0)
