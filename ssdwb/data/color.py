"""Colour jitter with the reference's pixels, faster: torchvision's ``ColorJitter`` on PIL images
with its hue, brightness and contrast steps done by table lookups.

The reference jitters PIL images with torchvision's ``ColorJitter``, whose hue step
(``adjust_hue``) converts the image to HSV, adds to H and converts back. Pillow's two conversions
(``rgb2hsv_row`` / ``hsv2rgb`` in its Convert.c) are per-pixel float code, the largest step of the
training input pipeline after decoding and resizing (the tables about halve it; figures from
``bench/bench_data.py --stages`` in docs/performance.md). Their results depend on little of
the input, so they become lookups, done in numpy with in-place integer steps (each temporary
array costs as much as a lookup):

* H of a colour depends only on (r - g, g - b): it is built from (max - c) / (max - min).
  A 511 x 511 table. S depends on (max - min, max): a 256 x 256 table. V is max(r, g, b).
* Back to RGB, every output channel is round(V * w) with a weight w that depends on (H, S)
  only: 1 for the channel that is V, and (1 - s), (1 - s f), (1 - s (1 - f)) for the others,
  chosen by the sector of H: a table of 65,536 x (r, g, b, 0) weights, gathered as 16-byte
  elements (numpy's ``take`` on rows of 12 bytes is half as fast), multiplied by V as one
  contiguous float32 array, and written back to Pillow as RGBX.

Brightness and contrast blend with a constant image, so they become 256-entry ``point`` tables
made by Pillow's own ``blend``. The H and S tables hold Pillow's own conversion of one
representative colour per entry; the weights repeat Convert.c's float32 / float64 steps and are
stored as float32 (the same bytes come out for all 2^24 (H, S, V), tested). The tables are built
once per process. Tests compare both directions with Pillow on all 2^24 colours, and
``ColorJitter`` with torchvision's on random images and factors.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["ColorJitter", "adjust_brightness", "adjust_contrast", "adjust_hue", "rgb_to_hsv",
           "hsv_to_rgb"]

_tables: dict[str, np.ndarray] | None = None
# H is looked up at 512 * (r - g) + (g - b) + _HUE_OFFSET: a shift instead of a multiply
_HUE_OFFSET = 255 * 512 + 255


def _pil(pixels: np.ndarray, mode: str, to: str) -> np.ndarray:
    """Pillow's conversion of uint8 pixels (array [N, 3]) from ``mode`` to ``to``."""
    n = pixels.shape[0]
    image = Image.frombytes(mode, (n, 1), np.ascontiguousarray(pixels, np.uint8).tobytes())
    return np.asarray(image.convert(to)).reshape(n, 3)


def _build_tables() -> dict[str, np.ndarray]:
    # H per (r - g, g - b): one representative colour (smallest valid g); pairs that no colour
    # has are never looked up.
    dx = np.repeat(np.arange(-255, 256), 511)
    dy = np.tile(np.arange(-255, 256), 511)
    g = np.maximum(np.maximum(-dx, dy), 0)
    rgb = np.stack([g + dx, g, g - dy], 1).clip(0, 255)
    hue = np.zeros((511, 512), np.uint8)
    hue[:, :511] = _pil(rgb, "RGB", "HSV")[:, 0].reshape(511, 511)
    # S per (max - min, max): the colour (max, max - cr, max - cr).
    cr = np.repeat(np.arange(256), 256)
    mx = np.tile(np.arange(256), 256)
    rgb = np.stack([mx, mx - cr, mx - cr], 1).clip(0, 255)
    sat = np.ascontiguousarray(_pil(rgb, "RGB", "HSV")[:, 1])
    # Weights per (H, S), in Convert.c's types: i and the products are double, f and fs float.
    h = np.repeat(np.arange(256, dtype=np.float64), 256)
    s = np.tile(np.arange(256, dtype=np.float64), 256)
    hd = h * 6.0 / 255.0
    sector = np.floor(hd)
    f = (hd - sector).astype(np.float32)
    fs = (s / 255.0).astype(np.float32)
    one = np.ones_like(h)
    p = 1.0 - fs.astype(np.float64)
    q = 1.0 - (fs * f).astype(np.float64)  # fs * f is a float product
    t = 1.0 - fs.astype(np.float64) * (1.0 - f.astype(np.float64))
    # (r, g, b) per sector: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q); sector 6 is 0.
    choices = np.stack([one, q, p, t])  # [4, 65536]
    picks = np.array([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]])
    pick = picks[sector.astype(np.int64) % 6]  # [65536, 3]
    weights = np.zeros((65536, 4), np.float32)  # (r, g, b, 0): 16-byte rows
    weights[:, :3] = np.take_along_axis(choices, pick.T, 0).T
    # gathered as complex128, numpy's 16-byte element: twice as fast as rows of a 2-D take
    return {"hue": hue.ravel(), "sat": sat, "weights": weights.view(np.complex128).ravel()}


def _get_tables() -> dict[str, np.ndarray]:
    global _tables
    if _tables is None:
        _tables = _build_tables()
    return _tables


