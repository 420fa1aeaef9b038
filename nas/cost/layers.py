"""The one per-layer decomposition of a network: ``arch_layers(arch)`` -> a list of ``Layer`` records.

Op counting (``nas.cost.counting``), the energy model (``nas.cost.energy``), latency measurement
(``nas.cost.latency``), the lookup tables (``nas.cost.tables``) and the enumeration of the layer
shapes a search space can produce (``nas.cost.shapes``) all read these records, and the C export
(``nas.codegen``) names its layers after them. Nothing parses a layer's name back into facts:
its kind, part, activation, stage and block are fields.

A layer's *part* is its place in the network (``PARTS``); the part fixes its *kind* (what it
computes, the lookup tables' ``kind`` column), its name and its module path in
``nas.models.Network``:

=============  ==========  ====================  ================================================
part           kind        name                  module (``stages.i.j.`` prefix inside a block)
=============  ==========  ====================  ================================================
stem           dense       stem                  stem.conv
expand         pointwise   s{i}.b{j}.expand      expand.conv
dw             depthwise   s{i}.b{j}.dw          dw.conv
se_pool        se          s{i}.b{j}.se.pool     se (the average pool of its forward)
se_reduce      se          s{i}.b{j}.se.reduce   se.reduce
se_expand      se          s{i}.b{j}.se.expand   se.expand
se_gate        se          s{i}.b{j}.se.gate     se (the gating product of its forward)
project        pointwise   s{i}.b{j}.project     project.conv
residual       residual    s{i}.b{j}.residual    the block (its identity shortcut)
feature_mix    pointwise   feature_mix           feature_mix.conv
pool           pool        pool                  the network (global average pool)
post_pool      pointwise   post_pool             post_pool.conv
classifier     linear      classifier            classifier
seg_pool       se          head.pool             head (the average pool of the gate)
seg_scale      pointwise   head.scale            head.scale.conv
seg_cbr        pointwise   head.cbr              head.cbr.conv
seg_gate       se          head.gate             head (the gating product)
seg_high_cls   pointwise   head.high_classifier  head.high_classifier
seg_up_skip    upsample    head.up_skip          head (bilinear, to the skip's size)
seg_low_cls    pointwise   head.low_classifier   head.low_classifier
seg_merge      residual    head.merge            head (the sum of the two branches)
seg_up_out     upsample    head.up_out           head (bilinear, to the input size)
=============  ==========  ====================  ================================================

A segmentation network (``Arch.task == "segmentation"``) has no pool / post-pool / classifier:
after the feature mix come the ``seg_*`` layers of its LR-ASPP head (``seg_head_layers``), in the
order of ``nas.models.static.seg_logits``. The gate's pool and product are priced like the SE
pieces they equal (same code, same table rows). An ``upsample`` layer's ``stride`` is its
upsampling factor (``out_hw = in_hw * stride``; segmentation archs upsample by whole factors), so
the dense output's resolution is part of every price; a factor-1 upsampling does nothing and has
no layer.

Adding a layer part (e.g. the layers of a segmentation head): add a ``Part`` to ``PARTS`` and emit
its records from ``arch_layers`` (a helper next to ``head_layers``, reading the new Arch fields),
each with the operator the Arch gives it. A part of an existing kind is counted, priced, timed and
tabled like the other layers of that kind with no further change; a new kind also needs its rule
in ``nas.cost.counting.layer_cost``, ``nas.cost.energy.is_charged`` and
``nas.cost.latency.layer_callable``, and is then accepted by the tables (``KINDS``).
"""

from __future__ import annotations

from dataclasses import dataclass

from nas.arch import Arch, BlockSpec, ConvSpec, SegHeadSpec, block_in_channels, conv_out_size

KINDS = ("dense", "pointwise", "depthwise", "se", "linear", "pool", "residual", "upsample")
CONV_KINDS = ("dense", "pointwise", "depthwise")


