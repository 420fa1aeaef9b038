"""Static networks built from an Arch.

Module paths line up with the layer records of ``nas.cost.layers.arch_layers``: layer
``s1.b0.expand`` is computed by module ``stages.1.0.expand.conv`` (its ``Layer.path``), so costs,
weights and exported files line up.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.arch import Arch, BlockSpec, block_in_channels, has_shortcut
from nas.ops.registry import create_conv, create_linear, options_for


def build_act(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "hswish":
        return nn.Hardswish(inplace=True)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}")


class ConvBNAct(nn.Module):
    """conv -> BatchNorm -> activation (BN optional: the post-pool conv has a bias instead)."""

    def __init__(self, op: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: str = "relu6",
                 bn: bool = True, op_options: dict | None = None):
        super().__init__()
        self.conv = create_conv(op, cin, cout, k, stride, groups, bias=not bn, **options_for(op, op_options))
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.act = build_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class SqueezeExcite(nn.Module):
    """SE as in MobileNetV3 / NetAug: pool -> 1x1 (bias) -> ReLU -> 1x1 (bias) -> hard sigmoid gate."""

    def __init__(self, op: str, channels: int, mid: int, op_options: dict | None = None):
        super().__init__()
        self.reduce = create_conv(op, channels, mid, 1, bias=True, **options_for(op, op_options))
        self.expand = create_conv(op, mid, channels, 1, bias=True, **options_for(op, op_options))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.adaptive_avg_pool2d(x, 1)
        g = self.expand(F.relu(self.reduce(g)))
        return x * F.hardsigmoid(g)


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 project (+ identity)."""

    def __init__(self, cin: int, b: BlockSpec, op_options: dict | None = None):
        super().__init__()
        mid = b.mid_channels
        self.expand = None if b.expand_ratio == 1 else ConvBNAct(b.op, cin, mid, 1, act=b.act, op_options=op_options)
        self.dw = ConvBNAct(b.dw_op, mid, mid, b.kernel_size, b.stride, groups=mid, act=b.act, op_options=op_options)
        self.se = SqueezeExcite(b.se_op, mid, b.se_channels, op_options) if b.se_channels else None
        self.project = ConvBNAct(b.op, mid, b.out_channels, 1, act="none", op_options=op_options)
        self.shortcut = has_shortcut(cin, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.shortcut else y


class SegHead(nn.Module):
    """The LR-ASPP-style segmentation head of ``Arch.seg_head`` (``seg_logits`` is its forward).

    ``cbr``: 1x1 conv + BN + act on the last features; ``scale``: 1x1 conv + BN on their global
    average (the gate, through a hard sigmoid as in the SE blocks: piecewise linear, no exponential
    to compute on an MF device); ``high_classifier`` / ``low_classifier``: 1x1 convs with
    bias on the gated branch and on the skip."""

    def __init__(self, arch: Arch, cin: int, skip_in: int, op_options: dict | None = None):
        super().__init__()
        h, k, op = arch.seg_head, arch.num_classes, arch.classifier.op
        self.cbr = ConvBNAct(h.op, cin, h.channels, 1, act=h.act, op_options=op_options)
        self.scale = ConvBNAct(h.gate_op, cin, h.channels, 1, act="none", op_options=op_options)
        self.high_classifier = create_conv(op, h.channels, k, 1, bias=True, **options_for(op, op_options))
        self.low_classifier = create_conv(op, skip_in, k, 1, bias=True, **options_for(op, op_options))


def seg_logits(head: nn.Module, x: torch.Tensor, skip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The segmentation head's forward (static or supernet): per-pixel logits at ``size``.

    The high branch is classified at its own (low) resolution and its class logits upsampled:
    for a linear classifier (mult or shift: bilinear weights sum to one) this equals LR-ASPP's
    upsample-then-classify, on ``num_classes`` instead of ``channels`` channels."""
    gate = F.hardsigmoid(head.scale(F.adaptive_avg_pool2d(x, 1)))
    y = upsample(head.high_classifier(head.cbr(x) * gate), skip.shape[-2:])
    return upsample(y + head.low_classifier(skip), size)


def upsample(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling (half-pixel centres: ``align_corners=False``; ONNX ``Resize``)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def dense_features(net: nn.Module, x: torch.Tensor, blocks, skip_stage: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stem, blocks (``blocks``: per stage, the block indices to run) and feature mix of a
    segmentation network (static or supernet): the last features and the skip's (the output of
    stage ``skip_stage``)."""
    x = net.stem(x)
    skip = None
    for i, idx in enumerate(blocks):
        for j in idx:
            x = net.stages[i][j](x)
        if i == skip_stage:
            skip = x
    if net.feature_mix is not None:
        x = net.feature_mix(x)
    return x, skip


class Network(nn.Module):
    """A static MobileNet-family network: stem, stages of MBConv blocks, head, classifier
    (segmentation: stem, stages, feature mix, ``SegHead``)."""

    def __init__(self, arch: Arch, op_options: dict | None = None):
        super().__init__()
        self.arch = arch
        s = arch.stem
        self.stem = ConvBNAct(s.op, arch.in_channels, s.out_channels, s.kernel_size, s.stride, act=s.act, op_options=op_options)
        ins = iter(block_in_channels(arch))
        self.stages = nn.ModuleList(
            nn.ModuleList(MBConv(next(ins), b, op_options) for b in stage.blocks) for stage in arch.stages
        )
        c = arch.stages[-1].blocks[-1].out_channels
        self.feature_mix = None
        if arch.feature_mix is not None:
            fm = arch.feature_mix
            self.feature_mix = ConvBNAct(fm.op, c, fm.out_channels, 1, act=fm.act, op_options=op_options)
            c = fm.out_channels
        self.post_pool = None
        if arch.post_pool is not None:
            pp = arch.post_pool
            self.post_pool = ConvBNAct(pp.op, c, pp.out_channels, 1, act=pp.act, bn=False, op_options=op_options)
            c = pp.out_channels
        if arch.is_segmentation:
            skip_in = arch.stages[arch.seg_head.skip_stage].blocks[-1].out_channels
            self.head = SegHead(arch, c, skip_in, op_options)
            return
        self.dropout = nn.Dropout(arch.classifier.dropout) if arch.classifier.dropout > 0 else nn.Identity()
        op = arch.classifier.op
        self.classifier = create_linear(op, c, arch.num_classes, bias=True, **options_for(op, op_options))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return pooled_features(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch.is_segmentation:
            f, skip = dense_features(self, x, [range(len(st)) for st in self.stages], self.arch.seg_head.skip_stage)
            return seg_logits(self.head, f, skip, x.shape[-2:])
        return self.classifier(self.dropout(self.forward_features(x)))


def pooled_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The head of a network after its last block (static or supernet): feature mix, global
    average pool, the optional post-pool layer, flatten."""
    if net.feature_mix is not None:
        x = net.feature_mix(x)
    x = F.adaptive_avg_pool2d(x, 1)
    if net.post_pool is not None:
        x = net.post_pool(x)
    return torch.flatten(x, 1)


def build_model(arch: Arch, op_options: dict | None = None) -> Network:
    """Build the static network of ``arch``.

    ``op_options`` maps an operator kind to keyword options of its layers, e.g.
    ``{"shift": {"weight_bits": 5}, "add": {"eta": 0.2}}``.
    """
    return Network(arch, op_options)