def _hsv(r: np.ndarray, g: np.ndarray, b: np.ndarray):
    """uint8 channels (array [N] each) -> H, S, V (uint8 arrays [N])."""
    t = _get_tables()
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    i = np.subtract(r, g, dtype=np.int32)  # in-place integer steps: no temporaries
    i <<= 9
    i += g
    i -= b
    i += _HUE_OFFSET
    hue = t["hue"].take(i)
    i = np.subtract(mx, mn, dtype=np.int32)
    i <<= 8
    i += mx
    return hue, t["sat"].take(i), mx


def _rgbx(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """H, S, V (uint8 arrays [N] each) -> uint8 array [N, 4] (r, g, b, 0)."""
    i = h.astype(np.int32)
    i <<= 8
    i += s
    # [N * 4]: (r, g, b, 0) weights per (H, S)
    x = _get_tables()["weights"].take(i).view(np.float32)
    # V in all four bytes of a uint32, then as float32 [N * 4]: one contiguous multiply. The
    # broadcast x[N, 4] *= v[:, None] runs numpy's inner loop once per pixel, 4 elements at a
    # time.
    v4 = v.astype(np.uint32)
    v4 *= np.uint32(0x01010101)
    x *= v4.view(np.uint8).astype(np.float32)
    # C's round() of the double product V * w: float32 weights and truncating x + 0.5 (x >= 0)
    # give the same bytes for all 2^24 (H, S, V) (tested), at half the table size and float32
    # speed
    x += 0.5
    return x.astype(np.uint8).reshape(-1, 4)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 Tensor[N, 3] RGB -> uint8 Tensor[N, 3] HSV, as Pillow's ``convert("HSV")``."""
    a = np.ascontiguousarray(rgb.numpy().T)
    return torch.from_numpy(np.stack(_hsv(*a), 1))


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """uint8 Tensor[N, 3] HSV -> uint8 Tensor[N, 3] RGB, as Pillow's ``convert("RGB")``."""
    a = np.ascontiguousarray(hsv.numpy().T)
    return torch.from_numpy(np.ascontiguousarray(_rgbx(*a)[:, :3]))


def adjust_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """``torchvision.transforms.functional.adjust_hue`` on an RGB PIL image, same pixels."""
    if image.mode != "RGB":
        return F.adjust_hue(image, hue_factor)
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    # planes through Pillow's split: contiguous uint8 channels without a numpy transpose
    h, s, v = _hsv(*(np.asarray(band).reshape(-1) for band in image.split()))
    # torchvision adds np.int32(hue_factor * 255) cast to uint8 to H, wrapping around
    h += np.int32(hue_factor * 255).astype(np.uint8)
    return Image.frombytes("RGB", image.size, _rgbx(h, s, v), "raw", "RGBX")


_RAMP = Image.frombytes("L", (256, 1), bytes(range(256)))
_LEVELS = np.arange(256, dtype=np.int64)


def _blend_point(image: Image.Image, degenerate: int, factor: float) -> Image.Image:
    """``Image.blend(constant image, image, factor)`` through a table of Pillow's own blend of
    every byte value. The table goes to the core's ``point`` directly: ``Image.point`` would
    call ``round()`` on each of its 768 entries, which costs more than the lookup itself."""
    table = Image.blend(Image.new("L", (256, 1), degenerate), _RAMP, factor).tobytes()
    return image._new(image.im.point(list(table) * 3, None))


def adjust_brightness(image: Image.Image, factor: float) -> Image.Image:
    """``ImageEnhance.Brightness`` (what torchvision calls on PIL images) as a per-value table:
    it blends with a black image, so each output byte depends on its input byte only."""
    if image.mode != "RGB":
        return F.adjust_brightness(image, factor)
    return _blend_point(image, 0, factor)


def adjust_contrast(image: Image.Image, factor: float) -> Image.Image:
    """``ImageEnhance.Contrast`` as a per-value table: it blends with a constant grey image of the
    rounded mean of the image's luminance (computed here as Pillow computes it)."""
    if image.mode != "RGB":
        return F.adjust_contrast(image, factor)
    grey = image.convert("L")
    # ImageStat's mean (the sum of the histogram's levels / the pixel count, both exact
    # integers) without its Python loop over the 256 levels
    total = int(np.dot(grey.histogram(), _LEVELS))
    count = grey.size[0] * grey.size[1]
    mean = int(total / count + 0.5) if count else 0  # ImageStat gives 0 for an empty image
    return _blend_point(image, mean, factor)


class ColorJitter(v2.ColorJitter):
    """``torchvision.transforms.v2.ColorJitter``: same parameters, random draws and pixels; on
    RGB PIL images brightness, contrast and hue go through the functions above."""

    def forward(self, *inputs):
        if len(inputs) == 1 and isinstance(inputs[0], Image.Image):
            # what v2's forward does for one image, minus its input checks (their cost per
            # image: docs/performance.md)
            return self.transform(inputs[0], self.make_params([inputs[0]]))
        return super().forward(*inputs)

    def transform(self, inpt, params):
        if not isinstance(inpt, Image.Image) or inpt.mode != "RGB":
            return super().transform(inpt, params)
        steps = (("brightness_factor", adjust_brightness), ("contrast_factor", adjust_contrast),
                 ("saturation_factor", F.adjust_saturation), ("hue_factor", adjust_hue))
        out = inpt
        for fn_id in params["fn_idx"].tolist():
            name, fn = steps[fn_id]
            if params[name] is not None:
                out = fn(out, params[name])
        return out
