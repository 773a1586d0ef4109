"""Distributed inference over a val loader, and ``evaluate``: every rank infers its shard, rank 0
gathers and scores.

Each rank runs its shard of the val set through the model and ``ssd.postprocess``; boxes go back
to pixel COCO (x, y, w, h) with the original image size (unclipped, as the reference) and labels
back to COCO category ids; rank 0 gathers everything (dropping the images ``DistributedSampler``
repeats to even out the shards), scores it with ``coco_eval`` and runs the error analysis.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ssdwb.data.transforms import normalize
from ssdwb.evaluation.coco_eval import coco_eval, detections_to_coco
from ssdwb.evaluation.error_analysis import error_analysis, errors_summary
from ssdwb.ssd.postprocess import postprocess

__all__ = ["infer", "gather_results", "evaluate"]


@torch.no_grad()
def infer(model, loader, coder, label_to_cat, device, amp: str = "off",
          channels_last: bool = False, progress: bool = False, with_priors: bool = False):
    """This rank's detections: (array [N, 7], image ids seen); with ``with_priors`` also
    (array [N] int64): the default box each detection row came from (its index in the
    coder's default boxes; ``ssdwb.lab.attribution.prior_cells`` names level, box type and cell).
    The priors are kept apart from the [N, 7] array so that every reader of that array (COCO
    results, the detections files, ``coco_eval``) stays as it is."""

    model.eval()
    parts, seen, priors = [], [], []
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    for batch in tqdm(loader, desc="eval", disable=not progress, mininterval=5, leave=False):
        images = normalize(batch["images"].to(device, non_blocking=True))
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            ploc, plabel = model(images)
        dets = postprocess(ploc.float(), plabel.float(), coder, return_index=with_priors)
        parts.append(detections_to_coco(dets, batch["image_ids"], batch["orig_sizes"],
                                        label_to_cat))
        seen.append(batch["image_ids"].numpy())
        if with_priors:  # same order as detections_to_coco's rows: image by image
            priors.append(torch.cat([d[3] for d in dets]).cpu().numpy()
                          if dets else np.zeros(0, dtype=np.int64))
    out = (np.concatenate(parts) if parts else np.zeros((0, 7)),
           np.concatenate(seen) if seen else np.zeros(0, dtype=np.int64))
    if with_priors:
        return (*out, np.concatenate(priors) if priors else np.zeros(0, dtype=np.int64))
    return out


def gather_results(results: np.ndarray, seen: np.ndarray, world_size: int) -> np.ndarray | None:
    """All ranks' results on rank 0 (None elsewhere), each image's detections once."""
    if world_size == 1:
        return results
    parts = [None] * world_size if torch.distributed.get_rank() == 0 else None
    torch.distributed.gather_object((results, seen), parts, dst=0)
    if parts is None:
        return None
    kept, done = [], np.zeros(0, dtype=np.int64)
    for res, ids in parts:  # DistributedSampler repeats a few images to even out the shards
        kept.append(res[~np.isin(res[:, 0].astype(np.int64), done)])
        done = np.union1d(done, ids)
    return np.concatenate(kept)


def evaluate(model, loader, coder, dataset, device, world_size: int = 1, amp: str = "off",
             channels_last: bool = False, backend: str = "faster-coco-eval",
             progress: bool = False, errors: bool = True):
    """Distributed inference + COCO eval. Returns (stats dict, results array) on rank 0 and
    (None, None) on the other ranks. With ``errors`` the stats hold ``"errors"``: the error
    analysis of the results, ``{area: {type: AP}}`` (``error_analysis.errors_summary``)."""
    results, seen = infer(model, loader, coder, dataset.label_to_cat, device, amp, channels_last,
                          progress)
    results = gather_results(results, seen, world_size)
    if results is None:
        return None, None
    stats = coco_eval(dataset.coco, results, backend)
    if errors:
        stats["errors"] = errors_summary(error_analysis(dataset.coco, results))
    return stats, results
