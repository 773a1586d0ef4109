"""Everything a run reads: the COCO-format reader, the reference augmentations, the loader,
the synthetic shapes dataset, the dataset layouts and the COCO download/verification."""

from ssdwb.data.coco import CocoDetection, SampleKey, load_coco_json
from ssdwb.data.layout import resolve_data
from ssdwb.data.loader import Collate, build_loader, sample_seeds, set_epoch
from ssdwb.data.transforms import SSDRandomCrop, normalize, train_transform, val_transform

__all__ = ["CocoDetection", "SampleKey", "load_coco_json", "resolve_data", "Collate",
           "build_loader", "sample_seeds", "set_epoch", "SSDRandomCrop", "normalize",
           "train_transform", "val_transform"]
