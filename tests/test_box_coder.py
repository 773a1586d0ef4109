import pytest
import reference
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssdwb.ssd.anchors import DefaultBoxes
from ssdwb.ssd.box_coder import BoxCoder


def tiny_priors(ltrb):
    """A DefaultBoxes carrying hand-made priors (ltrb), for hand-checked matching cases."""
    d = DefaultBoxes(300, [1], [300], [30, 60], [[]])
    d.ltrb = torch.tensor(ltrb, dtype=torch.float32)
    lt, rb = d.ltrb[:, :2], d.ltrb[:, 2:]
    d.xywh = torch.cat([(lt + rb) / 2, rb - lt], 1)
    return d


PRIORS = [[0, 0, 1, 1], [0, 0, 0.5, 1], [0.5, 0, 1, 1], [0, 0, 0.25, 0.25]]


def test_threshold_is_strict():
    coder = BoxCoder(tiny_priors(PRIORS))
    # GT == prior 1: IoU 1 with prior 1, exactly 0.5 with prior 0, 0 with prior 2
    boxes, labels = coder.encode(torch.tensor([[0, 0, 0.5, 1.0]]), torch.tensor([7]))
    assert labels.tolist() == [0, 7, 0, 0]
    # unmatched priors keep their own box (as xywh)
    assert torch.allclose(boxes[0], torch.tensor([0.5, 0.5, 1, 1]))
    assert torch.allclose(boxes[1], torch.tensor([0.25, 0.5, 0.5, 1]))


def test_forced_match_below_threshold():
    coder = BoxCoder(tiny_priors(PRIORS))
    # IoU with prior 3 is 0.0625/0.25 = 0.25 (<0.5), its best: forced positive anyway
    boxes, labels = coder.encode(torch.tensor([[0, 0, 0.25, 0.0625]]), torch.tensor([3]))
    assert labels.tolist() == [0, 0, 0, 3]
    assert torch.allclose(boxes[3], torch.tensor([0.125, 0.03125, 0.25, 0.0625]))


def test_several_gts_on_one_prior_last_wins():
    coder = BoxCoder(tiny_priors(PRIORS))
    gts = torch.tensor([[0, 0, 0.9, 0.9], [0.05, 0.05, 0.95, 0.95], [0, 0, 0.5, 0.9]])
    boxes, labels = coder.encode(gts, torch.tensor([1, 2, 3]))
    # GT0 and GT1 both have prior 0 as best prior: the later (GT1) wins the forced match
    assert labels[0] == 2
    assert torch.allclose(boxes[0], torch.tensor([0.5, 0.5, 0.9, 0.9]))
    assert labels[1] == 3
    ref_boxes, ref_labels = reference.encode(gts, torch.tensor([1, 2, 3]), coder.dboxes.ltrb)
    assert torch.equal(labels, ref_labels) and torch.equal(boxes, ref_boxes)


def random_gt(gen, n):
    xy = torch.rand(n, 2, generator=gen) * 0.8
    wh = torch.rand(n, 2, generator=gen) * 0.5 + 0.01
    return torch.cat([xy, (xy + wh).clamp(max=1)], 1), torch.randint(1, 81, (n,), generator=gen)


@pytest.mark.parametrize("dense", [False, True])
@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(0, 12), min_size=1, max_size=4), seed=st.integers(0, 2**31))
def test_encode_batch_equals_reference_per_image(counts, seed, dense, dboxes):
    """Both ways of writing the positives (sparse: CPU; dense: the sync-free CUDA path, run
    here on the CPU) give the reference's boxes and labels bit for bit."""
    gen = torch.Generator().manual_seed(seed)
    gts = [random_gt(gen, n) for n in counts]
    coder = BoxCoder(dboxes)
    boxes, labels = coder.encode_batch([g[0] for g in gts], [g[1] for g in gts], dense=dense)
    assert boxes.shape == (len(counts), 8732, 4) and labels.dtype == torch.int64
    for b, (g, lab) in enumerate(gts):
        if len(g) == 0:
            assert labels[b].sum() == 0
            continue
        rb, rl = reference.encode(g, lab, dboxes.ltrb)
        assert torch.equal(labels[b], rl)
        assert torch.equal(boxes[b], rb)
        one_b, one_l = coder.encode(g, lab)
        assert torch.equal(one_b, boxes[b]) and torch.equal(one_l, labels[b])


