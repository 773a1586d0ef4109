"""Matching ground truth to default boxes, and the SSD box parametrisation.

``encode`` follows the MLPerf v0.6 reference ``Encoder.encode`` step for step:

1. IoU of every GT box (ltrb, fractions of the image) with every default box (its ``ltrb``).
2. Each prior takes its best GT (ties: the first GT).
3. Each GT's best prior (ties: the first prior) is forced to that GT, its IoU set to 2.0. When two
   GTs share a best prior the later GT wins, as the reference's in-place index assignment does.
4. Priors with IoU strictly above the threshold are positives and take their GT's box and label;
   the others keep their own default box and label 0 (background).
5. The box is returned as (cx, cy, w, h).

``encode_batch`` does the same for a whole batch at once: GT lists are padded to the longest
one, padded rows get IoU -1 so they never win, and the forced matches are a ``scatter_reduce``
(``amax`` over GT index, i.e. last GT wins) instead of the reference's per-image index assignment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

from ssdwb.anchors import DefaultBoxes

__all__ = ["BoxCoder", "offsets", "ltrb_to_xywh"]


def ltrb_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h) along the last dimension, in the reference's arithmetic."""
    l, t, r, b = boxes.unbind(-1)
    return torch.stack([0.5 * (l + r), 0.5 * (t + b), -l + r, -t + b], dim=-1)


def offsets(boxes_xywh: torch.Tensor, dboxes_xywh: torch.Tensor, scale_xy: float = 0.1,
            scale_wh: float = 0.2) -> torch.Tensor:
    """Regression targets of boxes relative to default boxes (last dimension = 4 coordinates).

    Returns ``[10*(gx-dx)/dw, 10*(gy-dy)/dh, 5*log(gw/dw), 5*log(gh/dh)]`` for the reference's
    variances, computed in the same order of operations as the reference loss's ``_loc_vec``.

    Args:
        boxes_xywh (Tensor[..., P, 4]): encoded boxes (cx, cy, w, h).
        dboxes_xywh (Tensor[P, 4]): default boxes (cx, cy, w, h).
    """
    inv_xy, inv_wh = 1.0 / scale_xy, 1.0 / scale_wh
    gxy = inv_xy * (boxes_xywh[..., :2] - dboxes_xywh[:, :2]) / dboxes_xywh[:, 2:]
    gwh = inv_wh * (boxes_xywh[..., 2:] / dboxes_xywh[:, 2:]).log()
    return torch.cat([gxy, gwh], dim=-1)


