"""ALIGN with ground-truth masks and energy_outside, DomainBed augmentation applied to the image
only (the mask left where it was): what a torchvision transform in the dataset would do."""
import sys
import yaml
from egl.data import Augment
from egl.experiments.config import DEFAULTS, merge, check_keys
from egl.experiments.runner import run


class ImageOnly:
    def __init__(self) -> None:
        self.aug = Augment()

    def __call__(self, item, size=None):
        out = self.aug(item, size)
        out["mask"] = item["mask"]
        return out

    def __repr__(self) -> str:
        return "ImageOnly(Augment())"


cfg = yaml.safe_load(open("/tmp/augexp/base.yaml"))
cfg["methods"] = {"align_gt_energy": cfg["methods"]["align_gt_energy"]}
cfg = merge(DEFAULTS, cfg)
cfg["data"]["augment"] = ImageOnly()
cfg["output"] = sys.argv[1]
run(check_keys(cfg), echo=True)
