"""Matching ground truth to default boxes, and the SSD box parametrisation.

``encode`` follows the MLPerf v0.6 reference ``Encoder.encode`` step for step:

1. IoU of every GT box (ltrb, fractions of the image) with every default box (its ``ltrb``).
2. Each prior takes its best GT (ties: the first GT).
3. Each GT's best prior (ties: the first prior) is forced to that GT, its IoU set to 2.0. When two
   GTs share a best prior the later GT wins, as the reference's in-place index assignment does.
4. Priors with IoU strictly above the threshold are positives and take their GT's box and label;
   the others keep their own default box and label 0 (background).
5. The box is returned as (cx, cy, w, h).

``encode_batch`` does the same for a batch: GT lists are padded to the longest one with a box far
outside the image (IoU 0 with every prior, and ties go to the first, real GT), and the forced
matches are a ``scatter_reduce`` (``amax`` over GT index, i.e. last GT wins) instead of the
reference's per-image index assignment. On CPU the images go in blocks, grouped by GT count so
that little padding is needed, whose padded IoU block fits in L2 cache (``block_rows``): one
batch-sized [B, M, 8732] matrix streams through memory several times and is slower than blocks
(docs/performance.md). Each GT's best prior is ``first_argmax`` (PyTorch's CPU ``argmax`` is an
unvectorized loop, several times slower). The outputs start as the default boxes with label 0 and
only the positives (a few percent) are written. On CUDA (``dense=True``) the whole batch is one
block and the positives are written with ``where``, so encoding never reads the device back.

The IoU matrix is the hot spot (B x M x 8732). Default boxes form one grid per (level, box type):
a prior's x1/x2 depend only on its column and y1/y2 only on its row, so the intersection is the
outer product of a per-column width and a per-row height. ``GridIoU`` computes it that way,
applying per pair exactly the float operations ``torchvision.ops.box_iou`` applies (the results
are bit-identical, a test checks it) with about a third of the memory traffic. Priors without
that structure fall back to ``box_iou``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

from ssdwb.ssd.anchors import DefaultBoxes

__all__ = ["BoxCoder", "GridIoU", "offsets", "offset_constants", "ltrb_to_xywh"]

_PAD_BOX = -1.0e4  # padded GT rows: a box far outside the image


class GridIoU:
    """IoU of boxes with grid-structured default boxes, computed per (level, box type) grid.

    Args:
        dboxes: the default boxes; ``None`` is returned by :meth:`build` when their ``ltrb`` is not
            a product of per-column (x1, x2) and per-row (y1, y2) coordinates.
    """

    def __init__(self, cols: torch.Tensor, rows: torch.Tensor,
                 groups: list[tuple[int, int, int]], prior_area: torch.Tensor):
        self.cols, self.rows, self.groups, self.prior_area = cols, rows, groups, prior_area

    @classmethod
    def build(cls, dboxes: DefaultBoxes) -> GridIoU | None:
        cols, rows, groups, offset = [], [], [], 0  # groups: (first column, box types, side)
        for lv in dboxes.levels:
            v = dboxes.ltrb[lv.slice].reshape(lv.num_types, lv.feature_size, lv.feature_size, 4)
            for t in range(lv.num_types):
                g = v[t]
                col, row = g[0, :, 0::2], g[:, 0, 1::2]  # [f, 2] (x1, x2), [f, 2] (y1, y2)
                if not (torch.equal(g[..., 0::2], col.expand_as(g[..., 0::2]))
                        and torch.equal(g[..., 1::2], row.unsqueeze(1).expand_as(g[..., 1::2]))):
                    return None
                cols.append(col)
                rows.append(row)
            groups.append((offset, lv.num_types, lv.feature_size))
            offset += lv.num_types * lv.feature_size
        if sum(t * f * f for _, t, f in groups) != dboxes.ltrb.shape[0]:
            return None
        p = dboxes.ltrb
        area = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
        return cls(torch.cat(cols), torch.cat(rows), groups, area)

    def to(self, device: torch.device) -> GridIoU:
        return GridIoU(self.cols.to(device), self.rows.to(device), self.groups,
                       self.prior_area.to(device))

    def __call__(self, boxes: torch.Tensor) -> torch.Tensor:
        """IoU (Tensor[N, P]) of boxes (Tensor[N, 4], x1 y1 x2 y2) with every default box."""
        n = boxes.shape[0]
        # per column: intersection width; per row: intersection height ([N, sum f] each)
        iw = (torch.minimum(boxes[:, 2:3], self.cols[:, 1]) -
              torch.maximum(boxes[:, 0:1], self.cols[:, 0])).clamp_(min=0)
        ih = (torch.minimum(boxes[:, 3:4], self.rows[:, 1]) -
              torch.maximum(boxes[:, 1:2], self.rows[:, 0])).clamp_(min=0)
        inter = torch.empty(n, self.prior_area.shape[0], dtype=boxes.dtype, device=boxes.device)
        start = 0
        for c0, t, f in self.groups:  # one batched outer product per level: [N, T, f, f]
            c1 = c0 + t * f
            torch.mul(ih[:, c0:c1].view(n, t, f, 1), iw[:, c0:c1].view(n, t, 1, f),
                      out=inter[:, start:start + t * f * f].view(n, t, f, f))
            start += t * f * f
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        union = (area[:, None] + self.prior_area).sub_(inter)
        return inter.div_(union)


def ltrb_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h) along the last dimension, in the reference's arithmetic."""
    l, t, r, b = boxes.unbind(-1)
    return torch.stack([0.5 * (l + r), 0.5 * (t + b), -l + r, -t + b], dim=-1)


