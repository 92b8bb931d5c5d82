"""Every notebook's full-mode experiment, declared once as a ``Study``; the suite is their union.

Layer L4. Each study names its techniques (``sodlab.engine.experiment.Technique``) and its
comparisons "B against A"; ``sodlab study run NAME --full`` (``sodlab.engine.study``) gets a
record for each technique and seed, training only what has none, and decides each comparison
with the paired rule. Techniques with the same name in two studies are the same technique
(a test checks it), so they share run-cache entries and records: notebook 03's ``fpn`` is
notebook 02's recipe-free row and notebook 05's single-scale row.

Not declared here, because they are not trained detectors with a test path: notebook 09's
soft-NMS rows (a post-processing of the RoI head's detections) and notebook 08's
hard-negative false alarms (a count on the same detections). Their notebooks compute them.
"""

from __future__ import annotations

from sodlab.engine.experiment import Technique as T
from sodlab.engine.study import Study
from sodlab.errors import InputError

BASELINE = T("baseline", "baseline")
FPN = T("fpn", "fpn")
S3FD = T("s3fd", "s3fd")
ROI = T("RoI head", "fpn", stage_two={"kind": "roi"})
# NWD / DotD thresholds calibrated to fpn's IoU matching on the embedded data (the full set,
# seed 0; the quick set gives the same to 2 decimals, a test checks it):
# ``sodlab.anchor_fit.calibrate_thresholds`` picks the positive threshold that gives as many
# positive anchors per trained face as IoU >= 0.5 (with the best-anchor rescue) and the
# negative one that leaves as many ignored anchors as IoU in [0.4, 0.5), so the matchers
# differ in which anchors they make positive, not in how many. DotD's rescue alone (the
# three anchor ratios tied at the nearest centre) already gives more than IoU's count, so
# its positive threshold is 1: only the rescue. The DetectorConfig defaults (the NWD paper's
# 0.7 / 0.3) stay, so cached runs keep their meaning.
NWD_CALIBRATED = (("matcher", "nwd"), ("nwd_pos", 0.89), ("nwd_neg", 0.84))
DOTD_CALIBRATED = (("matcher", "dotd"), ("dotd_pos", 1.0), ("dotd_neg", 0.93))

STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("augmentation", "02_augmentation",
          (FPN, T("oversample 2x", "fpn", recipe="oversample 2x"),
           T("oversample 3x", "fpn", recipe="oversample 3x"),
           T("oversample 4x", "fpn", recipe="oversample 4x"),
           T("copy-paste alone", "fpn", recipe="copy-paste alone", needs=("masks",)),
           T("copy-paste", "fpn", recipe="copy-paste", needs=("masks",)),
           T("3x + copy-paste", "fpn", recipe="3x + copy-paste", needs=("masks",))),
          (("fpn", "oversample 2x"), ("fpn", "oversample 3x"), ("fpn", "oversample 4x"),
           ("fpn", "copy-paste alone"), ("fpn", "copy-paste"), ("fpn", "3x + copy-paste"),
           ("copy-paste alone", "copy-paste"))),
    Study("fpn", "03_fpn",
          (BASELINE, T("image pyramid", "baseline", test="pyramid"), FPN),
          (("baseline", "fpn"), ("baseline", "image pyramid"), ("image pyramid", "fpn"))),
    Study("ssh", "04_ssh_receptive_fields",
          (BASELINE, FPN, T("ssh", "ssh"),
           T("ssh without context", "ssh", overrides=(("ssh_context", False),))),
          (("baseline", "ssh"), ("fpn", "ssh"), ("ssh without context", "ssh"))),
    Study("snip_sniper", "05_snip_sniper",
          (FPN, T("MST", "fpn", recipe="mst", test="multiscale"),
           T("SNIP", "fpn", recipe="snip", test="multiscale"),
           T("SNIPER", "fpn", recipe="sniper", test="multiscale"),
           T("sliced inference", "fpn", test="sliced")),
          (("MST", "SNIP"), ("fpn", "SNIP"), ("MST", "SNIPER"), ("fpn", "sliced inference"))),
    Study("dense_anchors", "06_dense_anchors",
          (FPN, S3FD, T("faceboxes", "faceboxes")),
          (("fpn", "s3fd"), ("fpn", "faceboxes"))),
    Study("perceptual_gan", "07_perceptual_gan",
          (FPN, ROI,
           T("Perceptual GAN (perception only)", "fpn",
             stage_two={"kind": "pgan", "adversarial": False}, needs=("large objects",)),
           T("Perceptual GAN", "fpn", stage_two={"kind": "pgan"}, needs=("large objects",))),
          (("fpn", "RoI head"), ("RoI head", "Perceptual GAN (perception only)"),
           ("Perceptual GAN (perception only)", "Perceptual GAN"))),
    Study("pyramidbox", "08_pyramidbox",
          (S3FD, T("+ LFPN", "s3fd", overrides=(("lfpn", True),)),
           T("+ LFPN (sum)", "s3fd", overrides=(("lfpn", True), ("lfpn_fusion", "sum"))),
           T("+ PyramidAnchors", "s3fd", overrides=(("lfpn", True), ("pyramid_anchors", True))),
           T("+ CPM", "s3fd", overrides=(("lfpn", True), ("pyramid_anchors", True),
                                         ("cpm", True))),
           T("pyramidbox", "pyramidbox"),
           T("pyramidbox + DAS", "pyramidbox", recipe="das")),
          (("s3fd", "+ LFPN"), ("+ LFPN", "+ PyramidAnchors"), ("+ PyramidAnchors", "+ CPM"),
           ("+ CPM", "pyramidbox"), ("pyramidbox", "pyramidbox + DAS"), ("s3fd", "pyramidbox"),
           ("+ LFPN", "+ LFPN (sum)"))),
    Study("relation_networks", "09_relation_networks",
          (ROI, T("RoI head + learned NMS", "fpn",
                  stage_two={"kind": "roi", "learned_nms": True}),
           T("relation", "fpn", stage_two={"kind": "roi", "relation": 1}),
           T("relation + learned NMS", "fpn",
             stage_two={"kind": "roi", "relation": 1, "learned_nms": True})),
          (("RoI head", "relation"), ("RoI head", "RoI head + learned NMS"),
           ("RoI head", "relation + learned NMS"))),
    Study("tiny_objects", "11_tiny_objects",
          (FPN, T("fpn + NWD", "fpn", overrides=NWD_CALIBRATED),
           T("fpn + DotD", "fpn", overrides=DOTD_CALIBRATED),
           T("fpn + sliced training", "fpn", recipe="sliced training"),
           T("sliced inference", "fpn", test="sliced")),
          (("fpn", "fpn + NWD"), ("fpn", "fpn + DotD"), ("fpn", "fpn + sliced training"),
           ("fpn", "sliced inference"))),
)}


def suite_study() -> Study:
    """The union of the notebooks' studies (one technique per name) and all their comparisons."""
    techs: dict[str, T] = {}
    comps: list[tuple[str, str]] = []
    for s in STUDIES.values():
        for t in s.techniques:
            if t.name in techs and techs[t.name] != t:
                raise InputError(f"technique {t.name!r} is declared two ways")
            techs.setdefault(t.name, t)
        comps += [c for c in s.comparisons if c not in comps]
    techs["fast"] = T("fast", "fast")
    comps.append(("fpn", "fast"))
    return Study("suite", "10_benchmark_report", tuple(techs.values()), tuple(comps))


def study(name: str) -> Study:
    """A study by name (``suite`` is the union); InputError lists the names."""
    if name == "suite":
        return suite_study()
    if name not in STUDIES:
        raise InputError(f"unknown study {name!r}; known: {', '.join([*STUDIES, 'suite'])}")
    return STUDIES[name]


__all__ = ["DOTD_CALIBRATED", "NWD_CALIBRATED", "STUDIES", "suite_study", "study"]
