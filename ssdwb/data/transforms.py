"""The reference's SSD augmentation (SPEC.md), on PIL images through torchvision.transforms.v2.

Training, in this order:

1. ``SSDRandomCrop``: choose uniformly among {no crop, min IoU 0.1, 0.3, 0.5, 0.7, 0.9, no
   constraint}; one attempt per choice, re-choose until one succeeds. The crop's w and h are
   U(0.3, 1) fractions of the image with w/h in [0.5, 2]; every GT's IoU with the crop must exceed
   the min IoU; boxes whose centre lies strictly inside the crop are kept (at least one), clipped
   to it. torchvision's ``RandomIoUCrop`` follows other rules (it retries 40 times per choice,
   scales w and h of the *pixel* size and requires ``min_iou <= IoU``), hence this class.
2. Horizontal flip, p = 0.5.
3. Resize to 300x300 (PIL bilinear, as the reference's ``transforms.Resize`` on PIL images).
   ``resize="tensor"`` (not the default) uses torch's uint8 kernel instead: the same filter,
   rounded differently (one level on a few % of the values), less CPU (docs/performance.md).
4. Colour jitter: brightness 0.125, contrast 0.5, saturation 0.5, hue 0.05 (``v2.ColorJitter``:
   PIL's enhancers and HSV hue shift, in random order, like the reference's torchvision; the
   hue step through lookup tables with the same pixels, see :mod:`ssdwb.data.color`).
5. To a uint8 tensor. Normalisation (mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225])
   happens once per batch in :func:`normalize` (same float maths as ToTensor + Normalize), on
   the device the model runs on: the loader's batches stay uint8.

One shortcut computes the same pixels as the reference order with less work: the flip is applied
to the 300x300 result instead of the crop (mirroring commutes with PIL's symmetric resampling; a
test checks it against the literal crop -> flip -> resize pixel for pixel). Folding the crop into
``resize(box=...)`` would not: PIL then samples outside the box at its edges (1 % of pixels
differ, by up to 14 levels), so the crop stays a separate step.

Randomness comes from torch's global generator only, so a seed makes a run repeatable: in
training each sample's own (``CocoDetection`` seeds the generator from the sampler's
``SampleKey`` around the transform, see :mod:`ssdwb.data.loader`). Boxes are fractions of the
image throughout, (x1, y1, x2, y2).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ssdwb.data.color import ColorJitter

__all__ = ["SSDRandomCrop", "train_transform", "val_transform", "normalize", "augmentation_stats",
           "MEAN", "STD", "CROP_OPTIONS"]

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# None: keep the whole image; a number: min IoU of every GT with the crop; -inf: no constraint.
CROP_OPTIONS = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -math.inf)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


class SSDRandomCrop:
    """The reference SSD crop on fractional boxes.

    ``__call__(boxes, labels) -> (crop, boxes, labels, option)``: ``crop`` is (left, top, right,
    bottom) fractions or None, ``option`` the index into ``CROP_OPTIONS`` that succeeded.

    The IoU test and the box clipping run in numpy float32: the same IEEE operations as
    ``torchvision.ops.box_iou`` and the reference's torch code (scalars compared and clamped in
    float32 in both), at a fraction of the per-call cost of small torch ops (docs/performance.md;
    a test checks the two give the same crops, boxes and random state).
    """

    def __call__(self, boxes: torch.Tensor, labels: torch.Tensor):
        b = boxes.numpy()
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        cx = 0.5 * (b[:, 0] + b[:, 2])
        cy = 0.5 * (b[:, 1] + b[:, 3])
        while True:
            option = int(torch.randint(len(CROP_OPTIONS), ()))
            min_iou = CROP_OPTIONS[option]
            if min_iou is None:
                return None, boxes, labels, option
            w, h = _uniform(0.3, 1.0), _uniform(0.3, 1.0)
            if w / h < 0.5 or w / h > 2:
                continue
            left, top = _uniform(0, 1.0 - w), _uniform(0, 1.0 - h)
            right, bottom = left + w, top + h
            crop = np.array([left, top, right, bottom], dtype=np.float32)
            # box_iou(boxes, crop), torchvision's float32 operations
            inter = (np.minimum(b[:, 2:], crop[2:]) - np.maximum(b[:, :2], crop[:2])).clip(min=0)
            inter = inter[:, 0] * inter[:, 1]
            iou = inter / (area + (crop[2] - crop[0]) * (crop[3] - crop[1]) - inter)
            if not bool((iou > np.float32(min_iou)).all()):
                continue
            f32 = np.float32
            inside = (cx > f32(left)) & (cx < f32(right)) & (cy > f32(top)) & (cy < f32(bottom))
            if not bool(inside.any()):
                continue
            kept = b[inside]
            kept = np.stack([np.maximum(kept[:, 0], f32(left)), np.maximum(kept[:, 1], f32(top)),
                             np.minimum(kept[:, 2], f32(right)),
                             np.minimum(kept[:, 3], f32(bottom))], 1)
            kept = (kept - np.array([left, top, left, top], dtype=np.float32)) \
                / np.array([w, h, w, h], dtype=np.float32)
            return ((left, top, right, bottom), torch.from_numpy(kept),
                    labels[torch.from_numpy(inside)], option)


class TrainTransform:
    """SPEC.md's training augmentation: ``(PIL image, target) -> (uint8 Tensor[3, S, S], target)``.

    The target's boxes are updated; ``target["augment"]`` records the crop option, the pixel
    crop box, the flip and how many boxes were kept (for the augmentation notebook).
    """

    def __init__(self, size: int = 300, resize: str = "pil"):
        self.size = size
        self.resize = _resizer(resize)
        self.crop = SSDRandomCrop()
        self.jitter = ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05)

    def __call__(self, image: Image.Image, target: dict):
        boxes, labels = target["boxes"], target["labels"]
        crop, boxes, labels, option = self.crop(boxes, labels)
        wtot, htot = image.size
        if crop is None:
            box = (0, 0, wtot, htot)
        else:  # the reference crops at int() of the fractional box
            box = (int(crop[0] * wtot), int(crop[1] * htot), int(crop[2] * wtot),
                   int(crop[3] * htot))
        flip = float(torch.rand(())) < 0.5
        if flip:
            boxes = torch.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], 1)
        if crop is not None:
            image = image.crop(box)
        image = self.resize(image, self.size)
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        image = self.jitter(image)
        out = dict(target, boxes=boxes, labels=labels,
                   augment={"option": option, "box": box, "flip": flip,
                            "kept": int(labels.shape[0]),
                            "dropped": int(target["labels"].shape[0] - labels.shape[0])})
        return to_tensor(image), out


class ValTransform:
    """Resize to S x S (PIL bilinear) and convert to a uint8 tensor; boxes unchanged."""

    def __init__(self, size: int = 300, resize: str = "pil"):
        self.size = size
        self.resize = _resizer(resize)

    def __call__(self, image: Image.Image, target: dict):
        return to_tensor(self.resize(image, self.size)), target


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> contiguous uint8 Tensor[C, H, W], the values of ``F.pil_to_tensor``.

    An RGB image goes through Pillow's ``split``, one plane after the other: ``pil_to_tensor``
    gives a (H, W, C) buffer seen as [C, H, W], and the collate's ``stack`` then gathers its
    strided bytes into the batch, several times slower than stacking planes
    (``bench/bench_data.py --stages``; docs/performance.md).
    """
    if image.mode != "RGB":
        return F.pil_to_tensor(image)
    planes = bytearray().join([band.tobytes() for band in image.split()])
    return torch.frombuffer(planes, dtype=torch.uint8).view(3, image.size[1], image.size[0])