def offset_constants(dboxes_xywh: torch.Tensor, scale_xy: float = 0.1, scale_wh: float = 0.2
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three flat rows (Tensor[P*4] each, on the default boxes' device) that :func:`offsets`
    subtracts, multiplies and divides by. Callers at every step (the loss, ``BoxCoder``) make
    them once: building them costs a host-to-device copy, which blocks on CUDA."""
    d = dboxes_xywh.to(torch.float32)
    num_p = d.shape[0]
    sub = torch.cat([d[:, :2], torch.zeros_like(d[:, :2])], 1).reshape(-1)
    mul = torch.tensor([1.0 / scale_xy, 1.0 / scale_xy, 1.0, 1.0], device=d.device).repeat(num_p)
    div = d[:, 2:].repeat(1, 2).reshape(-1)
    return sub, mul, div


def offsets(boxes_xywh: torch.Tensor, dboxes_xywh: torch.Tensor, scale_xy: float = 0.1,
            scale_wh: float = 0.2, constants: tuple[torch.Tensor, ...] | None = None
            ) -> torch.Tensor:
    """Regression targets of boxes relative to default boxes (last dimension = 4 coordinates).

    Returns ``[10*(gx-dx)/dw, 10*(gy-dy)/dh, 5*log(gw/dw), 5*log(gh/dh)]`` for the reference's
    variances, computed in the same order of operations as the reference loss's ``_loc_vec``.

    Args:
        boxes_xywh (Tensor[..., P, 4]): encoded boxes (cx, cy, w, h).
        dboxes_xywh (Tensor[P, 4]): default boxes (cx, cy, w, h).
        constants: :func:`offset_constants` of these default boxes and scales, on the boxes'
            device; made here when not given.
    """
    num_p = dboxes_xywh.shape[0]
    if constants is None:
        constants = offset_constants(dboxes_xywh.to(boxes_xywh.device), scale_xy, scale_wh)
    sub, mul, div = constants
    # One flat row of P*4 per image, so the arithmetic runs on contiguous memory (the interleaved
    # [..., P, 4] slices of the plain formula are 3x slower), and log() only on a contiguous copy
    # of the w, h lanes (on strided lanes it is 10x slower). Per element the float ops are the
    # reference's: xy: (inv_xy * (g - d)) / d_wh; wh: inv_wh * log((g - 0) * 1 / d_wh).
    out = torch.sub(boxes_xywh.reshape(-1, num_p * 4), sub).mul_(mul).div_(div)
    lanes = out.view(-1, num_p, 2, 2)
    lanes[:, :, 1] = lanes[:, :, 1].contiguous().log_().mul_(1.0 / scale_wh)
    return out.view(boxes_xywh.shape)


def _host_ints(values: list[int], device: torch.device) -> torch.Tensor:
    """int64 Tensor of host values on ``device``; to CUDA through pinned memory without waiting
    (``torch.tensor(values, device="cuda")`` blocks the host until the copy is done)."""
    t = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _blocks(counts: list[int], budget: int):
    """Runs of images, in order of GT count, whose padded GT rows (images x longest) fit budget.

    Yields index lists. Sorting by count first keeps the padding small: consecutive images with
    1 and 30 GTs would pad the first to 30 rows.
    """
    order = sorted(range(len(counts)), key=counts.__getitem__)
    block: list[int] = []
    for i in order:  # ascending counts: the block's longest is always its last image
        if block and (len(block) + 1) * counts[i] > budget:
            yield block
            block = []
        block.append(i)
    yield block


def first_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(dim=-1)`` (first index on ties) for a 2-D float tensor, faster on CPU.

    PyTorch's CPU argmax is a scalar loop, while ``amax`` is vectorized: take the max of
    chunks, then the first chunk reaching the row's max, then the first index within that chunk.
    Same result as ``argmax``, ties and NaN included: ``amax`` propagates NaN and ``argmax``
    takes the first NaN as the maximum, so the first chunk holding a NaN is chosen.
    """
    n, p = x.shape
    chunk = next((c for c in range(int(p ** 0.5) * 2, 31, -1) if p % c == 0), None)
    if x.device.type != "cpu" or chunk is None or n == 0:
        return x.argmax(dim=-1)
    blocks = x.view(n, p // chunk, chunk)
    which = blocks.amax(dim=2).argmax(dim=1)  # first chunk holding the row's max
    inner = blocks[torch.arange(n, device=x.device), which].argmax(dim=1)
    return which * chunk + inner


class BoxCoder:
    """Encodes ground truth against default boxes and decodes network outputs.

    Args:
        dboxes: the default boxes. Their tensors are moved lazily to each input's device.
    """

    def __init__(self, dboxes: DefaultBoxes):
        self.dboxes = dboxes
        self.scale_xy = dboxes.scale_xy
        self.scale_wh = dboxes.scale_wh
        self._cache: dict[torch.device, tuple] = {}

    def _priors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ltrb, xywh) default boxes on ``device``, float32."""
        return self._on(device)[:2]

    def _on(self, device: torch.device) -> tuple:
        # Keyed on the box tensors too, so priors edited after construction are picked up.
        key = (device, id(self.dboxes.ltrb), id(self.dboxes.xywh))
        if self._cache.get(device, (None,))[0] != key:
            grid = GridIoU.build(self.dboxes)
            ltrb = self.dboxes.ltrb.to(device)
            xywh = self.dboxes.xywh.to(device)
            self._cache[device] = (key, ltrb, xywh,
                                   grid.to(device) if grid is not None else None,
                                   ltrb_to_xywh(ltrb),  # unmatched priors, as the reference
                                   offset_constants(xywh, self.scale_xy, self.scale_wh))
        return self._cache[device][1:]

    def iou(self, boxes_ltrb: torch.Tensor) -> torch.Tensor:
        """IoU (Tensor[N, P]) of boxes (Tensor[N, 4] x1 y1 x2 y2) with every default box."""
        ltrb, _, grid, _, _ = self._on(boxes_ltrb.device)
        return grid(boxes_ltrb) if grid is not None else box_iou(boxes_ltrb, ltrb)

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
                     iou_threshold: float = 0.5, dense: bool | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Matches a batch of images, on the device of the given tensors.

        Args:
            boxes: B tensors [N_b, 4] (x1, y1, x2, y2), fractions of the image; N_b may be 0.
            labels: B tensors [N_b] of class labels.
            dense: how the few positives are written. ``False`` (default on CPU): images in
                cache-sized blocks, positives found with ``nonzero`` and written sparsely.
                ``True`` (default on CUDA): the whole batch at once with ``where`` over every
                prior, so the device is never read back (``nonzero`` waits for the GPU to learn
                its output size). Same results; the training loop passes True for
                ``encode_on="device"``, so CPU tests run the CUDA path.

        Returns:
            boxes (Tensor[B, P, 4]) in (cx, cy, w, h) and labels (Tensor[B, P]) int64.
        """
        bsz = len(boxes)
        if bsz == 0:
            raise ValueError("encode_batch needs at least one image")
        if len(labels) != bsz:
            raise ValueError(f"{bsz} box tensors but {len(labels)} label tensors")
        device = boxes[0].device
        if dense is None:
            dense = device.type != "cpu"
        _, _, _, prior_xywh, _ = self._on(device)
        num_p = self.num_priors
        counts = [int(b.shape[0]) for b in boxes]  # shapes: known on the host, no sync
        out_boxes = prior_xywh.expand(bsz, num_p, 4).clone()  # unmatched priors keep their box
        out_labels = torch.zeros(bsz, num_p, dtype=torch.int64, device=device)
        if sum(counts) == 0:
            return out_boxes, out_labels
        gt = torch.cat([b.to(device, torch.float32).reshape(-1, 4) for b in boxes])  # [G, 4]
        gt_labels = torch.cat([lb.to(device, torch.int64).reshape(-1) for lb in labels])
        n = _host_ints(counts, device)
        first_row = n.cumsum(0) - n  # image -> its first row in gt
        if dense:
            matched = self._match_block(boxes, n, max(counts), iou_threshold, dense=True)
            positive = matched >= 0
            rows = torch.where(positive, matched + first_row[:, None], 0)  # [B, P] rows of gt
            out_boxes = torch.where(positive[..., None], ltrb_to_xywh(gt)[rows], out_boxes)
            out_labels = torch.where(positive, gt_labels[rows], out_labels)
            return out_boxes, out_labels
        # Per image and prior: the matched GT's index in its image (or -1), block by block.
        matched = torch.full((bsz, num_p), -1, dtype=torch.int64, device=device)
        for block in _blocks(counts, self.block_rows):
            if counts[block[-1]] == 0:
                continue
            idx = torch.tensor(block, device=device)
            matched[idx] = self._match_block([boxes[i] for i in block], n[idx],
                                             counts[block[-1]], iou_threshold, dense=False)
        # Only the positives (a few percent of the priors) take their GT's box and label.
        img, prior = (matched >= 0).nonzero(as_tuple=True)
        rows = matched[img, prior] + first_row[img]
        out_boxes[img, prior] = ltrb_to_xywh(gt)[rows]
        out_labels[img, prior] = gt_labels[rows]
        return out_boxes, out_labels

    # Padded GT rows per block on CPU: a [rows, 8732] float32 block is ~2 MiB, one L2 cache.
    block_rows = 64

    def _match_block(self, boxes, n: torch.Tensor, m: int, iou_threshold: float, dense: bool
                     ) -> torch.Tensor:
        """Matched GT index within each image (Tensor[b, P], -1 for background) for b images.

        Args:
            boxes: b tensors [N_i, 4]; n (Tensor[b]) their N_i on the device; m = max N_i.
        """
        device = boxes[0].device
        bsz, num_p = len(boxes), self.num_priors
        gt = torch.nn.utils.rnn.pad_sequence([b.to(device, torch.float32).reshape(-1, 4)
                                              for b in boxes],
                                             batch_first=True, padding_value=_PAD_BOX)  # [b, m, 4]
        valid = torch.arange(m, device=device) < n[:, None]

        iou = self.iou(gt.reshape(-1, 4)).reshape(bsz, m, num_p)
        best_iou = iou.amax(dim=1)  # [b, P]: each prior's best IoU over its image's GTs
        best_prior = first_argmax(iou.view(bsz * m, num_p)).view(bsz, m)  # first on ties

        # Force each GT's best prior to that GT; later GTs win on a shared prior.
        gt_index = torch.arange(m, device=device).expand(bsz, m).masked_fill(~valid, -1)
        best_gt = torch.full((bsz, num_p), -1, dtype=torch.int64, device=device)
        best_gt.scatter_reduce_(1, best_prior, gt_index, reduce="amax")
        # forced IoU is 2.0 in the reference, so forced priors pass its strict > threshold
        positive = (best_gt >= 0) | (best_iou > iou_threshold)
        # The non-forced positives take the GT they overlap most (first on ties; padded rows
        # have IoU 0 and a positive's best IoU is above the threshold, so a real GT wins).
        if dense:
            nearest = torch.where(positive, iou.argmax(dim=1), -1)
            return torch.where(best_gt >= 0, best_gt, nearest)
        # On CPU only the few non-forced positives are looked up.
        bi, pi = (positive & (best_gt < 0)).nonzero(as_tuple=True)
        best_gt[bi, pi] = iou[bi, :, pi].argmax(dim=1)
        return best_gt

    def offsets(self, boxes_xywh: torch.Tensor) -> torch.Tensor:
        """Regression targets (Tensor[..., P, 4]) of encoded boxes (Tensor[..., P, 4], xywh)."""
        _, dxywh, _, _, constants = self._on(boxes_xywh.device)
        return offsets(boxes_xywh, dxywh, self.scale_xy, self.scale_wh, constants)

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
