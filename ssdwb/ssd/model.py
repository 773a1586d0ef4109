"""SSD300 with a ResNet34 backbone, as in the MLPerf v0.6 reference.

Backbone: torchvision ``resnet34`` up to ``layer3`` (conv1, bn1, relu, maxpool, layer1..3), with
stride 1 in layer3's first block (``conv1`` and the 1x1 downsample): 256 channels at 38x38 for a
300x300 input. Five extra blocks (conv1x1 + ReLU + conv3x3 + ReLU, no BN) bring the feature maps
to [38, 19, 10, 5, 3, 1] with [256, 512, 512, 256, 256, 256] channels. Each level has a 3x3 ``loc``
head (nd*4 channels) and ``conf`` head (nd*C channels); conv channel ``k*nd + d`` holds
coordinate/class ``k`` of box type ``d``, so reshaping to [N, 4, -1] / [N, C, -1] lists the
priors in the default boxes' order (level, type, row, column).

The heads follow the anchor design: ``num_defaults`` box types per cell of each level, the
reference's [4, 6, 6, 6, 4, 4] by default (``DefaultBoxes.num_defaults_per_cell``;
:func:`build_model` takes them from a design and checks its grids against the feature maps).

Init: extra blocks and heads get Xavier-uniform weights; biases keep PyTorch's default init.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet34_Weights, resnet34
from torchvision.models.resnet import BasicBlock

__all__ = ["SSD300", "build_model", "check_design", "resnet34_backbone", "RESNET34_URL", "FEATURE_SIZES"]

RESNET34_URL = ResNet34_Weights.IMAGENET1K_V1.url
NUM_DEFAULTS = [4, 6, 6, 6, 4, 4]
OUT_CHANNELS = [256, 512, 512, 256, 256, 256]
FEATURE_SIZES = [38, 19, 10, 5, 3, 1]  # the feature maps of a 300x300 input
STEPS = [8, 16, 32, 64, 100, 300]  # their default boxes' centre spacing in pixels (SPEC.md)


def _hub_checkpoint_path() -> Path:
    """Where torch.hub keeps the ResNet34 file (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(RESNET34_URL)


def _load_backbone_state(weights: str | os.PathLike) -> dict:
    """The ResNet34 ImageNet state dict, from torch.hub's cache or a local file."""
    if str(weights) == "imagenet":
        path = _hub_checkpoint_path()
        if not path.exists():
            try:
                return ResNet34_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
            except Exception as e:  # offline: URLError, socket errors, ...
                raise RuntimeError(
                    f"could not download the ResNet34 ImageNet weights ({e.__class__.__name__}: "
                    f"{e}). Put {os.path.basename(RESNET34_URL)} (from {RESNET34_URL}) at "
                    f"{path} (TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}), or pass "
                    f"backbone_weights=<path to a state dict>."
                ) from e
    else:
        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"backbone weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"{path}: not a loadable state dict ({e})") from e
    if not isinstance(state, dict):
        raise RuntimeError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def resnet34_backbone(weights: str | os.PathLike | None = None) -> nn.Sequential:
    """ResNet34 conv1..layer3 with stride 1 in layer3 (output stride 8).

    Args:
        weights: None (random init), ``"imagenet"`` (torchvision's IMAGENET1K_V1 through
            torch.hub, honouring TORCH_HOME) or a path to a ResNet34 state dict.
    """
    rn = resnet34(weights=None)
    if weights is not None:
        state = _load_backbone_state(weights)
        try:
            rn.load_state_dict(state)
        except RuntimeError as e:
            raise RuntimeError(f"{weights}: not a ResNet34 state dict: {e}") from e
    first = rn.layer3[0]
    first.conv1.stride = (1, 1)
    first.downsample[0].stride = (1, 1)
    return nn.Sequential(rn.conv1, rn.bn1, rn.relu, rn.maxpool, rn.layer1, rn.layer2, rn.layer3)


def narrow_resnet34_backbone(width: float) -> nn.Sequential:
    """ResNet34's conv1..layer3 layout (3, 4, 6 BasicBlocks, layer3 at stride 1) with every
    channel count multiplied by ``width``: the demo's small backbone (width 0.25 costs about
    1/16 of the FLOPs). Random init only: there are no ImageNet weights for it."""
    planes = [max(8, int(round(c * width))) for c in (64, 128, 256)]

    def layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or cin != cout:
            down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(cout))
        return nn.Sequential(BasicBlock(cin, cout, stride, down),
                             *[BasicBlock(cout, cout) for _ in range(blocks - 1)])

    return nn.Sequential(
        nn.Conv2d(3, planes[0], 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(planes[0]),
        nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1),
        layer(planes[0], planes[0], 3, 1), layer(planes[0], planes[1], 4, 2),
        layer(planes[1], planes[2], 6, 1))