@pytest.mark.parametrize("block_rows,dense", [(64, False), (5, False), (5, True)])
def test_encode_batch_in_several_blocks(block_rows, dense, dboxes):
    """Images are grouped by GT count into blocks; results go back to each image's own row.
    dense=True takes the whole batch as one block whatever block_rows says."""
    gen = torch.Generator().manual_seed(7)
    counts = [30, 0, 3, 25, 1, 0, 12, 30, 7]
    gts = [random_gt(gen, n) for n in counts]
    coder = BoxCoder(dboxes)
    coder.block_rows = block_rows
    boxes, labels = coder.encode_batch([g[0] for g in gts], [g[1] for g in gts], dense=dense)
    for b, (g, lab) in enumerate(gts):
        if len(g) == 0:
            assert labels[b].sum() == 0 and torch.equal(boxes[b], coder.encode(g, lab)[0])
            continue
        rb, rl = reference.encode(g, lab, dboxes.ltrb)
        assert torch.equal(labels[b], rl) and torch.equal(boxes[b], rb)


def test_round_trip_offsets_decode(dboxes):
    gen = torch.Generator().manual_seed(0)
    g, lab = random_gt(gen, 10)
    coder = BoxCoder(dboxes)
    boxes, labels = coder.encode_batch([g], [lab])
    off = coder.offsets(boxes)  # [1, P, 4]
    decoded = coder.decode(off.transpose(1, 2))  # [1, P, 4] ltrb
    pos = labels[0] > 0
    assert pos.sum() >= 10
    xywh = boxes[0, pos]
    ltrb = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    assert torch.allclose(decoded[0, pos], ltrb, atol=1e-5)
    # unmatched priors encode to zero offsets and decode back to themselves
    assert off[0, ~pos].abs().max() < 1e-5
    assert torch.allclose(decoded[0, ~pos], dboxes.ltrb[~pos], atol=1e-5)


def test_offsets_formula(dboxes):
    coder = BoxCoder(dboxes)
    d = dboxes.xywh[5]
    g = torch.tensor([[d[0] + 0.01, d[1] - 0.02, d[2] * 2, d[3] / 2]])
    full = dboxes.xywh.clone()
    full[5] = g
    off = coder.offsets(full)[5]
    expected = torch.tensor([10 * 0.01 / d[2], 10 * -0.02 / d[3], 5 * torch.log(torch.tensor(2.0)),
                             -5 * torch.log(torch.tensor(2.0))])
    assert torch.allclose(off, expected, atol=1e-5)


def test_offsets_bit_identical_to_reference_loc_vec(dboxes):
    """The reference loss's _loc_vec, float32, in its [B, 4, P] layout and order of operations."""
    gen = torch.Generator().manual_seed(3)
    gts = [random_gt(gen, n) for n in (1, 7, 20)]
    coder = BoxCoder(dboxes)
    boxes, _ = coder.encode_batch([g[0] for g in gts], [g[1] for g in gts])
    loc = boxes.transpose(1, 2)  # [B, 4, P]
    d = dboxes.xywh.t().unsqueeze(0)  # [1, 4, P]
    gxy = (1.0 / 0.1) * (loc[:, :2, :] - d[:, :2, :]) / d[:, 2:, :]
    gwh = (1.0 / 0.2) * (loc[:, 2:, :] / d[:, 2:, :]).log()
    want = torch.cat((gxy, gwh), dim=1).contiguous()
    assert torch.equal(coder.offsets(boxes).transpose(1, 2), want)
    assert torch.equal(coder.offsets(loc.transpose(1, 2)), coder.offsets(boxes))  # strided input


