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
=============  ==========  ====================  ================================================

Adding a layer part (e.g. the layers of a segmentation head): add a ``Part`` to ``PARTS`` and emit
its records from ``arch_layers`` (a helper next to ``head_layers``, reading the new Arch fields),
each with the operator the Arch gives it. A part of an existing kind is counted, priced, timed and
tabled like the other layers of that kind with no further change; a new kind also needs its rule
in ``nas.cost.counting.layer_cost``, ``nas.cost.energy.is_charged`` and
``nas.cost.latency.layer_callable``, and is then accepted by the tables (``KINDS``).
"""

from __future__ import annotations

from dataclasses import dataclass

from nas.arch import Arch, BlockSpec, ConvSpec, block_in_channels, conv_out_size

KINDS = ("dense", "pointwise", "depthwise", "se", "linear", "pool", "residual")
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
}
# the SE pieces by their lookup-table ``part`` (pool, reduce, expand, gate)
SE_TABLE_PARTS = {p.table_part: name for name, p in PARTS.items() if p.kind == "se"}


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


def head_layers(c: int, hw: int, feature_mix: ConvSpec | None, post_pool: ConvSpec | None, classifier_op: str,
                num_classes: int) -> list[Layer]:
    """The layers after the last block (``c`` channels at ``hw`` x ``hw``): the optional 1x1
    feature mix, the global average pool, the optional post-pool 1x1 conv and the classifier."""
    layers = []
    if feature_mix is not None:
        layers.append(make_layer("feature_mix", feature_mix.op, c, feature_mix.out_channels, 1, 1, 1, hw, hw, bn=True,
                                 act=feature_mix.act))
        c = feature_mix.out_channels
    layers.append(make_layer("pool", "mult", c, c, 1, 1, 1, hw, 1))
    if post_pool is not None:
        layers.append(make_layer("post_pool", post_pool.op, c, post_pool.out_channels, 1, 1, 1, 1, 1, bias=True, act=post_pool.act))
        c = post_pool.out_channels
    layers.append(make_layer("classifier", classifier_op, c, num_classes, 1, 1, 1, 1, 1, bias=True))
    return layers


def arch_layers(arch: Arch) -> list[Layer]:
    """Every counted layer of ``arch`` in forward order, with its shapes."""
    layers = stem_layers(arch.in_channels, arch.stem, arch.resolution)
    hw = layers[0].out_hw
    for (i, j, b), cin in zip(arch.blocks(), block_in_channels(arch)):
        blk = block_layers(i, j, cin, b, hw)
        layers += blk
        hw = blk[-1].out_hw
    c = arch.stages[-1].blocks[-1].out_channels
    return layers + head_layers(c, hw, arch.feature_mix, arch.post_pool, arch.classifier.op, arch.num_classes)
