"""The layer shapes a search space (or a list of archs) can produce: what a lookup table must hold.

``space_layers(space, ops)`` enumerates, for every stage / block position, every reachable input
width x kernel x expand ratio x width (the input spatial size is fixed per position), under each
operator convention in ``ops``, and decomposes each candidate block with the same code as a whole
network (``nas.cost.layers.block_layers`` / ``head_layers`` / ``seg_head_layers``), so a table built from it holds every
row ``arch_layers`` of an arch of the space asks for. ``space_cover_archs`` turns the shapes into
archs of the space that together contain them all (latency tables time layers inside a network).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

from nas.arch import Arch, BlockSpec, ConvSpec, SegHeadSpec, conv_out_size, op_convention
from nas.cost.layers import Layer, arch_layers, block_layers, head_layers, seg_head_layers, stem_layers
from nas.cost.tablefile import RowKey
from nas.ops.registry import get_kind, op_kinds

if TYPE_CHECKING:  # pragma: no cover
    from nas.space import SearchSpace


def conventions_header(ops: Sequence[str]) -> dict:
    """Header entry recording the operator of every conv role under each covered convention
    (``nas.arch.op_convention``), so a table says which convention its rows were chosen for."""
    return {"conventions": {op: op_convention(op) for op in ops}}


def space_layers(space: SearchSpace, ops: Sequence[str] | None = ("mult",)) -> list[Layer]:
    """Every distinct layer shape any arch of ``space`` can have under the conventions ``ops``
    (None: every operator kind), each a Layer record with its activation."""
    return [L for L, _, _ in _space_items(space, ops)]


def _space_items(space: SearchSpace, ops: Sequence[str] | None) -> list[tuple[Layer, str, dict[str, Any]]]:
    """``space_layers`` with, per shape, the convention and the genome genes of an arch that has it
    (a gene ``name>`` asks for a depth of at least its value)."""
    from nas.space import mid_channels, se_channels

    ops = op_kinds() if ops is None else tuple(ops)
    for op in ops:
        get_kind(op)
    out: list[tuple[Layer, str, dict[str, Any]]] = []
    seen: set[RowKey] = set()
    last = len(space.stages) - 1

    def put(layers: list[Layer], conv: str, genes: dict[str, Any]) -> None:
        for L in layers:
            k = RowKey.of(L, True)
            if k not in seen:
                seen.add(k)
                out.append((L, conv, genes))

    def into(i: int, c: int) -> dict[str, int]:
        """Genes making the input of stage i (the output of stage i - 1 or the stem) ``c`` wide."""
        return {"stem_out": c} if i == 0 else {f"s{i - 1}_out": c}

    for op in ops:
        conv = op_convention(op)
        st = space.stem
        hw = space.resolution
        for c in st.out_channels:
            stem = ConvSpec(c, st.kernel_size, st.stride, st.act, conv["dense"])
            put(stem_layers(space.in_channels, stem, hw), op, {"stem_out": c})
        hw = conv_out_size(hw, st.kernel_size, st.stride)
        prev = st.out_channels
        sizes = []  # output size of every stage
        for i, s in enumerate(space.stages):
            hw_stage_out = conv_out_size(hw, 3, s.stride)
            sizes.append(hw_stage_out)
            for j in range(max(s.depth)):
                stride = s.stride if j == 0 else 1
                h_in = hw if j == 0 else hw_stage_out
                for cout in s.out_channels:
                    for cin in (prev if j == 0 else (cout,)):
                        for e in s.expand_ratio:
                            mid = mid_channels(cin, e)
                            for k in s.kernel_size:
                                g = {f"s{i}_out": cout, f"s{i}_b{j}_ks": k, f"s{i}_b{j}_e": e, f"s{i}_depth>": j + 1}
                                if j == 0:
                                    g.update(into(i, cin))
                                b = BlockSpec(k, e, mid, cout, stride, s.act, se_channels(mid) if s.se else 0, conv["dense"],
                                              conv["dw"], conv["se"], shortcut=stride == 1 and cin == cout)
                                put(block_layers(i, j, cin, b, h_in), op, g)
            hw = hw_stage_out
            prev = s.out_channels
        fm = space.feature_mix
        for cin in prev:
            for c in (fm.out_channels if fm is not None else (cin,)):
                mix = None if fm is None else ConvSpec(c, 1, 1, fm.act, conv["dense"])
                g = {f"s{last}_out": cin} if fm is None else {f"s{last}_out": cin, "fm_out": c}
                if space.seg_head is None:
                    put(head_layers(cin, hw, mix, None, conv["classifier"], space.num_classes), op, g)
                    continue
                sh = space.seg_head
                # the skip: the output of stage skip_stage (its width is the last stage's when it is the last)
                skip_widths = (cin,) if sh.skip_stage == last else space.stages[sh.skip_stage].out_channels
                for h in sh.channels:
                    head = SegHeadSpec(sh.skip_stage, h, sh.act, conv["dense"], conv["se"])
                    for cs in skip_widths:
                        put(seg_head_layers(cin, hw, mix, head, conv["classifier"], space.num_classes, cs, sizes[sh.skip_stage],
                                            space.resolution), op, {**g, "head_ch": h, f"s{sh.skip_stage}_out": cs})
    return out


def space_cover_archs(space: SearchSpace, ops: Sequence[str] | None = ("mult",), skip: Iterable[RowKey] = (), seed: int = 0,
                      latency: bool = True) -> Iterator[Arch]:
    """Archs of ``space`` that together contain every layer shape of ``space_layers(space, ops)``
    whose key is not in ``skip``: each is aimed at the first shape still missing and random
    elsewhere (``random.Random(seed)``), under the convention that produced that shape.

    Measuring layers inside such archs (``LatencyTable.build_space``) times every shape in the
    company of a real network of the space, which is what the end-to-end latency sees.
    ``latency``: keys with the activation (latency tables) or without (energy tables).
    """
    rng = random.Random(seed)
    genes = space.genes()
    todo: dict[RowKey, tuple[str, dict[str, Any]]] = {}
    skip = set(skip)
    for L, conv, g in _space_items(space, ops):
        k = RowKey.of(L, latency)
        if k not in skip and k not in todo:
            todo[k] = (conv, g)
    while todo:
        key, (conv, target) = next(iter(todo.items()))
        genome = space.sample_genome(rng)
        for name, v in target.items():
            if name.endswith(">"):  # a gene of this module's own making: a depth of at least v
                name = name[:-1]
                if genome[name] < v:
                    genome[name] = rng.choice([d for d in genes[name] if d >= v])
            else:
                genome[name] = v
        arch = space.decode(genome, f"cover{len(todo)}").with_ops(conv)
        for L in arch_layers(arch):
            todo.pop(RowKey.of(L, latency), None)
        if key in todo:  # cannot happen for a consistent space; never loop forever
            del todo[key]
            continue
        yield arch


def arch_list_layers(archs: Iterable[Arch], ops: Sequence[str] | None = None) -> list[Layer]:
    """Every distinct layer shape of ``archs`` (each arch under every convention in ``ops``;
    ``None``: each arch with its own operators)."""
    out, seen = [], set()
    for a in archs:
        variants = [a] if ops is None else [a.with_ops(op) for op in ops]
        for v in variants:
            for L in arch_layers(v):
                k = RowKey.of(L, True)
                if k not in seen:
                    seen.add(k)
                    out.append(L)
    return out