def test_dtype_and_device_follow_inputs(dboxes):
    coder = BoxCoder(dboxes)
    g = torch.tensor([[0.1, 0.1, 0.4, 0.5]], dtype=torch.float64)
    boxes, labels = coder.encode_batch([g], [torch.tensor([1], dtype=torch.int32)])
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
    assert boxes.device == g.device
    assert coder.decode(torch.zeros(2, 4, 8732, dtype=torch.float16)).dtype == torch.float32


def test_all_images_empty(dboxes):
    coder = BoxCoder(dboxes)
    boxes, labels = coder.encode_batch([torch.zeros(0, 4)] * 2, [torch.zeros(0)] * 2)
    assert labels.shape == (2, 8732) and labels.sum() == 0
    assert torch.allclose(boxes[0], dboxes.xywh, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_encode_on_cuda_matches_cpu(dboxes):
    gen = torch.Generator().manual_seed(1)
    g, lab = random_gt(gen, 8)
    coder = BoxCoder(dboxes)
    cb, cl = coder.encode_batch([g.cuda()], [lab.cuda()])
    b, lb = coder.encode_batch([g], [lab])
    assert cb.device.type == "cuda"
    assert torch.equal(cl.cpu(), lb) and torch.allclose(cb.cpu(), b)


@pytest.mark.parametrize("width", [8732, 1000, 37, 7])
def test_first_argmax_equals_argmax_with_ties_and_nan(width):
    from ssdwb.ssd.box_coder import first_argmax

    gen = torch.Generator().manual_seed(width)
    x = torch.randint(0, 4, (50, width), generator=gen).float()  # many ties
    x[torch.rand(50, width, generator=gen) < 2.0 / width] = float("nan")
    x[3] = float("-inf")
    assert torch.equal(first_argmax(x), x.argmax(dim=1))


def test_dense_encode_never_reads_the_device(dboxes):
    """The CUDA path's encode (dense=True) runs no op that makes the host wait for the device:
    no nonzero (its output size lives on the device), no .item(). Counted on the CPU, where
    the same ops dispatch."""
    from torch.utils._python_dispatch import TorchDispatchMode

    waits = {torch.ops.aten.nonzero.default, torch.ops.aten._local_scalar_dense.default,
             torch.ops.aten.is_nonzero.default}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func in waits
            return func(*args, **(kwargs or {}))

    gen = torch.Generator().manual_seed(3)
    gts = [random_gt(gen, n) for n in (4, 0, 9)]
    coder = BoxCoder(dboxes)
    coder.encode_batch([g[0] for g in gts], [g[1] for g in gts], dense=True)  # builds the cache
    with Count():
        coder.encode_batch([g[0] for g in gts], [g[1] for g in gts], dense=True)
    assert Count.n == 0
    with Count():  # the check can fail: the sparse CPU path does read back
        coder.encode_batch([g[0] for g in gts], [g[1] for g in gts], dense=False)
    assert Count.n > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_encode_and_loss_on_cuda_never_sync(dboxes):
    from ssdwb.ssd.loss import MultiBoxLoss

    gen = torch.Generator().manual_seed(2)
    gts = [random_gt(gen, n) for n in (3, 0, 7)]
    coder, loss = BoxCoder(dboxes), MultiBoxLoss(dboxes).cuda()
    boxes = [g[0].cuda() for g in gts]
    labels = [g[1].cuda() for g in gts]
    ploc = torch.randn(3, 4, 8732, device="cuda")
    plabel = torch.randn(3, 81, 8732, device="cuda")
    gloc, glabel = coder.encode_batch(boxes, labels)  # first call: caches the priors
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gloc, glabel = coder.encode_batch(boxes, labels)
        loss(ploc, plabel, gloc.transpose(1, 2), glabel)
    finally:
        torch.cuda.set_sync_debug_mode(0)
