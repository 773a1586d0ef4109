"""DataLoader factory: sharded sampling, worker seeding, batch collation and box encoding.

Every rank reads its own shard (``DistributedSampler``; the 2019 reference built one but never
used it, so each rank read the whole dataset). A single process uses the same sampler with one
replica, so the sample order depends only on (seed, epoch): resuming at epoch e reproduces it.

Batches carry uint8 images; whoever runs the model normalises them on its device
(``normalize(batch["images"].to(device))``, as ``train.py`` and ``evaluate.py`` do): float32
batches are four times the bytes to move from a worker to the training process and on to the
GPU, where the normalisation is free. What mattered more on the CPU was the number of tensors
per batch (see :class:`Batch`): with 2 workers on 2 cores, ``bench/bench_data.py`` went from 113
to 114 img/s/core with uint8 images alone and to 140 with the packed batch.

Where the boxes get encoded (``encode_on``):

* ``"worker"`` (default on CPU): ``BoxCoder.encode_batch`` runs in the loader's worker processes,
  in parallel with the training step; the training process only receives finished targets.
* ``"device"`` (default on CUDA): the collate returns the raw box lists and the training loop
  encodes the batch on the GPU in one batched call, which keeps the CPU workers for decoding and
  augmenting, the bottleneck of a GPU node's input pipeline.

Measured on CPU (``bench/bench_data.py --stages``, 2026-11-24): the encode costs 0.23 ms per
image, about 4 % of a worker's work per image (decoding and augmenting take ~6 ms). Where it
runs does not change the loader's throughput in the bench (2 workers: 144.0 img/s/core encoding
in the workers, 145.2 in the consumer; on 2026-12-01's faster host 164-214 and 201-208 over
three runs, inside the bench's run-to-run spread), because the bench's consumer has nothing
else to do; in training the consumer is the training step, and on CPU its encode (7 ms per batch
of 32) would be added to every step, while in the workers it overlaps with it: hence "worker" on
CPU. On CUDA the same 4 % of the workers' CPU is what "device" saves, for a few batched kernels
on the GPU (not measured: this machine has no GPU; ``tests/test_box_coder.py`` checks that CUDA
and CPU encodes agree where a GPU is present).
"""

from __future__ import annotations

import atexit
import weakref

import torch
from torch.utils.data import DataLoader, DistributedSampler, default_collate

__all__ = ["Batch", "Collate", "Loader", "build_loader", "set_epoch"]


class Batch(dict):
    """The batch dict, sent between processes in one piece.

    A worker sends each tensor of a batch through its own shared-memory segment and file
    descriptor, and the receiver fetches every descriptor over a socket: with per-image box and
    label tensors that was 68 transfers per batch of 32, and the training process spent more time
    receiving batches than normalising them. Pickled, the small tensors travel by value as numpy
    arrays (the boxes and labels of all images concatenated, with the per-image counts; the image
    ids and sizes) and become tensors again on arrival, the boxes and labels split per image;
    only the large tensors (images, encoded targets) go through shared memory.
    """

    _PACKED = ("boxes", "labels")  # lists of per-image tensors
    _BY_VALUE = ("image_ids", "orig_sizes")  # one small tensor each

    def __reduce__(self):
        if not all(k in self for k in self._PACKED):
            return Batch, (dict(self),)
        rest = {k: v for k, v in self.items() if k not in self._PACKED + self._BY_VALUE}
        small = {k: self[k].numpy() for k in self._BY_VALUE if k in self}
        counts = [len(b) for b in self["boxes"]]
        packed = (torch.cat(self["boxes"]).reshape(-1, 4).numpy(),
                  torch.cat(self["labels"]).numpy(), counts)
        return _unpack_batch, (rest, small, packed)


def _unpack_batch(rest: dict, small: dict, packed) -> Batch:
    boxes, labels, counts = packed
    batch = Batch(rest)
    batch.update({k: torch.from_numpy(v) for k, v in small.items()})
    batch["boxes"] = list(torch.from_numpy(boxes).split(counts))
    batch["labels"] = list(torch.from_numpy(labels).split(counts))
    return batch


