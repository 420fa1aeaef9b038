"""DynamicNet: one elastic, hybrid network that serves as supernet, SubNet and augmented model.

All weights have the size of a *max* Arch. ``set_active_subnet(arch, blocks)`` selects any Arch
that fits inside it: per stage, a list of max-block indices (OFA's elastic depth is the prefix
``range(d)``; a TargetNet cut out of a SubNet may use any subset that keeps each stage's first
block), and per layer a smaller width, expand (mid) width, SE width and centred kernel. Each
conv's operator comes from the active Arch.

``set_active_subnet(aug_arch, aug_blocks, target=T, target_blocks=tb)`` is the *hybrid*
configuration of ShiftAddAug's augmented pass: layers of the TargetNet ``T`` compute their first
channels (T's channels) with T's MF operators on remapped weights and the rest multiplicatively;
blocks outside ``tb`` (augmented depth) are multiplicative.

``get_active_subnet()`` returns the static ``nas.models.Network`` of the active (non-hybrid)
configuration, MF weights remapped and rounded, BN statistics copied: its logits equal the
DynamicNet's for the same configuration.

Module names follow the static network (``stem``, ``stages.i.j.{expand,dw,se,project}``,
``feature_mix``, ``post_pool``, ``classifier``) with ``j`` the max-block index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.arch import Arch, BlockSpec, block_in_channels
from nas.models.static import build_act, build_model, dense_features, pooled_features, seg_logits
from nas.ops.hybrid import HybridConv2d, HybridLinear


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first ``C`` channels of its max-size parameters and statistics.

    Slices of the running buffers are views, so batch statistics update the stored buffers in
    place (as in OFA).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        use_batch = self.training or self.running_mean is None
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm2d does
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x,
            self.running_mean[:c] if self.running_mean is not None else None,
            self.running_var[:c] if self.running_var is not None else None,
            self.weight[:c],
            self.bias[:c],
            use_batch,
            momentum,
            self.eps,
        )


class DynConvBNAct(nn.Module):
    """Elastic conv (a ``HybridConv2d``) -> elastic BN -> activation; BN off for convs with a bias."""

    def __init__(self, max_in: int, max_out: int, max_kernel: int = 1, stride: int = 1, depthwise: bool = False,
                 act: str = "relu6", bn: bool = True, **hybrid: Any):
        super().__init__()
        self.conv = HybridConv2d(max_in, max_out, max_kernel, stride, depthwise, bias=not bn, **hybrid)
        self.bn = DynamicBatchNorm2d(max_out) if bn else None
        self.act = build_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class DynSE(nn.Module):
    """Elastic squeeze-and-excitation: pooled mid channels -> reduce conv -> ReLU -> expand conv -> gate."""

    def __init__(self, max_mid: int, max_se: int, **hybrid: Any):
        super().__init__()
        self.reduce = HybridConv2d(max_mid, max_se, 1, bias=True, **hybrid)
        self.expand = HybridConv2d(max_se, max_mid, 1, bias=True, **hybrid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.adaptive_avg_pool2d(x, 1)
        g = self.expand(F.relu(self.reduce(g)))
        return x * F.hardsigmoid(g)


class DynMBConv(nn.Module):
    """Elastic inverted-residual block: [expand 1x1] -> depthwise -> [SE] -> project 1x1 (+ shortcut), configured per step."""

    def __init__(self, max_in: int, b: BlockSpec, **hybrid: Any):
        super().__init__()
        mid = b.mid_channels
        self.expand = None if b.expand_ratio == 1 else DynConvBNAct(max_in, mid, 1, act=b.act, **hybrid)
        self.dw = DynConvBNAct(mid, mid, b.kernel_size, b.stride, depthwise=True, act=b.act, **hybrid)
        self.se = DynSE(mid, b.se_channels, **hybrid) if b.se_channels else None
        self.project = DynConvBNAct(mid, b.out_channels, 1, act="none", **hybrid)
        self.use_expand = self.expand is not None
        self.use_se = self.se is not None
        self.shortcut = b.shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.use_expand else x
        y = self.dw(y)
        if self.use_se:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.shortcut else y


class DynSegHead(nn.Module):
    """The elastic segmentation head (``nas.models.static.SegHead``): hidden channels elastic,
    classifiers elastic in their input channels."""

    def __init__(self, max_arch: Arch, max_in: int, max_skip: int, **hybrid):
        super().__init__()
        h, k = max_arch.seg_head, max_arch.num_classes
        self.cbr = DynConvBNAct(max_in, h.channels, 1, act=h.act, **hybrid)
        self.scale = DynConvBNAct(max_in, h.channels, 1, act="none", **hybrid)
        self.high_classifier = HybridConv2d(h.channels, k, 1, bias=True, **hybrid)
        self.low_classifier = HybridConv2d(max_skip, k, 1, bias=True, **hybrid)

    def configure(self, a: Arch, ref: Arch, c_ref: int) -> None:
        """Active widths of ``a``; MF prefixes (operators and channels) of ``ref`` (the TargetNet
        in the hybrid configuration, else ``a`` itself) whose last features have ``c_ref`` channels."""
        h, rh, k = a.seg_head, ref.seg_head, a.num_classes
        self.cbr.conv.configure(h.channels, None, rh.op, rh.channels, c_ref)
        self.scale.conv.configure(h.channels, None, rh.gate_op, rh.channels, c_ref)
        self.high_classifier.configure(k, None, ref.classifier.op, k, rh.channels)
        skip_ref = ref.stages[rh.skip_stage].blocks[-1].out_channels
        self.low_classifier.configure(k, None, ref.classifier.op, k, skip_ref)


@dataclass(frozen=True)
class _LayerTarget:
    """MF prefix of one conv in the hybrid configuration."""

    op: str = "mult"
    out: int = 0
    inp: int = 0


class DynamicNet(nn.Module):
    """The elastic, hybrid network over a max Arch: supernet, SubNet and augmented network in one
    (module docstring). ``set_active_subnet`` configures it, ``get_active_subnet`` exports it.
    """

    def __init__(self, max_arch: Arch, remap: str = "cdf-fc", op_options: dict | None = None, branch_norm: bool = False,
                 remap_affine: bool = False):
        super().__init__()
        self.max_arch = max_arch
        hy = dict(remap=remap, op_options=op_options, branch_norm=branch_norm, remap_affine=remap_affine)
        a = max_arch
        s = a.stem
        self.stem = DynConvBNAct(a.in_channels, s.out_channels, s.kernel_size, s.stride, act=s.act, **hy)
        ins = iter(block_in_channels(a))
        self.stages = nn.ModuleList(nn.ModuleList(DynMBConv(next(ins), b, **hy) for b in st.blocks) for st in a.stages)
        c = a.stages[-1].blocks[-1].out_channels
        self.feature_mix = None
        if a.feature_mix is not None:
            self.feature_mix = DynConvBNAct(c, a.feature_mix.out_channels, 1, act=a.feature_mix.act, **hy)
            c = a.feature_mix.out_channels
        self.post_pool = None
        if a.post_pool is not None:
            self.post_pool = DynConvBNAct(c, a.post_pool.out_channels, 1, act=a.post_pool.act, bn=False, **hy)
            c = a.post_pool.out_channels
        if a.is_segmentation:  # a dense head instead of the classifier
            self.head = DynSegHead(a, c, a.stages[a.seg_head.skip_stage].blocks[-1].out_channels, **hy)
            self.classifier = None
        else:
            self.classifier = HybridLinear(c, a.num_classes, remap=remap, op_options=op_options, remap_affine=remap_affine)
        self.dropout_rate = a.classifier.dropout
        self.generator: torch.Generator | None = None  # the dropout masks' stream (set by TrainLoop); None: torch's global one
        # activation checkpointing of the blocks (ShiftAddAug's augmented pass, TrainConfig.aug_checkpoint)
        self.checkpoint_blocks = False
        # Residual blocks start as the identity (last BN scale 0, Goyal et al. 2017). Deep adder
        # networks collapse to rank-few features at initialisation without it (measured: an Add
        # MobileNetV2-Tiny does not learn at all on mnist5k; with it, it does).
        for stage in self.stages:
            for blk in stage:
                if blk.shortcut:
                    nn.init.zeros_(blk.project.bn.weight)
        self.active_arch: Arch | None = None
        self.active_blocks: tuple[tuple[int, ...], ...] = ()
        self.hybrid = False
        self.set_active_subnet(max_arch)

    # ------------------------------------------------------------------------------ configuration
    def _check_fits(self, arch: Arch, blocks: tuple[tuple[int, ...], ...]) -> None:
        m = self.max_arch
        err = ValueError
        if len(arch.stages) != len(m.stages) or arch.in_channels != m.in_channels or arch.num_classes != m.num_classes:
            raise err(f"{arch.name} does not fit {m.name}: stages, input channels and classes must match")
        if arch.stem.out_channels > m.stem.out_channels or arch.stem.kernel_size != m.stem.kernel_size or arch.stem.stride != m.stem.stride:
            raise err("stem does not fit")
        for i, (st, mst, idx) in enumerate(zip(arch.stages, m.stages, blocks)):
            if len(idx) != len(st.blocks) or len(set(idx)) != len(idx) or list(idx) != sorted(idx):
                raise err(f"stage {i}: block indices {idx} must be increasing and one per block")
            if idx[0] != 0 or idx[-1] >= len(mst.blocks):
                raise err(f"stage {i}: block indices {idx} must start at 0 and stay below {len(mst.blocks)}")
            for b, j in zip(st.blocks, idx):
                mb = mst.blocks[j]
                if b.out_channels > mb.out_channels or b.mid_channels > mb.mid_channels or b.kernel_size > mb.kernel_size:
                    raise err(f"stage {i} block {j}: {b} does not fit {mb}")
                if b.stride != mb.stride or b.se_channels > mb.se_channels or (b.se_channels > 0) != (mb.se_channels > 0):
                    raise err(f"stage {i} block {j}: stride / SE differ from the max net")
                if b.expand_ratio != 1 and mb.expand_ratio == 1:
                    raise err(f"stage {i} block {j}: the max net has no expand conv here")
        for head in ("feature_mix", "post_pool"):
            h, mh = getattr(arch, head), getattr(m, head)
            if (h is None) != (mh is None) or (h is not None and h.out_channels > mh.out_channels):
                raise err(f"{head} does not fit")
        if arch.task != m.task:
            raise err(f"{arch.name} is a {arch.task} network, {m.name} a {m.task} one")
        if arch.seg_head is not None:
            h, mh = arch.seg_head, m.seg_head
            if h.skip_stage != mh.skip_stage or h.act != mh.act or h.channels > mh.channels:
                raise err(f"seg_head {h} does not fit {mh}")

    def set_active_subnet(
        self,
        arch: Arch,
        blocks: list[list[int]] | None = None,
        target: Arch | None = None,
        target_blocks: list[list[int]] | None = None,
    ) -> None:
        """Activate ``arch`` on max-blocks ``blocks`` (default: the first ``depth`` of each stage).

        With ``target`` (a TargetNet on max-blocks ``target_blocks``, each in ``blocks``), the
        configuration is hybrid: see the module docstring.
        """
        blocks_t = tuple(tuple(b) for b in (blocks or [range(len(s.blocks)) for s in arch.stages]))
        self._check_fits(arch, blocks_t)
        tmap: dict[tuple[int, int], tuple[BlockSpec, int]] = {}
        if target is not None:
            tb = tuple(tuple(b) for b in (target_blocks or [range(len(s.blocks)) for s in target.stages]))
            self._check_fits(target, tb)
            for i, (st, idx) in enumerate(zip(target.stages, tb)):
                for _b, j in zip(st.blocks, idx):
                    if j not in blocks_t[i]:
                        raise ValueError(f"target block {i}.{j} is not active in the augmented net")
            for (i, j, b), cin in zip(_indexed(target, tb), block_in_channels(target)):
                tmap[(i, j)] = (b, cin)
        self.active_arch, self.active_blocks, self.hybrid = arch, blocks_t, target is not None

        def tgt(op: str, out: int, inp: int) -> _LayerTarget:
            return _LayerTarget(op, out, inp)

        a = arch
        # stem
        t = tgt(target.stem.op, target.stem.out_channels, a.in_channels) if target else tgt(a.stem.op, a.stem.out_channels, a.in_channels)
        self.stem.conv.configure(a.stem.out_channels, None, t.op, t.out, t.inp)
        # blocks
        for (i, j, b), cin in zip(_indexed(a, blocks_t), block_in_channels(a)):
            blk = self.stages[i][j]
            if target is None:
                tb_, tcin = b, cin
            elif (i, j) in tmap:
                tb_, tcin = tmap[(i, j)]
                if tb_.kernel_size != b.kernel_size:
                    raise ValueError(f"target block {i}.{j} has kernel {tb_.kernel_size}, the augmented one {b.kernel_size}")
                if (tb_.expand_ratio == 1) != (b.expand_ratio == 1):
                    raise ValueError(f"target block {i}.{j}: expand conv present in one net only")
            else:
                tb_, tcin = None, 0
            blk.use_expand = b.expand_ratio != 1
            blk.use_se = b.se_channels > 0
            blk.shortcut = b.shortcut
            if blk.use_expand:
                blk.expand.conv.configure(b.mid_channels, None, *(_t(tb_.op, tb_.mid_channels, tcin) if tb_ else ()))
            blk.dw.conv.configure(b.mid_channels, b.kernel_size, *(_t(tb_.dw_op, tb_.mid_channels, tb_.mid_channels) if tb_ else ()))
            if blk.use_se:
                blk.se.reduce.configure(b.se_channels, None, *(_t(tb_.se_op, tb_.se_channels, tb_.mid_channels) if tb_ else ()))
                blk.se.expand.configure(b.mid_channels, None, *(_t(tb_.se_op, tb_.mid_channels, tb_.se_channels) if tb_ else ()))
            blk.project.conv.configure(b.out_channels, None, *(_t(tb_.op, tb_.out_channels, tb_.mid_channels) if tb_ else ()))
        ref = target if target is not None else a
        c_ref = ref.stages[-1].blocks[-1].out_channels
        if self.feature_mix is not None:
            fm, rfm = a.feature_mix, ref.feature_mix
            self.feature_mix.conv.configure(fm.out_channels, None, rfm.op, rfm.out_channels, c_ref)
            c_ref = rfm.out_channels
        if self.post_pool is not None:
            pp, rpp = a.post_pool, ref.post_pool
            self.post_pool.conv.configure(pp.out_channels, None, rpp.op, rpp.out_channels, c_ref)
            c_ref = rpp.out_channels
        if a.is_segmentation:
            self.head.configure(a, ref, c_ref)
        else:
            self.classifier.configure(ref.classifier.op, c_ref)

    # ------------------------------------------------------------------------------ forward / export
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        ckpt = self.checkpoint_blocks and torch.is_grad_enabled()
        for i, idx in enumerate(self.active_blocks):
            for j in idx:
                x = _checkpointed(self.stages[i][j], x) if ckpt else self.stages[i][j](x)
        return pooled_features(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:  # segmentation: per-pixel logits at the input size
            f, skip = dense_features(self, x, self.active_blocks, self.max_arch.seg_head.skip_stage)
            return seg_logits(self.head, f, skip, x.shape[-2:])
        x = self.forward_features(x)
        if self.dropout_rate > 0 and self.training:
            x = _dropout(x, self.dropout_rate, self.generator)
        return self.classifier(x)

    @torch.no_grad()
    def get_active_subnet(self, op_options: dict | None = None) -> nn.Module:
        """A static ``Network`` of the active configuration, weights copied (MF weights folded)."""
        if self.hybrid:
            raise ValueError("get_active_subnet needs a plain configuration (call set_active_subnet without target)")
        a = self.active_arch
        net = build_model(a, op_options)
        _copy_cba(self.stem, net.stem, a.in_channels)
        for (i, j, b), cin, static in zip(_indexed(a, self.active_blocks), block_in_channels(a), _static_blocks(net)):
            dyn = self.stages[i][j]
            if b.expand_ratio != 1:
                _copy_cba(dyn.expand, static.expand, cin)
            _copy_cba(dyn.dw, static.dw, b.mid_channels)
            if b.se_channels:
                static.se.reduce = dyn.se.reduce.export(b.mid_channels)
                static.se.expand = dyn.se.expand.export(b.se_channels)
            _copy_cba(dyn.project, static.project, b.mid_channels)
        c = a.stages[-1].blocks[-1].out_channels
        if a.feature_mix is not None:
            _copy_cba(self.feature_mix, net.feature_mix, c)
            c = a.feature_mix.out_channels
        if a.post_pool is not None:
            _copy_cba(self.post_pool, net.post_pool, c)
            c = a.post_pool.out_channels
        if a.is_segmentation:
            h = a.seg_head
            _copy_cba(self.head.cbr, net.head.cbr, c)
            _copy_cba(self.head.scale, net.head.scale, c)
            net.head.high_classifier = self.head.high_classifier.export(h.channels)
            net.head.low_classifier = self.head.low_classifier.export(a.stages[h.skip_stage].blocks[-1].out_channels)
        else:
            net.classifier = self.classifier.export(c)
        return net.train(self.training)

    def regularizer(self) -> torch.Tensor | None:
        """Sum of the remap regularisers (``pwl-kl``) of the last forward, if any."""
        terms = [r for m in self.modules() if hasattr(m, "regularizer") and m is not self for r in [m.regularizer()] if r is not None]
        return torch.stack(terms).sum() if terms else None


def _checkpointed(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` keeping only its input for backward: the block's activations are recomputed
    (once) when its gradient is needed. The recomputation must not count the batch in BatchNorm's
    running statistics a second time, so their buffers are restored after it; blocks draw no
    random numbers (dropout is before the classifier), so no RNG state needs saving."""
    from torch.utils.checkpoint import checkpoint

    calls = 0

    def run(inp: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return block(inp)
        buffers = [b for m in block.modules() if isinstance(m, nn.BatchNorm2d) for b in m.buffers()]
        saved = [b.clone() for b in buffers]
        try:
            return block(inp)
        finally:  # also when torch stops the recomputation early (once it has what backward needs)
            with torch.no_grad():
                for b, v in zip(buffers, saved):
                    b.copy_(v)

    return checkpoint(run, x, use_reentrant=False, preserve_rng_state=False)


def _dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Training-mode dropout with its mask drawn from ``generator``. ``F.dropout`` takes no
    generator; on the CPU it computes exactly this (a Bernoulli(1 - p) mask scaled by 1 / (1 - p)),
    so a generator in the global stream's state gives F.dropout's numbers."""
    if generator is None:
        return F.dropout(x, p, True)
    return x * torch.empty_like(x).bernoulli_(1 - p, generator=generator).div_(1 - p)


def _t(op: str, out: int, inp: int) -> tuple:
    return (op, out, inp)


def _indexed(arch: Arch, blocks) -> list[tuple[int, int, BlockSpec]]:
    return [(i, j, b) for i, (st, idx) in enumerate(zip(arch.stages, blocks)) for b, j in zip(st.blocks, idx)]


def _static_blocks(net):
    for stage in net.stages:
        yield from stage


def _copy_bn(src: DynamicBatchNorm2d, dst: nn.BatchNorm2d) -> None:
    c = dst.num_features
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)
    dst.eps, dst.momentum = src.eps, src.momentum


def _copy_cba(src: DynConvBNAct, dst, cin: int) -> None:
    dst.conv = src.conv.export(cin)
    if src.bn is not None:
        _copy_bn(src.bn, dst.bn)


# ---------------------------------------------------------------------------------- channel sorting


@torch.no_grad()
def sort_channels(net: DynamicNet, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Reorder every block's mid channels by importance (NetAug's ``sort_channels_inner``).

    Importance of a mid channel = L1 norm of the project conv weights reading it. The permutation
    is applied consistently to the expand conv and its BN (outputs), the depthwise conv and its BN,
    the SE convs and the project conv (inputs), and to the optimizer's per-parameter state
    (momentum buffers), so the first channels, which the TargetNet uses, are the most important.
    """
    for stage in net.stages:
        for blk in stage:
            if blk.expand is None:  # the mid channels are the block's input: nothing to reorder
                continue
            perm = torch.argsort(blk.project.conv.weight.abs().sum(dim=(0, 2, 3)), descending=True)
            moves: list[tuple[torch.Tensor, int]] = [(blk.expand.conv.weight, 0)] + _bn_tensors(blk.expand.bn)
            moves += _remap_affine(blk.expand.conv)
            moves += [(blk.dw.conv.weight, 0)] + _bn_tensors(blk.dw.bn)
            if blk.se is not None:
                moves += [(blk.se.reduce.weight, 1), (blk.se.expand.weight, 0), (blk.se.expand.bias, 0)]
                moves += _remap_affine(blk.se.expand)
            moves += [(blk.project.conv.weight, 1)]
            for t, dim in moves:
                _permute(t, perm, dim, optimizer)


def _remap_affine(conv: HybridConv2d) -> list[tuple[torch.Tensor, int]]:
    """The per-output-channel remap parameters of ``conv`` (they follow its output channels)."""
    return [(conv.remap.scale, 0), (conv.remap.shift, 0)] if conv.remap.affine else []


def _bn_tensors(bn: DynamicBatchNorm2d) -> list[tuple[torch.Tensor, int]]:
    return [(bn.weight, 0), (bn.bias, 0), (bn.running_mean, 0), (bn.running_var, 0)]


def _permute(t: torch.Tensor, perm: torch.Tensor, dim: int, optimizer) -> None:
    t.copy_(t.index_select(dim, perm))
    if optimizer is not None and isinstance(t, nn.Parameter):
        for v in optimizer.state.get(t, {}).values():
            if torch.is_tensor(v) and v.shape == t.shape:
                v.copy_(v.index_select(dim, perm))


@torch.no_grad()
def inherit_weights(dst: DynamicNet, src_state: dict[str, torch.Tensor]) -> int:
    """Copy a (larger) DynamicNet's weights into ``dst`` where both have them (OFA inheritance).

    Every tensor takes the overlapping leading slice of its namesake (channels are prefixes);
    conv kernels take the centred crop, remap FCs the matching centre block. Block indices must
    mean the same blocks in both (a SubNet's blocks are the supernet's first ``depth`` blocks).
    Returns the number of tensors copied.
    """
    from nas.ops.remap import _centre_index

    n = 0
    for name, t in dst.state_dict().items():
        s = src_state.get(name)
        if s is None or s.dim() != t.dim():
            continue
        if name.endswith("remap.fc") and s.shape != t.shape:
            k, kmax = int(t.shape[0] ** 0.5), int(s.shape[0] ** 0.5)
            idx = _centre_index(k, kmax, s.device)
            s = s[idx][:, idx]
        elif t.dim() == 4 and s.shape[-1] != t.shape[-1]:
            off = (s.shape[-1] - t.shape[-1]) // 2
            if off < 0:
                continue
            s = s[..., off : off + t.shape[-1], off : off + t.shape[-1]]
        region = tuple(slice(0, min(a, b)) for a, b in zip(t.shape, s.shape))
        t[region].copy_(s[region])
        n += 1
    return n