@dataclass(frozen=True)
class Part:
    """A place a layer can take in a network (see the module docstring's table).

    ``kind``: what the layer computes; ``suffix``: its name (after ``s{i}.b{j}.`` in a block);
    ``module``: the module that computes it, relative to its block or the network ('': the block
    or the network itself); ``table_part``: the lookup tables' ``part`` column (SE pieces);
    ``conv``: a conv whose weights the energy model charges (the SE convs are ``se`` layers).
    """

    kind: str
    suffix: str
    module: str
    in_block: bool = False
    table_part: str = ""
    conv: bool = False


PARTS: dict[str, Part] = {
    "stem": Part("dense", "stem", "stem.conv", conv=True),
    "expand": Part("pointwise", "expand", "expand.conv", in_block=True, conv=True),
    "dw": Part("depthwise", "dw", "dw.conv", in_block=True, conv=True),
    "se_pool": Part("se", "se.pool", "se", in_block=True, table_part="pool"),
    "se_reduce": Part("se", "se.reduce", "se.reduce", in_block=True, table_part="reduce", conv=True),
    "se_expand": Part("se", "se.expand", "se.expand", in_block=True, table_part="expand", conv=True),
    "se_gate": Part("se", "se.gate", "se", in_block=True, table_part="gate"),
    "project": Part("pointwise", "project", "project.conv", in_block=True, conv=True),
    "residual": Part("residual", "residual", "", in_block=True),
    "feature_mix": Part("pointwise", "feature_mix", "feature_mix.conv", conv=True),
    "pool": Part("pool", "pool", ""),
    "post_pool": Part("pointwise", "post_pool", "post_pool.conv", conv=True),
    "classifier": Part("linear", "classifier", "classifier"),
    "seg_pool": Part("se", "head.pool", "head", table_part="pool"),
    "seg_scale": Part("pointwise", "head.scale", "head.scale.conv", conv=True),
    "seg_cbr": Part("pointwise", "head.cbr", "head.cbr.conv", conv=True),
    "seg_gate": Part("se", "head.gate", "head", table_part="gate"),
    "seg_high_cls": Part("pointwise", "head.high_classifier", "head.high_classifier", conv=True),
    "seg_up_skip": Part("upsample", "head.up_skip", "head"),
    "seg_low_cls": Part("pointwise", "head.low_classifier", "head.low_classifier", conv=True),
    "seg_merge": Part("residual", "head.merge", "head"),
    "seg_up_out": Part("upsample", "head.up_out", "head"),
}
# the SE pieces by their lookup-table ``part`` (pool, reduce, expand, gate; the block's part of each)
SE_TABLE_PARTS: dict[str, str] = {}
for _name, _p in PARTS.items():
    if _p.kind == "se":
        SE_TABLE_PARTS.setdefault(_p.table_part, _name)


@dataclass(frozen=True)
class Layer:
    """One layer of a network: its shapes, operator and place (what counting, energy, latency and
    the lookup tables price).

    ``kind``: what it computes (``KINDS``); ``op``: its operator kind (pooling, gating and residual
    adds: ``mult``); ``act``: the activation of a conv-BN-activation layer (stem, expand, dw,
    project, feature_mix, post_pool), ``"none"`` elsewhere (the SE convs' ReLU and hard sigmoid
    belong to the SE pieces); ``part``: its place (``PARTS``); ``stage`` / ``block``: the block it
    belongs to (None outside blocks); ``name``: its display name (``s1.b0.expand``).
    """

    name: str
    kind: str
    op: str
    in_channels: int
    out_channels: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    in_hw: int = 1
    out_hw: int = 1
    bias: bool = False
    bn: bool = False
    act: str = "none"
    part: str = ""
    stage: int | None = None
    block: int | None = None

    @property
    def is_conv(self) -> bool:
        """A convolution (the SE convs included)."""
        return self.kind in CONV_KINDS or (self.part in PARTS and PARTS[self.part].conv)

    @property
    def has_weights(self) -> bool:
        """A conv or a linear layer: computed with its own operator kind."""
        return self.is_conv or self.kind == "linear"

    @property
    def table_part(self) -> str:
        """The lookup tables' ``part`` column: the SE piece, '' for other layers."""
        return PARTS[self.part].table_part if self.part in PARTS else ""

    @property
    def path(self) -> str:
        """Path of the module computing this layer in ``nas.models.Network`` (``stages.1.0.expand.conv``;
        '' for the network itself)."""
        p = PARTS[self.part]
        if not p.in_block:
            return p.module
        head = f"stages.{self.stage}.{self.block}"
        return f"{head}.{p.module}" if p.module else head


