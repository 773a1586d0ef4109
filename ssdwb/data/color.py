"""Colour jitter with the reference's pixels, faster: torchvision's ``ColorJitter`` on PIL images
with its hue, brightness and contrast steps done by table lookups.

The reference jitters PIL images with torchvision's ``ColorJitter``, whose hue step
(``adjust_hue``) converts the image to HSV, adds to H and converts back. Pillow's two conversions
(``rgb2hsv_row`` / ``hsv2rgb`` in its Convert.c) are per-pixel float code, the largest step of the
training input pipeline after decoding and resizing (2.7 ms per image here; 2.1 ms with the
tables, ``bench/bench_data.py --stages``). Their results depend on little of the input, so they
become lookups:

* H of a colour depends only on (r - g, g - b): it is built from (max - c) / (max - min).
  A 511 x 511 table. S depends on (max - min, max): a 256 x 256 table. V is max(r, g, b).
* Back to RGB, every output channel is round(V * w) with a weight w that depends on (H, S)
  only: 1 for the channel that is V, and (1 - s), (1 - s f), (1 - s (1 - f)) for the others,
  chosen by the sector of H: a table of 65,536 x 3 weights.

Brightness and contrast blend with a constant image, so they become 256-entry ``point`` tables
made by Pillow's own ``blend``. The H and S tables hold Pillow's own conversion of one
representative colour per entry; the weights repeat Convert.c's float32 / float64 steps and are
stored as float32 (the same bytes come out for all 2^24 (H, S, V), tested). The tables are built
once per process (~0.1 s). Tests compare both directions with Pillow on all 2^24 colours, and
``ColorJitter`` with torchvision's on random images and factors.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageStat
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["ColorJitter", "adjust_brightness", "adjust_contrast", "adjust_hue", "rgb_to_hsv",
           "hsv_to_rgb"]

_tables: dict[str, torch.Tensor] | None = None


def _pil(pixels: torch.Tensor, mode: str, to: str) -> torch.Tensor:
    """Pillow's conversion of uint8 pixels (Tensor[N, 3]) from ``mode`` to ``to``."""
    n = pixels.shape[0]
    image = Image.frombytes(mode, (n, 1), pixels.numpy().tobytes())
    return torch.from_numpy(np.asarray(image.convert(to)).reshape(n, 3).copy())


def _build_tables() -> dict[str, torch.Tensor]:
    # H per (r - g, g - b): one representative colour (smallest valid g); pairs that no colour
    # has are never looked up.
    dx = torch.arange(-255, 256).repeat_interleave(511)
    dy = torch.arange(-255, 256).repeat(511)
    g = torch.maximum(torch.maximum(-dx, dy), torch.zeros_like(dx))
    rgb = torch.stack([g + dx, g, g - dy], 1).clamp(0, 255).to(torch.uint8)
    hue = _pil(rgb, "RGB", "HSV")[:, 0].contiguous()
    # S per (max - min, max): the colour (max, max - cr, max - cr).
    cr = torch.arange(256).repeat_interleave(256)
    mx = torch.arange(256).repeat(256)
    rgb = torch.stack([mx, mx - cr, mx - cr], 1).clamp(0, 255).to(torch.uint8)
    sat = _pil(rgb, "RGB", "HSV")[:, 1].contiguous()
    # Weights per (H, S), in Convert.c's types: i and the products are double, f and fs float.
    h = torch.arange(256, dtype=torch.float64).repeat_interleave(256)
    s = torch.arange(256, dtype=torch.float64).repeat(256)
    hd = h * 6.0 / 255.0
    sector = torch.floor(hd)
    f = (hd - sector).float()
    fs = (s / 255.0).float()
    one = torch.ones_like(h)
    p = 1.0 - fs.double()
    q = 1.0 - (fs * f).double()  # fs * f is a float product
    t = 1.0 - fs.double() * (1.0 - f.double())
    # (r, g, b) per sector: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q); sector 6 is 0.
    choices = torch.stack([one, q, p, t])  # [4, 65536]
    picks = torch.tensor([[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]])
    pick = picks[sector.long() % 6]  # [65536, 3]
    weights = choices.gather(0, pick.t())  # [3, 65536]
    return {"hue": hue, "sat": sat, "weights": weights.t().float().contiguous()}


