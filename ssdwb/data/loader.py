"""DataLoader factory: sharded sampling, per-sample augmentation seeds, batch collation and box
encoding.

Every rank reads its own shard (``DistributedSampler``; the 2019 reference built one but never
used it, so each rank read the whole dataset). A single process uses the same sampler with one
replica, so the sample order depends only on (seed, epoch): resuming at epoch e reproduces it.

Augmentation seeds travel with the samples: the training sampler yields
``SampleKey(index, seed)``, the seed a function of (loader seed, epoch, dataset index) alone
(:func:`sample_seeds`), and the dataset seeds the transform's draws with it. What an image gets
in an epoch therefore does not depend on the rank, the number of workers, which worker loads it,
whether the workers persist across epochs, or where a resumed epoch starts. (The 2019 reference
seeded the workers per epoch with the same seed on every rank, so every rank's i-th image got the
same draws.) The sampler runs in the training process, so persistent workers see each epoch's
keys.

Batches carry uint8 images; whoever runs the model normalises them on its device
(``normalize(batch["images"].to(device))``, as ``engine/step.py`` and ``evaluation/inference.py``
do): float32 batches are four times the bytes to move from a worker to the training process and
on to the GPU, where the normalisation is free. What mattered more on the CPU was the number of tensors
per batch (see :class:`Batch`; the loader's speed before and after: docs/performance.md).

Where the boxes get encoded (``encode_on``):

* ``"worker"`` (default on CPU): ``BoxCoder.encode_batch`` runs in the loader's worker processes,
  in parallel with the training step; the training process only receives finished targets.
* ``"device"`` (default on CUDA): the collate returns the raw box lists and the training loop
  encodes the batch on the GPU in one batched call, which keeps the CPU workers for decoding and
  augmenting, the bottleneck of a GPU node's input pipeline.

Why "worker" on CPU: the encode is a small share of a worker's work per image (decoding and
augmenting cost far more), and where it runs does not change the loader's throughput in
``bench/bench_data.py``, whose consumer has nothing else to do; in training the consumer is the
training step, and on CPU its encode would be added to every step, while in the workers it
overlaps with it. On CUDA that share of the workers' CPU is what "device" saves, for a few
batched kernels on the GPU (not measured without a GPU; ``tests/test_box_coder.py`` checks that
CUDA and CPU encodes agree where a GPU is present). The figures: docs/performance.md.
"""

from __future__ import annotations

import atexit
import signal
import time
import weakref

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from ssdwb.data.coco import SampleKey
from ssdwb.runtime import tune_cpu_allocator

__all__ = ["Batch", "Collate", "Loader", "ShardSampler", "MicroBatchSampler", "build_loader",
           "skip_steps", "steps_per_epoch", "iter_steps", "micro_batches_of", "sample_seeds",
           "set_epoch"]


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
    "labels": list of Tensor[N_b], "image_ids": Tensor[B], "orig_sizes": Tensor[B, 2] (h, w),
    "bad_images": list of str}`` (the unreadable files the dataset skipped to make this batch,
    from each sample's ``target["skipped"]``; usually empty), plus ``"gloc"`` (Tensor[B, P, 4]
    xywh) and ``"glabel"`` (Tensor[B, P]) when a ``coder`` is given (encoding in the worker).

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
            "bad_images": [str(p) for t in targets for p in t.get("skipped", ())],
        })
        if self.coder is not None:
            batch["gloc"], batch["glabel"] = self.coder.encode_batch(batch["boxes"],
                                                                     batch["labels"])
        return batch


def _worker_init(worker_id: int) -> None:


    torch.set_num_threads(1)  # workers share the cores with the training step
    tune_cpu_allocator()
    # Slurm signals every process of a job step: USR1/TERM are for the training process, which
    # checkpoints and then shuts its workers down (they also exit when their parent dies).
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# Iterators that have worker processes, shut down at exit (see _shutdown_workers_at_exit).
_worker_iterators: weakref.WeakSet = weakref.WeakSet()
# (when its iterator went away, the worker processes it had): see Loader.
_orphans: list[tuple[float, list]] = []
ORPHAN_GRACE_S = 10.0


