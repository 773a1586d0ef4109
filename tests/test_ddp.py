"""2-process gloo DDP ends with the same weights as one process on the same global batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ssdwb.ssd.anchors import dboxes300_coco
from ssdwb.ssd.box_coder import BoxCoder
from ssdwb.ssd.loss import MultiBoxLoss
from ssdwb.ssd.model import SSD300

STEPS, GLOBAL_BATCH = 2, 4


def make_batch():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(GLOBAL_BATCH, 3, 300, 300, generator=gen)
    boxes = [torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.3, 0.2, 0.9, 0.7]])] * GLOBAL_BATCH
    labels = [torch.tensor([1, 3])] * GLOBAL_BATCH
    gloc, glabel = BoxCoder(dboxes300_coco()).encode_batch(boxes, labels)
    return images, gloc.transpose(1, 2), glabel


def run_steps(model, images, gloc, glabel):
    crit = MultiBoxLoss(dboxes300_coco())
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    for _ in range(STEPS):
        ploc, plabel = model(images)
        loss = crit(ploc, plabel, gloc, glabel)
        opt.zero_grad()
        loss.backward()
        opt.step()


def fresh_model():
    torch.manual_seed(0)
    m = SSD300(num_classes=5)
    # BN on running statistics: per-rank batch statistics would differ from one process's.
    m.eval()
    return m


def worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(fresh_model())
    images, gloc, glabel = make_batch()
    part = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    run_steps(model, images[part], gloc[part], glabel[part])
    if rank == 0:
        torch.save(model.module.state_dict(), out)
    torch.distributed.destroy_process_group()


def test_two_process_ddp_matches_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.start_processes(worker, args=(2, port, str(out)), nprocs=2, start_method="spawn")
    ddp_state = torch.load(out, weights_only=True)
    single = fresh_model()
    run_steps(single, *make_batch())
    start = fresh_model().state_dict()
    moved = 0
    for name, p in single.state_dict().items():
        assert torch.isfinite(p).all(), name
        assert torch.allclose(p, ddp_state[name], atol=1e-5, rtol=1e-4), name
        moved += not torch.equal(p, start[name])
    assert moved > 50  # the weights did change


# --- train() itself on 2 gloo ranks -------------------------------------------------------------
def _train_worker(rank, world, port, kwargs_list):
    """Runs train() for each kwargs in turn, as one rank of a 2-process gloo group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from ssdwb.engine.loop import train

    for kwargs in kwargs_list:
        train(**kwargs)
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_train_resumes_bit_exact_and_evaluates_the_checkpointed_model(tmp_path):
    """Two ranks in train mode (BN batch statistics per rank) through train(): a run cut
    mid-epoch and resumed logs exactly the straight run's losses and mAPs, and the DDP eval's
    stats equal a 1-process eval of the saved checkpoint."""
    import json

    from ssdwb.config import preset
    from ssdwb.data.synthetic import make_shapes_coco

    make_shapes_coco(tmp_path / "data", num_train=16, num_val=6, seed=0)

    def cfg(run_id, **kw):
        return preset("demo", data_dir=str(tmp_path / "data"), run_dir=str(tmp_path / "runs"),
                      run_id=run_id, batch_size=2, epochs=2, eval_at=[1, 2], num_workers=0,
                      log_interval=1, eval_batch_size=3, warmup=2, lr=5e-3,
                      amp="off", channels_last=False, lr_decay_at=[2], **kw)

    runs = [{"config": cfg("straight")}, {"config": cfg("cut", max_iters=6)},
            {"resume": str(tmp_path / "runs" / "cut"), "overrides": ["max_iters=0"]}]
    mp.start_processes(_train_worker, args=(2, _free_port(), runs), nprocs=2,
                       start_method="spawn")

    def lines(name):
        return [json.loads(x) for x in (tmp_path / "runs" / name / "metrics.jsonl")
                .read_text().splitlines()]

    def values(name):
        return [{k: v for k, v in x.items() if k != "images_per_s"} for x in lines(name)]

    assert len([x for x in lines("straight") if "loss" in x]) == 8  # 16 images / (2 x 2) x 2
    assert values("cut") == values("straight")  # bit-exact: same floats, not approx
    summary = json.loads((tmp_path / "runs" / "cut" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "success"

    # The DDP eval's detections (each rank scored its own shard) against one process scoring
    # every val image with the checkpointed model (rank 0's weights and BN statistics).
    import numpy as np

    from ssdwb.data import CocoDetection, build_loader, val_transform
    from ssdwb.evaluation.coco_eval import coco_eval
    from ssdwb.evaluation.inference import infer
    from ssdwb.runs.checkpoint import load_checkpoint
    from ssdwb.ssd.anchors import dboxes300_coco
    from ssdwb.ssd.box_coder import BoxCoder
    from ssdwb.ssd.model import SSD300

    ckpt = load_checkpoint(tmp_path / "runs" / "straight" / "checkpoint.pt")
    ds = CocoDetection(tmp_path / "data" / "val", tmp_path / "data" / "annotations" /
                       "instances_val.json", transform=val_transform(300))
    model = SSD300(num_classes=ds.num_classes, width=0.25)
    model.load_state_dict(ckpt["model"])
    loader = build_loader(ds, 3, train=False, distributed=False)
    single, _ = infer(model, loader, BoxCoder(dboxes300_coco()), ds.label_to_cat,
                      torch.device("cpu"))
    rows = json.loads((tmp_path / "runs" / "straight" / "detections_epoch2.json").read_text())
    gathered = np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]]
                         for r in rows]).reshape(-1, 7)

    def ordered(a):
        return a[np.lexsort((-a[:, 5], a[:, 0]))]

    assert len(single) == len(gathered) > 0
    assert np.allclose(ordered(single), ordered(gathered), atol=1e-4)
    ddp_eval = [x for x in lines("straight") if x.get("eval")][-1]
    for k, v in coco_eval(ds.coco, single).items():
        assert ddp_eval[k] == pytest.approx(v, abs=1e-6), k