class BoxCoder:
    """Encodes ground truth against default boxes and decodes network outputs.

    Args:
        dboxes: the default boxes. Their tensors are moved lazily to each input's device.
    """

    def __init__(self, dboxes: DefaultBoxes):
        self.dboxes = dboxes
        self.scale_xy = dboxes.scale_xy
        self.scale_wh = dboxes.scale_wh
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _priors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ltrb, xywh) default boxes on ``device``, float32."""
        if device not in self._cache:
            self._cache[device] = (self.dboxes.ltrb.to(device), self.dboxes.xywh.to(device))
        return self._cache[device]

    @property
    def num_priors(self) -> int:
        return self.dboxes.num_priors

    def encode(self, boxes_ltrb: torch.Tensor, labels: torch.Tensor, iou_threshold: float = 0.5
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Matches one image's GT to the default boxes.

        Args:
            boxes_ltrb (Tensor[N, 4]): GT boxes (x1, y1, x2, y2), fractions of the image.
            labels (Tensor[N]): GT class labels in 1..C-1.

        Returns:
            boxes (Tensor[P, 4]) in (cx, cy, w, h), float32: the matched GT box for positives,
            the default box itself otherwise; labels (Tensor[P]) int64, 0 for background.
        """
        boxes, labels_out = self.encode_batch([boxes_ltrb], [labels], iou_threshold)
        return boxes[0], labels_out[0]

    def encode_batch(self, boxes: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
                     iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """Matches a batch of images at once, on the device of the given tensors.

        Args:
            boxes: B tensors [N_b, 4] (x1, y1, x2, y2), fractions of the image; N_b may be 0.
            labels: B tensors [N_b] of class labels.

        Returns:
            boxes (Tensor[B, P, 4]) in (cx, cy, w, h) and labels (Tensor[B, P]) int64.
        """
        bsz = len(boxes)
        if bsz == 0:
            raise ValueError("encode_batch needs at least one image")
        device = boxes[0].device
        dltrb, _ = self._priors(device)
        num_p = dltrb.shape[0]
        counts = torch.tensor([b.shape[0] for b in boxes], device=device)
        m = max(int(b.shape[0]) for b in boxes)
        if m == 0:
            out = ltrb_to_xywh(dltrb).unsqueeze(0).expand(bsz, -1, -1).contiguous()
            return out, torch.zeros(bsz, num_p, dtype=torch.int64, device=device)
        gt = torch.nn.utils.rnn.pad_sequence([b.to(torch.float32) for b in boxes],
                                             batch_first=True)  # [B, M, 4]
        gl = torch.nn.utils.rnn.pad_sequence([lb.to(torch.int64) for lb in labels],
                                             batch_first=True)  # [B, M]
        valid = torch.arange(m, device=device).unsqueeze(0) < counts.unsqueeze(1)  # [B, M]

        iou = box_iou(gt.reshape(-1, 4), dltrb).reshape(bsz, m, num_p)
        iou.masked_fill_(~valid.unsqueeze(-1), -1.0)  # padded GTs never win
        best_iou, best_gt = iou.max(dim=1)  # [B, P]: each prior's best GT
        best_prior = iou.argmax(dim=2)  # [B, M]: each GT's best prior (first on ties)

        # Force each GT's best prior to that GT; later GTs win on a shared prior.
        gt_index = torch.arange(m, device=device).expand(bsz, m).masked_fill(~valid, -1)
        forced = torch.full((bsz, num_p), -1, dtype=torch.int64, device=device)
        forced.scatter_reduce_(1, best_prior, gt_index, reduce="amax")
        is_forced = forced >= 0
        best_gt = torch.where(is_forced, forced, best_gt)
        best_iou = best_iou.masked_fill(is_forced, 2.0)

        positive = best_iou > iou_threshold  # strict, as the reference
        labels_out = torch.where(positive, gl.gather(1, best_gt), 0)
        matched = gt.gather(1, best_gt.unsqueeze(-1).expand(-1, -1, 4))  # [B, P, 4]
        boxes_ltrb = torch.where(positive.unsqueeze(-1), matched, dltrb.unsqueeze(0))
        return ltrb_to_xywh(boxes_ltrb), labels_out

    def offsets(self, boxes_xywh: torch.Tensor) -> torch.Tensor:
        """Regression targets (Tensor[..., P, 4]) of encoded boxes (Tensor[..., P, 4], xywh)."""
        _, dxywh = self._priors(boxes_xywh.device)
        return offsets(boxes_xywh, dxywh, self.scale_xy, self.scale_wh)

    def decode(self, ploc: torch.Tensor) -> torch.Tensor:
        """Network box outputs to boxes.

        Args:
            ploc (Tensor[B, 4, P]): predicted offsets, as the model outputs them.

        Returns:
            Tensor[B, P, 4] in (x1, y1, x2, y2), fractions of the image, float32, not clipped.
        """
        _, dxywh = self._priors(ploc.device)
        loc = ploc.float().transpose(1, 2)  # [B, P, 4]
        xy = self.scale_xy * loc[..., :2] * dxywh[:, 2:] + dxywh[:, :2]
        wh = (self.scale_wh * loc[..., 2:]).exp() * dxywh[:, 2:]
        return torch.cat([xy - 0.5 * wh, xy + 0.5 * wh], dim=-1)