class Loader(DataLoader):
    """``DataLoader`` whose worker processes are shut down before the interpreter exits.

    The workers ignore SIGTERM (:func:`_worker_init`), and multiprocessing's exit handler stops
    daemonic children with SIGTERM and then waits for them: a loader whose iterator outlives the
    program's code (a module-level ``loader`` with ``persistent_workers=True``, or an iterator
    left part-way through an epoch) would otherwise hang the exit forever on CPU. torch shuts
    persistent workers down at exit itself only when it pins memory.

    Ignoring SIGTERM also defeats torch's fallback for workers that do not stop when asked (it
    terminates them with SIGTERM), and one case is common: an iterator that raised (an
    unreadable val image) sits in a reference cycle with its traceback, and when the garbage
    collector freed it, the finalizers of its queues ran before the iterator's own, so the
    workers' end-of-work message was never sent: the collection stalled 20 s in torch's joins,
    and the exit hung forever in multiprocessing's. The iterator's queues are therefore kept
    reachable until it is gone (they stay usable for its ``__del__``), and workers still alive
    ``ORPHAN_GRACE_S`` after their iterator went are killed (SIGKILL) when the next iterator
    is made, and at exit."""

    def _get_iterator(self):
        if _orphans:
            _reap_orphans(wait=False)
        iterator = super()._get_iterator()
        if self.num_workers > 0:
            _worker_iterators.add(iterator)
            # The finalizer holds the iterator's queues and event: reachable from here, they are
            # not finalized with the iterator's garbage, and its __del__ can still stop the
            # workers through them.
            keep = (iterator._index_queues, iterator._worker_result_queue,
                    iterator._workers_done_event)
            gone = weakref.finalize(iterator, _iterator_gone, list(iterator._workers), keep)
            gone.atexit = False
        return iterator


def _iterator_gone(workers: list, keep: tuple) -> None:
    # Runs when the iterator is freed, maybe inside the garbage collector, maybe before the
    # iterator's __del__ has asked the workers to stop: only noted here. (Freed by its last
    # reference going, the iterator's __del__ has already stopped and joined them.)
    alive = [w for w in workers if w.is_alive()]
    if alive:
        _orphans.append((time.monotonic(), alive, keep))


def _reap_orphans(wait: bool, deadline: float = 0.0) -> None:
    """Kills the workers of freed iterators that are still alive: with ``wait``, those alive at
    ``deadline`` (time.monotonic()); without, those left ``ORPHAN_GRACE_S`` after their iterator
    went."""
    now, keep = time.monotonic(), []
    for since, workers, queues in _orphans:
        if wait:
            for w in workers:
                w.join(max(0.0, deadline - time.monotonic()))
        alive = [w for w in workers if w.is_alive()]
        if alive and not wait and now - since < ORPHAN_GRACE_S:
            keep.append((since, alive, queues))
            continue
        for w in alive:
            w.kill()
        for w in alive:
            w.join(5.0)
    _orphans[:] = keep


@atexit.register
def _shutdown_workers_at_exit() -> None:
    # Registered after torch and multiprocessing register theirs, so it runs before both: the
    # workers get the end-of-work message while the queues still work.
    for iterator in list(_worker_iterators):
        iterator._shutdown_workers()
    if _orphans:
        _reap_orphans(wait=True, deadline=time.monotonic() + 2.0)


def sample_seeds(seed: int, epoch: int, n: int) -> np.ndarray:
    """The augmentation seeds of dataset indices 0..n-1 in ``epoch``: uint32 [n], numpy's
    ``SeedSequence((seed, epoch))`` words (a 32-bit seed: torch's CPU generator keeps the low
    32 bits of its seed anyway)."""
    return np.random.SeedSequence([seed % 2**64, epoch]).generate_state(n, np.uint32)