def make_layer(part: str, op: str, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
               groups: int = 1, in_hw: int = 1, out_hw: int = 1, bias: bool = False, bn: bool = False, act: str = "none",
               stage: int | None = None, block: int | None = None) -> Layer:
    """A Layer of ``part`` (its kind and name come from ``PARTS``)."""
    p = PARTS[part]
    name = f"s{stage}.b{block}.{p.suffix}" if p.in_block else p.suffix
    return Layer(name, p.kind, op, in_channels, out_channels, kernel_size, stride, groups, in_hw, out_hw, bias, bn, act,
                 part, stage, block)


def stem_layers(in_channels: int, stem: ConvSpec, hw: int) -> list[Layer]:
    """The stem conv at input resolution ``hw``."""
    out = conv_out_size(hw, stem.kernel_size, stem.stride)
    return [make_layer("stem", stem.op, in_channels, stem.out_channels, stem.kernel_size, stem.stride, 1, hw, out, bn=True, act=stem.act)]


def block_layers(stage: int, block: int, cin: int, b: BlockSpec, hw: int) -> list[Layer]:
    """The layers of block ``block`` of stage ``stage`` with ``cin`` input channels at ``hw`` x ``hw``."""
    mid = b.mid_channels
    out = conv_out_size(hw, b.kernel_size, b.stride)
    at: dict = {"stage": stage, "block": block}  # keyword arguments of make_layer
    layers = []
    if b.expand_ratio != 1:
        layers.append(make_layer("expand", b.op, cin, mid, 1, 1, 1, hw, hw, bn=True, act=b.act, **at))
    layers.append(make_layer("dw", b.dw_op, mid, mid, b.kernel_size, b.stride, mid, hw, out, bn=True, act=b.act, **at))
    if b.se_channels:
        layers += [
            make_layer("se_pool", "mult", mid, mid, 1, 1, 1, out, 1, **at),
            make_layer("se_reduce", b.se_op, mid, b.se_channels, 1, 1, 1, 1, 1, bias=True, **at),
            make_layer("se_expand", b.se_op, b.se_channels, mid, 1, 1, 1, 1, 1, bias=True, **at),
            make_layer("se_gate", "mult", mid, mid, 1, 1, 1, out, out, **at),
        ]
    layers.append(make_layer("project", b.op, mid, b.out_channels, 1, 1, 1, out, out, bn=True, **at))
    if b.shortcut:
        layers.append(make_layer("residual", "mult", b.out_channels, b.out_channels, 1, 1, 1, out, out, **at))
    return layers


def feature_mix_layers(c: int, hw: int, feature_mix: ConvSpec | None) -> list[Layer]:
    """The optional 1x1 feature mix after the last block (``c`` channels at ``hw`` x ``hw``)."""
    if feature_mix is None:
        return []
    return [make_layer("feature_mix", feature_mix.op, c, feature_mix.out_channels, 1, 1, 1, hw, hw, bn=True, act=feature_mix.act)]


