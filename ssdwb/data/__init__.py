"""Everything a run reads: the COCO-format reader, the reference augmentations, the loader,
the synthetic shapes dataset and the COCO download/verification."""

from ssdwb.data.coco import CocoDetection, load_coco_json
from ssdwb.data.loader import Collate, build_loader, set_epoch
from ssdwb.data.transforms import SSDRandomCrop, normalize, train_transform, val_transform

__all__ = ["CocoDetection", "load_coco_json", "Collate", "build_loader", "set_epoch",
           "SSDRandomCrop", "normalize", "train_transform", "val_transform"]
