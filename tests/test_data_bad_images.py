"""Unreadable images: a training sample lists the files skipped to make it, every batch carries
them in ``batch["bad_images"]`` (with and without workers), and evaluation never skips: an
unreadable val image is an error naming the file, through worker processes too."""

import json
import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers the shared-memory tensor reducers)
from PIL import Image

from ssdwb.data import CocoDetection, build_loader, set_epoch, train_transform, val_transform
from ssdwb.data.loader import Batch, Collate


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    Image.new("RGB", (64, 48), (90, 140, 30)).save(root / "ok.jpg")
    Image.new("RGB", (64, 48), (90, 140, 30)).save(root / "full.jpg")
    data = (root / "full.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    names = ["ok.jpg", "missing.jpg", "ok.jpg", "truncated.jpg", "broken.jpg", "ok.jpg",
             "ok.jpg", "ok.jpg"]
    ann = root / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": n, "width": 64, "height": 48}
                   for i, n in enumerate(names)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 30, 20]}
                        for i in range(len(names))],
        "categories": [{"id": 1, "name": "a"}]}))
    return root


BAD = ["missing.jpg", "truncated.jpg", "broken.jpg"]


def test_sample_lists_what_it_skipped(root):
    ds = CocoDetection(root, root / "ann.json", skip_bad_images=True)
    _, t = ds[1]
    assert t["image_id"] == 3 and t["skipped"] == [str(root / "missing.jpg")]
    _, t = ds[3]  # two in a row
    assert t["image_id"] == 6
    assert t["skipped"] == [str(root / "truncated.jpg"), str(root / "broken.jpg")]
    assert ds[0][1]["skipped"] == [] and ds.bad_images == 3


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_carry_the_skipped_files(root, workers):
    ds = CocoDetection(root, root / "ann.json", transform=train_transform(size=32),
                       skip_bad_images=True)
    loader = build_loader(ds, 2, train=True, num_workers=workers, seed=1)
    set_epoch(loader, 0)
    got = [b["bad_images"] for b in loader]
    assert len(got) == 4 and all(isinstance(b, list) for b in got)
    # a sample lists every file it skipped: broken.jpg follows truncated.jpg, so the sample of
    # index 3 skips both and that of index 4 skips broken.jpg again
    assert sorted(p for b in got for p in b) == sorted(str(root / n) for n in BAD + BAD[2:])
    assert all(isinstance(p, str) for b in got for p in b)
    assert [] in got  # batches without a bad image say so too
    # and the same batches whatever the worker count
    again = build_loader(ds, 2, train=True, num_workers=2 - workers, seed=1)
    set_epoch(again, 0)
    assert [b["bad_images"] for b in again] == got


def test_bad_images_survive_the_batch_pickling(root):
    ds = CocoDetection(root, root / "ann.json", transform=val_transform(32), skip_bad_images=True)
    batch = Collate()([ds[i] for i in range(4)])
    assert batch["bad_images"] == [str(root / n) for n in BAD]
    back = pickle.loads(ForkingPickler.dumps(batch))
    assert isinstance(back, Batch) and back["bad_images"] == batch["bad_images"]
    assert torch.equal(back["images"], batch["images"])
    assert Collate()([ds[0]])["bad_images"] == []


def test_bad_images_survive_pinning(root, monkeypatch):
    """On CUDA the loader's pin-memory thread copies the batch (no GPU here: pinning is a
    no-op)."""
    from torch.utils.data._utils.pin_memory import pin_memory

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)
    ds = CocoDetection(root, root / "ann.json", transform=val_transform(32), skip_bad_images=True)
    batch = Collate()([ds[i] for i in range(4)])
    pinned = pin_memory(batch)
    assert isinstance(pinned, Batch) and pinned["bad_images"] == batch["bad_images"]
    assert len(pinned["bad_images"]) == 3 and torch.equal(pinned["images"], batch["images"])


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_never_skips(root, workers):
    """The val dataset is built without skip_bad_images: the loader raises, naming the file."""
    ds = CocoDetection(root, root / "ann.json", transform=val_transform(32))
    assert not ds.skip_bad_images
    loader = build_loader(ds, 2, train=False, num_workers=workers)
    with pytest.raises(FileNotFoundError, match="missing.jpg.*does not exist"):
        list(loader)
    for name, index in (("truncated.jpg", 3), ("broken.jpg", 4)):
        ds_one = torch.utils.data.Subset(ds, [index])
        loader = build_loader(ds_one, 1, train=False, num_workers=workers)
        with pytest.raises(OSError, match=f"{name}.*cannot be decoded"):
            list(loader)


EXIT_AFTER_ERROR = """
import gc, sys
from ssdwb.data import CocoDetection, build_loader, val_transform
root = sys.argv[1]
ds = CocoDetection(root, root + "/ann.json", transform=val_transform(32))
loader = build_loader(ds, 2, train=False, num_workers=2)
def evaluate():
    try:
        list(loader)
    except FileNotFoundError as e:
        print("raised:", e, flush=True)
evaluate()
gc.collect()  # frees the iterator (in a cycle with its traceback) before its workers stop
print("end of script", flush=True)
"""


def test_exit_after_an_eval_error_does_not_hang(root, tmp_path):
    """The workers of an iterator that raised and was freed by the garbage collector never got
    their end-of-work message (its queues were finalized first) and ignore SIGTERM: the exit
    hung forever in multiprocessing's join until Loader reaped them."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(EXIT_AFTER_ERROR)
    out = subprocess.run([sys.executable, str(script), str(root)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "raised:" in out.stdout and "missing.jpg" in out.stdout
    assert "end of script" in out.stdout


def test_orphaned_workers_are_reaped_by_the_next_iterator(root, monkeypatch):
    import gc

    from ssdwb.data import loader as loader_module

    monkeypatch.setattr(loader_module, "ORPHAN_GRACE_S", 0.0)
    ds = CocoDetection(root, root / "ann.json", transform=val_transform(32))
    loader = build_loader(ds, 2, train=False, num_workers=2)

    def fail():
        with pytest.raises(FileNotFoundError):
            list(loader)

    fail()
    gc.collect()
    workers = [w for _, ws, _ in loader_module._orphans for w in ws]
    assert workers
    ok = build_loader(torch.utils.data.Subset(ds, [0, 2]), 2, train=False, num_workers=1)
    assert len(list(ok)) == 1
    assert not any(w.is_alive() for w in workers)
    assert not any(w in ws for _, ws, _ in loader_module._orphans for w in workers)