class Collate:
    """Stacks a list of ``(uint8 image, target)`` into a batch dict.

    Returns ``{"images": uint8 Tensor[B, 3, H, W], "boxes": list of Tensor[N_b, 4],
    "labels": list of Tensor[N_b], "image_ids": Tensor[B], "orig_sizes": Tensor[B, 2] (h, w)}``,
    plus ``"gloc"`` (Tensor[B, P, 4] xywh) and ``"glabel"`` (Tensor[B, P]) when a ``coder`` is
    given (encoding in the worker).

    The images stay uint8: the consumer normalises them where the model runs
    (:func:`ssdwb.data.normalize` after ``.to(device)``). A batch crosses from a worker to the
    training process (and to the GPU) at a quarter of the float32 size; in a worker process the
    batch is stacked straight into shared memory, as ``default_collate`` does, instead of being
    copied there when it is sent.
    """

    def __init__(self, coder=None):
        self.coder = coder

    def __call__(self, samples):
        images = default_collate([s[0] for s in samples])
        targets = [s[1] for s in samples]
        batch = Batch({
            "images": images,
            "boxes": [t["boxes"] for t in targets],
            "labels": [t["labels"] for t in targets],
            "image_ids": torch.tensor([t["image_id"] for t in targets], dtype=torch.int64),
            "orig_sizes": torch.tensor([t["orig_size"] for t in targets], dtype=torch.int64),
        })
        if self.coder is not None:
            batch["gloc"], batch["glabel"] = self.coder.encode_batch(batch["boxes"],
                                                                     batch["labels"])
        return batch


def _worker_init(worker_id: int) -> None:
    import signal

    from ssdwb.runtime import tune_cpu_allocator

    torch.set_num_threads(1)  # workers share the cores with the training step
    tune_cpu_allocator()
    # Slurm signals every process of a job step: USR1/TERM are for the training process, which
    # checkpoints and then shuts its workers down (they also exit when their parent dies).
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# Iterators that have worker processes, shut down at exit (see _shutdown_workers_at_exit).
_worker_iterators: weakref.WeakSet = weakref.WeakSet()


class Loader(DataLoader):
    """``DataLoader`` whose worker processes are shut down before the interpreter exits.

    The workers ignore SIGTERM (:func:`_worker_init`), and multiprocessing's exit handler stops
    daemonic children with SIGTERM and then waits for them: a loader whose iterator outlives the
    program's code (a module-level ``loader`` with ``persistent_workers=True``, or an iterator
    left part-way through an epoch) would otherwise hang the exit forever on CPU. torch shuts
    persistent workers down at exit itself only when it pins memory."""

    def _get_iterator(self):
        iterator = super()._get_iterator()
        if self.num_workers > 0:
            _worker_iterators.add(iterator)
        return iterator


@atexit.register
def _shutdown_workers_at_exit() -> None:
    # Registered after torch and multiprocessing register theirs, so it runs before both: the
    # workers get the end-of-work message while the queues still work.
    for iterator in list(_worker_iterators):
        iterator._shutdown_workers()


class ShardSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch part-way: ``skip_batches(n, batch_size)``
    drops the first ``n`` batches of the next pass without loading them.

    Resuming mid-epoch must not load the skipped batches when ``num_workers=0``: their random
    augmentations would consume the restored RNG state of the training process."""

    start = 0

    def skip_batches(self, n: int, batch_size: int) -> None:
        self.start = n * batch_size

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        self.start = 0  # only the pass that resumes is shortened
        return iter(indices)


def build_loader(dataset, batch_size: int, train: bool, distributed: bool | None = None,
                 num_workers: int = 0, seed: int = 0, coder=None, encode_on: str = "worker",
                 device: torch.device | str = "cpu", drop_last: bool | None = None,
                 persistent_workers: bool = False, rank: int | None = None,
                 world_size: int | None = None) -> Loader:
    """A DataLoader over ``dataset`` for one rank.

    Args:
        batch_size: images per batch on this rank.
        train: shuffle (by seed and epoch) and drop the last partial batch.
        distributed: shard over ``torch.distributed`` ranks; None: shard when it is initialised.
        coder: a ``BoxCoder``; with ``encode_on="worker"`` the batches carry encoded targets.
        device: where training runs; pinned memory when it is CUDA.
        rank, world_size: override the process group's (to inspect another rank's shard).
    """
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = world_size or (torch.distributed.get_world_size() if distributed else 1)
    rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
    drop_last = train if drop_last is None else drop_last
    sampler = ShardSampler(dataset, num_replicas=world, rank=rank, shuffle=train, seed=seed,
                                 drop_last=drop_last)
    if encode_on not in ("worker", "device"):
        raise ValueError(f"encode_on must be 'worker' or 'device', not {encode_on!r}")
    loader = Loader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=Collate(coder if encode_on == "worker" else None),
        pin_memory=torch.device(device).type == "cuda", drop_last=drop_last,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=persistent_workers and num_workers > 0,
    )
    loader.seed = seed
    return loader


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Sets the shuffle order and the workers' RNG seeds from (seed, epoch) alone."""
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(loader.seed * 100_003 + epoch)
