"""Per-sample augmentation seeds: what an image gets in an epoch depends on (seed, epoch, index)
only, not on the rank, the worker count, persistent workers or where a resumed epoch starts."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ssdwb.data import CocoDetection, SampleKey, build_loader, sample_seeds, set_epoch
from ssdwb.data.transforms import train_transform


@pytest.fixture(scope="module")
def same_image(tmp_path_factory):
    """16 entries of one image with the same boxes: only the augmentation tells them apart."""
    root = tmp_path_factory.mktemp("same")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(root / "a.jpg")
    images = [{"id": i, "file_name": "a.jpg", "width": 160, "height": 120} for i in range(1, 17)]
    anns = [{"id": 2 * i + k, "image_id": i, "category_id": 1, "bbox": bbox}
            for i in range(1, 17) for k, bbox in enumerate(([10, 10, 50, 40], [80, 30, 60, 70]))]
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 1, "name": "a"}]}))
    return CocoDetection(root, ann, transform=train_transform(size=64))


def batches(loader, epoch, n=None):
    set_epoch(loader, epoch)
    out = []
    for batch in loader:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def by_image(batch_list):
    """image id -> (pixels, boxes) of the epoch."""
    out = {}
    for b in batch_list:
        for k, image_id in enumerate(b["image_ids"].tolist()):
            out[image_id] = (b["images"][k], b["boxes"][k])
    return out


def test_ranks_draw_differently(same_image):
    """Under the old per-epoch worker seeding every rank's i-th image had the same draws."""
    firsts = []
    for rank in (0, 1):
        torch.manual_seed(0)  # two processes, seeded alike
        loader = build_loader(same_image, 4, train=True, rank=rank, world_size=2, seed=3)
        set_epoch(loader, 0)
        keys = list(loader.sampler)
        assert all(isinstance(k, SampleKey) for k in keys)
        firsts.append((keys, batches(loader, 0, 1)[0]))
    (k0, b0), (k1, b1) = firsts
    assert not {k.index for k in k0} & {k.index for k in k1}
    assert k0[0].seed != k1[0].seed
    for i in range(4):  # the same image and boxes, different crops/flips/colours
        assert not torch.equal(b0["images"][i], b1["images"][i])
    assert not all(torch.equal(a, b) for a, b in zip(b0["boxes"], b1["boxes"]))


def test_seeds_come_from_seed_epoch_and_index(same_image):
    loader = build_loader(same_image, 4, train=True, seed=3)
    set_epoch(loader, 2)
    keys = list(loader.sampler)
    table = sample_seeds(3, 2, len(same_image))
    assert [k.seed for k in keys] == [int(table[k.index]) for k in keys]
    assert sorted(k.index for k in keys) == list(range(16))
    assert len(set(table.tolist())) == 16 and table.dtype == np.uint32
    assert not np.array_equal(table, sample_seeds(3, 1, 16))
    assert not np.array_equal(table, sample_seeds(4, 2, 16))
    assert np.array_equal(sample_seeds(3, 2, 8), table[:8])  # an index's seed, whatever n


def test_key_sample_is_fixed_and_leaves_the_callers_rng_alone(same_image):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = same_image[SampleKey(5, 1234)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)  # another global state: same sample
    b = same_image[SampleKey(5, 1234)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    c = same_image[SampleKey(5, 1235)]
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(1234)  # an int index draws from the global generator, as before
    d = same_image[5]
    assert torch.equal(a[0], d[0]) and a[1]["augment"] == d[1]["augment"]
    assert not torch.equal(torch.get_rng_state(), before)


def test_same_sample_whatever_the_workers_and_persistent_across_epochs(same_image):
    def epochs(**kw):
        loader = build_loader(same_image, 4, train=True, seed=7, **kw)
        return [by_image(batches(loader, e)) for e in (0, 1)]

    single = epochs(num_workers=0)
    for other in (epochs(num_workers=2), epochs(num_workers=2, persistent_workers=True),
                  epochs(num_workers=0)):  # and run to run
        for e in (0, 1):
            assert single[e].keys() == other[e].keys() and len(single[e]) == 16
            for image_id, (pixels, boxes) in single[e].items():
                assert torch.equal(pixels, other[e][image_id][0]), (e, image_id)
                assert torch.equal(boxes, other[e][image_id][1])
    # another epoch, other draws for the same image
    assert sum(torch.equal(single[0][i][0], single[1][i][0]) for i in single[0]) <= 1


def test_resume_mid_epoch_with_workers_is_exact(same_image):
    straight = batches(build_loader(same_image, 4, train=True, seed=2, num_workers=2), 1)
    resumed = build_loader(same_image, 4, train=True, seed=2, num_workers=2)
    set_epoch(resumed, 1)
    resumed.sampler.skip_batches(2, 4)
    rest = list(resumed)
    assert len(rest) == 2
    for a, b in zip(straight[2:], rest):
        assert torch.equal(a["image_ids"], b["image_ids"]) and torch.equal(a["images"], b["images"])
    assert len(batches(resumed, 1)) == 4  # only the resumed pass is shortened


def test_eval_loader_yields_plain_indices(same_image):
    loader = build_loader(same_image, 4, train=False)
    assert list(loader.sampler) == list(range(16))
