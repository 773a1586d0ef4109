import pytest
import torch

from ssdwb.ssd.model import SSD300, resnet34_backbone


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SSD300().eval()


def test_parameter_count(model):
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 19_972_534


def test_shapes_and_feature_sizes(model):
    x = torch.randn(1, 3, 300, 300)
    feats = [model.backbone(x)]
    for b in model.extra:
        feats.append(b(feats[-1]))
    assert [f.shape[1] for f in feats] == [256, 512, 512, 256, 256, 256]
    assert [f.shape[-1] for f in feats] == [38, 19, 10, 5, 3, 1]
    ploc, plabel = model(x)
    assert ploc.shape == (1, 4, 8732) and plabel.shape == (1, 81, 8732)


def test_head_channel_layout_matches_default_box_order(dboxes):
    """Conv channel k*nd + d is coordinate k of box type d, priors in (level, type, row, col)."""
    m = SSD300(num_classes=3).eval()
    with torch.no_grad():
        for lvl, head in enumerate(m.loc):
            head.weight.zero_()
            nd = dboxes.num_defaults_per_cell[lvl]
            head.bias.copy_(torch.tensor([100 * lvl + 10 * k + d for k in range(4)
                                          for d in range(nd)], dtype=torch.float32))
    ploc, _ = m(torch.zeros(1, 3, 300, 300))
    for lv in dboxes.levels:
        for d in range(lv.num_types):
            idx = lv.start + d * lv.feature_size ** 2 + lv.feature_size ** 2 - 1
            assert ploc[0, :, idx].tolist() == [100 * lv.index + 10 * k + d for k in range(4)]


def test_init_xavier_on_extra_and_heads():
    torch.manual_seed(0)
    m = SSD300()
    w = m.conf[0].weight
    fan_in, fan_out = w.shape[1] * 9, w.shape[0] * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def test_channels_last_and_autocast(model):
    x = torch.randn(2, 3, 300, 300)
    with torch.no_grad():
        a, b = model(x)
        cl = SSD300().eval()
        cl.load_state_dict(model.state_dict())
        cl = cl.to(memory_format=torch.channels_last)
        a2, b2 = cl(x.to(memory_format=torch.channels_last))
        assert torch.allclose(a, a2, atol=1e-3) and torch.allclose(b, b2, atol=1e-3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a3, b3 = model(x)
        assert a3.dtype == torch.bfloat16 and b3.shape == b.shape


def test_backbone_weights_from_local_file(tmp_path):
    from torchvision.models import resnet34

    torch.manual_seed(1)
    rn = resnet34()
    path = tmp_path / "rn34.pth"
    torch.save(rn.state_dict(), path)
    bb = resnet34_backbone(path)
    assert torch.equal(bb[0].weight, rn.conv1.weight)
    assert bb[6][0].conv1.stride == (1, 1) and bb[6][0].downsample[0].stride == (1, 1)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="bad.pth"):
        SSD300(backbone_weights=bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        SSD300(backbone_weights=tmp_path / "missing.pth")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(RuntimeError, match="not a ResNet34 state dict"):
        SSD300(backbone_weights=tmp_path / "wrong.pth")


def test_imagenet_weights_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import ResNet34_Weights

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(ResNet34_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(RuntimeError) as e:
        SSD300(backbone_weights="imagenet")
    assert str(tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth") in str(e.value)


def test_imagenet_weights_from_prestaged_torch_home(tmp_path, monkeypatch):
    from torchvision.models import resnet34

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ck = tmp_path / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    rn = resnet34()
    torch.save(rn.state_dict(), ck / "resnet34-b627a593.pth")
    m = SSD300(backbone_weights="imagenet")
    assert torch.equal(m.backbone[0].weight, rn.conv1.weight)
