"""2-process gloo DDP ends with the same weights as one process on the same global batch."""

import os
import socket

import torch
import torch.multiprocessing as mp

from ssdwb.anchors import dboxes300_coco
from ssdwb.box_coder import BoxCoder
from ssdwb.loss import MultiBoxLoss
from ssdwb.model import SSD300

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
