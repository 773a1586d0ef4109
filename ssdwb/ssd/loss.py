"""MultiBox loss with hard negative mining, as the MLPerf v0.6 reference computes it.

Per image: SmoothL1 (beta 1) summed over the 4 offsets of the positives, plus cross-entropy over
the positives and the ``3 * num_pos`` negatives with the highest cross-entropy (positives' CE is
set to 0 before ranking, so when fewer negatives exist a positive can be counted twice, as in the
reference). The image's sum is divided by ``num_pos`` (clamped to >= 1e-6); an image with no
positives contributes 0 but still counts in the batch mean.

The whole batch is done at once; the loss is computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssdwb.ssd.anchors import DefaultBoxes
from ssdwb.ssd.box_coder import offset_constants, offsets

__all__ = ["MultiBoxLoss", "hard_negative_mining"]


def hard_negative_mining(ce: torch.Tensor, positive: torch.Tensor, neg_pos_ratio: int = 3
                         ) -> torch.Tensor:
    """Selects the negatives with the highest cross-entropy.

    Args:
        ce (Tensor[B, P]): per-prior cross-entropy.
        positive (Tensor[B, P] bool): positive priors.

    Returns:
        Tensor[B, P] bool: the ``min(neg_pos_ratio * num_pos, P)`` priors ranked highest once the
        positives' CE is zeroed (the reference's double argsort; stable, so ties are reproducible).
    """
    num_pos = positive.sum(dim=1, keepdim=True)
    ranked = ce.detach().masked_fill(positive, 0.0)
    order = ranked.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1, stable=True)
    return rank < torch.clamp(neg_pos_ratio * num_pos, max=ce.shape[1])


class MultiBoxLoss(nn.Module):
    """The reference SSD loss.

    Args:
        dboxes: default boxes (their ``xywh`` and variances define the regression targets).

    Forward args:
        ploc (Tensor[B, 4, P]): predicted offsets.
        plabel (Tensor[B, C, P]): class logits.
        gloc (Tensor[B, 4, P]): encoded GT boxes in (cx, cy, w, h) (``BoxCoder.encode_batch``
            output, transposed); turned into offsets here, as the reference does.
        glabel (Tensor[B, P]): int64 labels, 0 = background.

    Returns:
        scalar Tensor: mean over the batch of (loc + conf) / num_pos.
    """

    def __init__(self, dboxes: DefaultBoxes, neg_pos_ratio: int = 3):
        super().__init__()
        self.scale_xy = dboxes.scale_xy
        self.scale_wh = dboxes.scale_wh
        self.neg_pos_ratio = neg_pos_ratio
        self.register_buffer("dboxes_xywh", dboxes.xywh.clone(), persistent=False)
        # offsets()' constant rows as buffers: they move with .to(device) once, instead of a
        # blocking host-to-device copy at every step
        for name, t in zip(("offset_sub", "offset_mul", "offset_div"),
                           offset_constants(dboxes.xywh, self.scale_xy, self.scale_wh)):
            self.register_buffer(name, t, persistent=False)

    def forward(self, ploc: torch.Tensor, plabel: torch.Tensor, gloc: torch.Tensor,
                glabel: torch.Tensor) -> torch.Tensor:
        ploc, plabel, gloc = ploc.float(), plabel.float(), gloc.float()
        dxywh = self.dboxes_xywh.to(ploc.device)
        constants = tuple(t.to(ploc.device) for t in (self.offset_sub, self.offset_mul,
                                                      self.offset_div))
        positive = glabel > 0
        num_pos = positive.sum(dim=1)

        target = offsets(gloc.transpose(1, 2), dxywh, self.scale_xy, self.scale_wh,
                         constants)  # [B, P, 4]
        sl1 = F.smooth_l1_loss(ploc, target.transpose(1, 2), reduction="none", beta=1.0).sum(1)
        loc_loss = (positive.float() * sl1).sum(dim=1)

        ce = F.cross_entropy(plabel, glabel, reduction="none")  # [B, P]
        negative = hard_negative_mining(ce, positive, self.neg_pos_ratio)
        conf_loss = (ce * (positive.float() + negative.float())).sum(dim=1)

        has_pos = (num_pos > 0).float()
        per_image = (loc_loss + conf_loss) * has_pos / num_pos.float().clamp(min=1e-6)
        return per_image.mean(dim=0)
