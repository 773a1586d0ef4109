"""ssdwb.data.color gives Pillow's / torchvision's pixels exactly."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ssdwb.data.color import (
    ColorJitter,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    hsv_to_rgb,
    rgb_to_hsv,
)

ALL = np.arange(1 << 24, dtype=np.uint32)
ALL = np.stack([(ALL >> 16) & 255, (ALL >> 8) & 255, ALL & 255], 1).astype(np.uint8)


def test_rgb_to_hsv_equals_pillow_on_every_colour():
    want = np.asarray(Image.fromarray(ALL.reshape(4096, 4096, 3), "RGB").convert("HSV"))
    got = rgb_to_hsv(torch.from_numpy(ALL)).numpy()
    assert np.array_equal(got, want.reshape(-1, 3))


def test_hsv_to_rgb_equals_pillow_on_every_triple():
    want = np.asarray(Image.frombytes("HSV", (4096, 4096), ALL.tobytes()).convert("RGB"))
    got = hsv_to_rgb(torch.from_numpy(ALL)).numpy()
    assert np.array_equal(got, want.reshape(-1, 3))


def noise_image(seed, size=(97, 61)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("factor", [-0.5, -0.05, -0.0123, 0.0, 0.004, 0.031, 0.05, 0.5])
def test_adjust_hue_equals_torchvision(factor):
    image = noise_image(1)
    assert np.array_equal(np.asarray(adjust_hue(image, factor)),
                          np.asarray(F.adjust_hue(image, factor)))
    grey = image.convert("L")  # other modes go to torchvision's own kernel
    assert np.array_equal(np.asarray(adjust_hue(grey, factor)), np.asarray(grey))
    with pytest.raises(ValueError):
        adjust_hue(image, 0.6)


@pytest.mark.parametrize("seed", range(6))
def test_color_jitter_equals_torchvision_v2(seed):
    """Same random draws (parameters and order) and the same pixels as v2.ColorJitter."""
    image = noise_image(seed, (300, 300))
    ours = ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05)
    theirs = v2.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05)
    torch.manual_seed(seed)
    a = ours(image)
    after = torch.rand(1)
    torch.manual_seed(seed)
    b = theirs(image)
    assert torch.equal(torch.rand(1), after)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    tensor = F.pil_to_tensor(image)  # tensors go to torchvision's path
    torch.manual_seed(seed)
    x = ours(tensor)
    torch.manual_seed(seed)
    assert torch.equal(x, theirs(tensor))


@pytest.mark.parametrize("factor", [0.0, 0.5, 0.875, 0.9371, 1.0, 1.1, 1.125, 1.5, 3.0])
def test_brightness_and_contrast_equal_torchvision(factor):
    for seed in range(3):
        image = noise_image(seed)
        assert np.array_equal(np.asarray(adjust_brightness(image, factor)),
                              np.asarray(F.adjust_brightness(image, factor)))
        assert np.array_equal(np.asarray(adjust_contrast(image, factor)),
                              np.asarray(F.adjust_contrast(image, factor)))


def test_contrast_mean_rounds_as_imagestat():
    """The grey level of the contrast blend is ImageStat's mean rounded half up: images whose
    mean luminance is just below, at and above a half level, and a constant image."""
    from PIL import ImageEnhance

    for levels in ([10, 11], [10, 11, 11, 10, 11], [200, 201, 200], [0], [255, 254]):
        grey = Image.frombytes("L", (len(levels), 1), bytes(levels))
        image = Image.merge("RGB", [grey, grey, grey])
        for factor in (0.5, 1.5):
            assert np.array_equal(np.asarray(adjust_contrast(image, factor)),
                                  np.asarray(ImageEnhance.Contrast(image).enhance(factor)))