class ShardSampler(DistributedSampler):
    """``DistributedSampler`` whose indices carry their augmentation seeds, and that can start an
    epoch part-way.

    Args (beyond ``DistributedSampler``'s):
        keys: yield ``SampleKey(index, seed)`` (seeds from :func:`sample_seeds` of the
            sampler's seed and epoch); False: plain indices.

    ``skip_batches(n, batch_size)`` drops the first ``n`` batches of the next pass without
    loading them: the batches after them are those an uninterrupted pass gives, since every
    sample's draws come from its own seed.
    """

    start = 0

    def __init__(self, *args, keys: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.keys = keys

    def skip_batches(self, n: int, batch_size: int) -> None:
        self.start = n * batch_size

    def __iter__(self):
        indices = list(super().__iter__())[self.start:]
        self.start = 0  # only the pass that resumes is shortened
        if not self.keys:
            return iter(indices)
        seeds = sample_seeds(self.seed, self.epoch, len(self.dataset))[indices].tolist()
        return map(SampleKey, indices, seeds)


class MicroBatchSampler:
    """The batches of ``k`` virtual ranks hosted by one rank, interleaved by step: batch s of
    virtual rank ``rank * k``, then of ``rank * k + 1``, ... then batch s + 1 of each.

    Virtual rank v reads what rank v of a ``world * k``-rank run reads: its ``ShardSampler``
    shard (``num_replicas = world * k``) with its samples' augmentation seeds, so the data of a
    run depends only on the global batch and on ``world * k`` (gradient accumulation).
    """

    def __init__(self, dataset, batch_size: int, k: int, rank: int, world: int, seed: int):
        self.batch_size, self.k = batch_size, k
        self.shards = [ShardSampler(dataset, num_replicas=world * k, rank=rank * k + j,
                                    shuffle=True, seed=seed, drop_last=True)
                       for j in range(k)]

    def set_epoch(self, epoch: int) -> None:
        for shard in self.shards:
            shard.set_epoch(epoch)

    def skip_batches(self, n: int, batch_size: int) -> None:
        """Starts the next pass at step ``n`` (``batch_size``: each shard's, as ShardSampler)."""
        for shard in self.shards:
            shard.skip_batches(n, batch_size)

    def __len__(self) -> int:
        return self.k * (len(self.shards[0]) // self.batch_size)

    def __iter__(self):
        b = self.batch_size
        keys = [list(shard) for shard in self.shards]
        steps = len(keys[0]) // b
        for s in range(steps):
            for shard in keys:
                yield shard[s * b:(s + 1) * b]


def build_loader(dataset, batch_size: int, train: bool, distributed: bool | None = None,
                 num_workers: int = 0, seed: int = 0, coder=None, encode_on: str = "worker",
                 device: torch.device | str = "cpu", drop_last: bool | None = None,
                 persistent_workers: bool = False, rank: int | None = None,
                 world_size: int | None = None, micro_batches: int = 1) -> Loader:
    """A DataLoader over ``dataset`` for one rank.

    Args:
        batch_size: images per batch on this rank.
        train: shuffle (by seed and epoch) and drop the last partial batch.
        distributed: shard over ``torch.distributed`` ranks; None: shard when it is initialised.
        coder: a ``BoxCoder``; with ``encode_on="worker"`` the batches carry encoded targets.
        device: where training runs; pinned memory when it is CUDA.
        rank, world_size: override the process group's (to inspect another rank's shard).
        persistent_workers: keep the workers across epochs (each epoch's order and seeds still
            come from :func:`set_epoch`: the sampler runs in this process).
        micro_batches: k > 1 (training only): this rank hosts k virtual ranks of a
            ``world * k``-rank run and the loader yields their batches interleaved
            (:class:`MicroBatchSampler`); a step is k consecutive batches.

    With ``train=True`` the sampler yields ``SampleKey(index, seed)``: the dataset must accept
    them (:class:`ssdwb.data.CocoDetection` does).
    """
    if distributed is None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    world = world_size or (torch.distributed.get_world_size() if distributed else 1)
    rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
    drop_last = train if drop_last is None else drop_last
    if encode_on not in ("worker", "device"):
        raise ValueError(f"encode_on must be 'worker' or 'device', not {encode_on!r}")
    if micro_batches > 1:
        if not train:
            raise ValueError("micro_batches: training loaders only")
        batching = {"batch_sampler": MicroBatchSampler(dataset, batch_size, micro_batches,
                                                       rank, world, seed)}
    else:
        batching = {"batch_size": batch_size, "drop_last": drop_last,
                    "sampler": ShardSampler(dataset, num_replicas=world, rank=rank,
                                            shuffle=train, seed=seed, drop_last=drop_last,
                                            keys=train)}
    loader = Loader(
        dataset, num_workers=num_workers, **batching,
        collate_fn=Collate(coder if encode_on == "worker" else None),
        pin_memory=torch.device(device).type == "cuda",
        worker_init_fn=_worker_init if num_workers > 0 else None,
        # the workers' own torch seeds (base seed + worker id): the augmentations do not use
        # them, they draw from their samples' seeds
        generator=torch.Generator().manual_seed(int(sample_seeds(seed, rank, 1)[0])),
        persistent_workers=persistent_workers and num_workers > 0,
    )
    loader.seed = seed
    loader.micro_batches = micro_batches
    return loader


def _order(loader: DataLoader):
    """What decides the order: the micro-batch sampler, or the shard sampler."""
    return loader.batch_sampler if micro_batches_of(loader) > 1 else loader.sampler


def micro_batches_of(loader: DataLoader) -> int:
    return getattr(loader, "micro_batches", 1)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Sets the shuffle order and the samples' augmentation seeds from (seed, epoch) alone."""
    _order(loader).set_epoch(epoch)


def skip_steps(loader: DataLoader, steps: int, batch_size: int) -> None:
    """The next pass starts at step ``steps`` (``batch_size`` images per micro-batch) without
    loading the batches before it."""
    _order(loader).skip_batches(steps, batch_size)


def iter_steps(loader: DataLoader):
    """One pass as optimiser steps: lists of ``micro_batches`` consecutive batches."""
    k, step = micro_batches_of(loader), []
    for batch in loader:
        step.append(batch)
        if len(step) == k:
            yield step
            step = []


def steps_per_epoch(loader: DataLoader) -> int:
    """Optimiser steps per pass: batches / micro-batches per step."""
    return len(loader) // micro_batches_of(loader)