def _extra_block(cin: int, mid: int, cout: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, mid, kernel_size=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, cout, kernel_size=3, stride=stride, padding=padding),
        nn.ReLU(inplace=True),
    )


class SSD300(nn.Module):
    """SSD300-ResNet34.

    Args:
        num_classes: classes including background (81 for COCO).
        backbone_weights: see :func:`resnet34_backbone`.
        width: channel multiplier. 1.0 is the reference model; smaller values build the same
            layout with ``width`` times the channels everywhere (backbone, extra blocks; the
            heads keep their box/class outputs), e.g. 0.25 for the CPU demo.
        num_defaults: box types per cell of each of the six levels (the anchor design's).

    Forward:
        images (Tensor[B, 3, 300, 300]) normalised -> ``(ploc (Tensor[B, 4, P]),
        plabel (Tensor[B, num_classes, P]))``, P the design's default boxes (8732 for the
        reference's). Works in channels_last and under autocast
        (outputs then come in the autocast dtype).
    """

    def __init__(self, num_classes: int = 81, backbone_weights: str | os.PathLike | None = None,
                 width: float = 1.0, num_defaults: tuple[int, ...] = tuple(NUM_DEFAULTS)):
        super().__init__()
        if len(num_defaults) != len(OUT_CHANNELS) or min(num_defaults) < 1:
            raise ValueError(f"num_defaults: need a positive box-type count for each of the "
                             f"{len(OUT_CHANNELS)} levels, got {list(num_defaults)}")
        self.num_classes = num_classes
        self.width = width
        self.num_defaults = [int(n) for n in num_defaults]
        if width == 1.0:
            self.backbone = resnet34_backbone(backbone_weights)
        elif backbone_weights is not None:
            raise ValueError(f"backbone_weights={backbone_weights!r} needs width=1.0 (there are no "
                             f"pretrained weights for width {width})")
        else:
            self.backbone = narrow_resnet34_backbone(width)

        def ch(n: int) -> int:
            return max(8, int(round(n * width)))

        c = [ch(n) for n in OUT_CHANNELS]
        self.extra = nn.ModuleList([
            _extra_block(c[0], ch(256), c[1], 2, 1),
            _extra_block(c[1], ch(256), c[2], 2, 1),
            _extra_block(c[2], ch(128), c[3], 2, 1),
            _extra_block(c[3], ch(128), c[4], 1, 0),
            _extra_block(c[4], ch(128), c[5], 1, 0),
        ])
        self.loc = nn.ModuleList(
            nn.Conv2d(ch, nd * 4, kernel_size=3, padding=1) for nd, ch in zip(self.num_defaults, c))
        self.conf = nn.ModuleList(
            nn.Conv2d(ch, nd * num_classes, kernel_size=3, padding=1)
            for nd, ch in zip(self.num_defaults, c))
        for layer in [*self.extra, *self.loc, *self.conf]:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.backbone(images)
        features = [x]
        for block in self.extra:
            x = block(x)
            features.append(x)
        n = images.shape[0]
        # reshape, not view: channels_last outputs are not contiguous in NCHW order.
        locs = [head(f).reshape(n, 4, -1) for head, f in zip(self.loc, features)]
        confs = [head(f).reshape(n, self.num_classes, -1) for head, f in zip(self.conf, features)]
        return torch.cat(locs, 2).contiguous(), torch.cat(confs, 2).contiguous()


def check_design(dboxes, source: str = "") -> None:
    """Refuses an anchor design whose grids are not SSD300's feature maps."""
    if (dboxes.fig_size != 300 or list(dboxes.feature_sizes) != FEATURE_SIZES
            or [float(s) for s in dboxes.steps] != [float(s) for s in STEPS]):
        raise ValueError(
            f"{source or 'anchor design'}: SSD300 makes feature maps {FEATURE_SIZES} (steps "
            f"{STEPS}) from a 300x300 input; the design has fig_size {dboxes.fig_size}, feature "
            f"sizes {list(dboxes.feature_sizes)} and steps {list(dboxes.steps)}")


def build_model(num_classes: int, dboxes, width: float = 1.0,
                backbone_weights: str | os.PathLike | None = None, source: str = "") -> SSD300:
    """An :class:`SSD300` whose heads fit an anchor design (``anchors.DefaultBoxes``).

    Raises ValueError (naming ``source``, e.g. the design file) when the design's grids are not
    the six feature maps of a 300x300 input (:func:`check_design`)."""
    check_design(dboxes, source)
    return SSD300(num_classes=num_classes, backbone_weights=backbone_weights, width=width,
                  num_defaults=dboxes.num_defaults_per_cell)