def _get_tables() -> dict[str, torch.Tensor]:
    global _tables
    if _tables is None:
        _tables = _build_tables()
    return _tables


def _hsv(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor):
    """int32 channels (Tensor[N] each) -> H, S (uint8), V (int32)."""
    t = _get_tables()
    mx = torch.maximum(torch.maximum(r, g), b)
    cr = mx - torch.minimum(torch.minimum(r, g), b)
    hue = t["hue"].index_select(0, (r - g).mul_(511).add_(g - b).add_(255 * 511 + 255))
    sat = t["sat"].index_select(0, cr.mul_(256).add_(mx))
    return hue, sat, mx


def _rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H, S (uint8 or int32), V (any integer dtype), Tensor[N] each -> uint8 Tensor[N, 3]."""
    weights = _get_tables()["weights"]  # [65536, 3]: (r, g, b) weights per (H, S)
    x = weights.index_select(0, h.to(torch.int32).mul_(256).add_(s)).mul_(v.float()[:, None])
    # C's round() of the double product V * w: float32 weights and floor(x + 0.5) give the same
    # bytes for all 2^24 (H, S, V) (tested), at half the table size and float32 speed
    return x.add_(0.5).floor_().to(torch.uint8)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 Tensor[N, 3] RGB -> uint8 Tensor[N, 3] HSV, as Pillow's ``convert("HSV")``."""
    h, s, v = _hsv(*rgb.to(torch.int32).unbind(1))
    return torch.stack([h, s, v.to(torch.uint8)], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """uint8 Tensor[N, 3] HSV -> uint8 Tensor[N, 3] RGB, as Pillow's ``convert("RGB")``."""
    return _rgb(*hsv.unbind(1))


def adjust_hue(image: Image.Image, hue_factor: float) -> Image.Image:
    """``torchvision.transforms.functional.adjust_hue`` on an RGB PIL image, same pixels."""
    if image.mode != "RGB":
        return F.adjust_hue(image, hue_factor)
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor ({hue_factor}) is not in [-0.5, 0.5].")
    rgb = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(-1, 3)
    h, s, v = _hsv(*rgb.to(torch.int32).unbind(1))
    # torchvision adds np.int32(hue_factor * 255) cast to uint8 to H, wrapping around
    shift = int(np.int32(hue_factor * 255).astype(np.uint8))
    out = _rgb(h.to(torch.int32).add_(shift).bitwise_and_(255), s, v)
    return Image.frombuffer("RGB", image.size, out.numpy().tobytes(), "raw", "RGB", 0, 1)


_RAMP = Image.frombytes("L", (256, 1), bytes(range(256)))


def _blend_point(image: Image.Image, degenerate: int, factor: float) -> Image.Image:
    """``Image.blend(constant image, image, factor)`` through a table of Pillow's own blend of
    every byte value. The table goes to the core's ``point`` directly: ``Image.point`` would
    call ``round()`` on each of its 768 entries (0.15 ms, more than the lookup itself)."""
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
    mean = int(ImageStat.Stat(image.convert("L")).mean[0] + 0.5)
    return _blend_point(image, mean, factor)


class ColorJitter(v2.ColorJitter):
    """``torchvision.transforms.v2.ColorJitter``: same parameters, random draws and pixels; on
    RGB PIL images brightness, contrast and hue go through the functions above."""

    def forward(self, *inputs):
        if len(inputs) == 1 and isinstance(inputs[0], Image.Image):
            # what v2's forward does for one image, minus its input checks (0.1 ms an image)
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