def head_layers(c: int, hw: int, feature_mix: ConvSpec | None, post_pool: ConvSpec | None, classifier_op: str,
                num_classes: int) -> list[Layer]:
    """The layers after the last block (``c`` channels at ``hw`` x ``hw``): the optional 1x1
    feature mix, the global average pool, the optional post-pool 1x1 conv and the classifier."""
    layers = feature_mix_layers(c, hw, feature_mix)
    c = feature_mix.out_channels if feature_mix is not None else c
    layers.append(make_layer("pool", "mult", c, c, 1, 1, 1, hw, 1))
    if post_pool is not None:
        layers.append(make_layer("post_pool", post_pool.op, c, post_pool.out_channels, 1, 1, 1, 1, 1, bias=True, act=post_pool.act))
        c = post_pool.out_channels
    layers.append(make_layer("classifier", classifier_op, c, num_classes, 1, 1, 1, 1, 1, bias=True))
    return layers


def upsample_layers(part: str, channels: int, in_hw: int, out_hw: int) -> list[Layer]:
    """A bilinear upsampling of ``channels`` maps from ``in_hw`` to ``out_hw`` (a whole multiple;
    none when equal: the network skips it)."""
    if out_hw == in_hw:
        return []
    if out_hw % in_hw:
        raise ValueError(f"{part}: {in_hw} -> {out_hw} is not a whole upsampling factor")
    f = out_hw // in_hw
    return [make_layer(part, "mult", channels, channels, 1, f, 1, in_hw, out_hw)]


def seg_head_layers(c: int, hw: int, feature_mix: ConvSpec | None, head: SegHeadSpec, classifier_op: str, num_classes: int,
                    skip_channels: int, skip_hw: int, resolution: int) -> list[Layer]:
    """The layers of a segmentation network after its last block (``c`` channels at ``hw`` x
    ``hw``): the optional feature mix, then the LR-ASPP head (``nas.models.static.seg_logits``)
    on those features and on the skip (``skip_channels`` at ``skip_hw``), up to ``resolution``."""
    layers = feature_mix_layers(c, hw, feature_mix)
    c = feature_mix.out_channels if feature_mix is not None else c
    h, k = head.channels, num_classes
    layers += [
        make_layer("seg_pool", "mult", c, c, 1, 1, 1, hw, 1),
        make_layer("seg_scale", head.gate_op, c, h, 1, 1, 1, 1, 1, bn=True),
        make_layer("seg_cbr", head.op, c, h, 1, 1, 1, hw, hw, bn=True, act=head.act),
        make_layer("seg_gate", "mult", h, h, 1, 1, 1, hw, hw),
        make_layer("seg_high_cls", classifier_op, h, k, 1, 1, 1, hw, hw, bias=True),
    ]
    layers += upsample_layers("seg_up_skip", k, hw, skip_hw)
    layers += [
        make_layer("seg_low_cls", classifier_op, skip_channels, k, 1, 1, 1, skip_hw, skip_hw, bias=True),
        make_layer("seg_merge", "mult", k, k, 1, 1, 1, skip_hw, skip_hw),
    ]
    return layers + upsample_layers("seg_up_out", k, skip_hw, resolution)


def arch_layers(arch: Arch) -> list[Layer]:
    """Every counted layer of ``arch`` in forward order, with its shapes."""
    layers = stem_layers(arch.in_channels, arch.stem, arch.resolution)
    hw = layers[0].out_hw
    skip = arch.seg_head.skip_stage if arch.seg_head is not None else -1
    skip_c = skip_hw = 0
    for (i, j, b), cin in zip(arch.blocks(), block_in_channels(arch)):
        blk = block_layers(i, j, cin, b, hw)
        layers += blk
        hw = blk[-1].out_hw
        if i == skip:
            skip_c, skip_hw = b.out_channels, hw
    c = arch.stages[-1].blocks[-1].out_channels
    if arch.seg_head is not None:
        return layers + seg_head_layers(c, hw, arch.feature_mix, arch.seg_head, arch.classifier.op, arch.num_classes,
                                        skip_c, skip_hw, arch.resolution)
    return layers + head_layers(c, hw, arch.feature_mix, arch.post_pool, arch.classifier.op, arch.num_classes)