def resize_pil(image: Image.Image, size: int) -> Image.Image:
    """The reference's resize: PIL bilinear (antialiased when shrinking) to size x size."""
    return image.resize((size, size), Image.BILINEAR)


def resize_tensor(image: Image.Image, size: int) -> Image.Image:
    """The same filter through torch's uint8 kernel (``interpolate(mode="bilinear",
    antialias=True)`` on channels-last uint8, vectorised; torchvision's ``Resize`` on uint8
    tensors). It rounds its fixed-point sums differently from Pillow: up to ~4 % of the values
    differ, by one level (tested), in less time (docs/performance.md). The colour jitter spreads
    the differences (a grey mean one level off shifts the whole contrast table): on the synthetic
    images up to a quarter of a training image's values differ, by 0.5 levels on average."""
    w, h = image.size
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(1, h, w, 3)
    y = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), size=(size, size),
                                        mode="bilinear", antialias=True, align_corners=False)
    # channels-last in, channels-last out: the permuted result is (H, W, 3) contiguous
    return Image.frombuffer("RGB", (size, size), y.permute(0, 2, 3, 1).numpy(), "raw", "RGB",
                            0, 1)


RESIZE = {"pil": resize_pil, "tensor": resize_tensor}


def _resizer(name: str):
    if name not in RESIZE:
        raise ValueError(f"resize must be one of {sorted(RESIZE)}, not {name!r}")
    return RESIZE[name]


