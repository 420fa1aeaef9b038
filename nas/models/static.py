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


class Network(nn.Module):
    """A static MobileNet-family network: stem, stages of MBConv blocks, head, classifier."""

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