def train_transform(size: int = 300, resize: str = "pil") -> TrainTransform:
    """SPEC.md's training augmentation. ``resize="pil"`` (default) gives the reference's pixels;
    ``"tensor"`` resizes with torch's uint8 kernel (see :func:`resize_tensor`)."""
    return TrainTransform(size, resize)


def val_transform(size: int = 300, resize: str = "pil") -> ValTransform:
    """Resize only; ``resize`` as in :func:`train_transform`."""
    return ValTransform(size, resize)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 Tensor[B, 3, H, W] -> float32, /255 then (x - mean) / std, as ToTensor + Normalize.

    On the CPU the three passes run image by image: one float image (1 MB at 300x300) stays in
    the core's cache between them, a batch of 32 (35 MB) does not (faster, same values;
    docs/performance.md). On a GPU the batch goes in one piece (three kernels, not three per image).
    """
    if images.device.type != "cpu":
        return _normalize_batch(images)
    mean, std = _mean_std(images.device)
    out = torch.empty(images.shape, dtype=torch.float32)
    for image, o in zip(images, out):
        torch.div(image, 255, out=o).sub_(mean).div_(std)
    return out


_MEAN_STD: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _mean_std(device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: torch.tensor(list, device="cuda") is a blocking host-to-device
    # copy, and this runs at every training step.
    device = torch.device(device)
    if device not in _MEAN_STD:
        _MEAN_STD[device] = (torch.tensor(MEAN, device=device).view(3, 1, 1),
                             torch.tensor(STD, device=device).view(3, 1, 1))
    return _MEAN_STD[device]


def _normalize_batch(images: torch.Tensor) -> torch.Tensor:
    mean, std = _mean_std(images.device)
    # uint8 / 255 gives float32 directly: the same values as .float() then / 255, one pass less
    return torch.div(images, 255).sub_(mean).div_(std)


def augmentation_stats(dataset, num_draws: int = 200, seed: int = 0, size: int = 300) -> dict:
    """Runs the training augmentation ``num_draws`` times over ``dataset`` (cycling through its
    images) and reports what it did.

    Args:
        dataset: a :class:`ssdwb.data.CocoDetection` (its own transform is not used).

    Returns:
        dict of numpy arrays, one entry per draw unless noted: ``option`` (index into
        ``CROP_OPTIONS``), ``kept`` / ``dropped`` (boxes), ``flip`` (bool), and per box
        ``size_before`` / ``size_after`` (sqrt of the box area as a fraction of the image,
        before the crop and after it, i.e. relative to the 300x300 network input).
    """

    transform = TrainTransform(size)
    torch.manual_seed(seed)
    out = {"option": [], "kept": [], "dropped": [], "flip": [], "size_before": [],
           "size_after": []}
    for d in range(num_draws):
        image, target = dataset.raw(d % len(dataset))
        _, t = transform(image, target)
        a = t["augment"]
        for k in ("option", "kept", "dropped", "flip"):
            out[k].append(a[k])
        for key, boxes in (("size_before", target["boxes"]), ("size_after", t["boxes"])):
            wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
            out[key].append((wh[:, 0] * wh[:, 1]).sqrt().numpy())
    return {k: (np.concatenate(v) if k.startswith("size") else np.asarray(v))
            for k, v in out.items()}
