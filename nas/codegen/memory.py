"""Activation memory plan of an ``IntNet``: one static arena, offsets from buffer lifetimes.

Layers run one after the other and never in place, so while layer ``i`` runs its inputs and its
output are live, plus every tensor produced earlier and read later (a residual shortcut's block
input, an SE block's gated tensor). ``peak_live`` is the largest sum of live tensor bytes over
the layers (MCUNet's "peak SRAM" of activations, with those long-lived tensors included); the
arena places every tensor at a fixed offset (greedy, largest first, lowest free offset among
tensors whose lifetimes overlap) and is at least ``peak_live`` bytes. The raw input image and the
int32 logits are the caller's buffers: counted in ``peak_live``, not in the arena.
"""

from __future__ import annotations

from dataclasses import dataclass

from nas.codegen.intnet import IntNet

ALIGN = 4


@dataclass
class MemoryPlan:
    """Byte offsets of the activation buffers in one arena, its size and the peak of live activation bytes."""

    offsets: dict[str, int]  # buffer name -> byte offset in the arena
    arena_bytes: int
    peak_live_bytes: int
    peak_layer: str
    image_bytes: int
    logit_bytes: int

    def to_json(self) -> dict:
        return {"arena_bytes": self.arena_bytes, "peak_live_bytes": self.peak_live_bytes, "peak_layer": self.peak_layer,
                "image_bytes": self.image_bytes, "logit_bytes": self.logit_bytes, "offsets": self.offsets}


def _align(v: int) -> int:
    return (v + ALIGN - 1) // ALIGN * ALIGN


def plan_memory(net: IntNet) -> MemoryPlan:
    nodes = net.nodes
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    bufs = {}
    for i, n in enumerate(nodes):
        first[id(n.out)] = i
        last.setdefault(id(n.out), i)
        bufs[id(n.out)] = n.out
        for b in n.inputs:
            last[id(b)] = max(last[id(b)], i)
    image_bytes = net.input.raw_shape[0] * net.input.raw_shape[1] * net.input.raw_shape[2]
    logits = net.logits
    peak, peak_layer = 0, nodes[0].name
    for i, n in enumerate(nodes):
        live = sum(b.nbytes for k, b in bufs.items() if first[k] <= i <= last[k])
        live += image_bytes if i == 0 else 0
        if live > peak:
            peak, peak_layer = live, n.name
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offsets: dict[str, int] = {}
    arena = 0
    order = sorted((b for k, b in bufs.items() if b is not logits), key=lambda b: (-b.nbytes, first[id(b)]))
    for b in order:
        size, lo, hi = _align(b.nbytes), first[id(b)], last[id(b)]
        clashes = sorted((o, s) for o, s, fst, lst in placed if not (lst < lo or hi < fst))
        off = 0
        for o, s in clashes:
            if off + size <= o:
                break
            off = max(off, _align(o + s))
        placed.append((off, size, lo, hi))
        offsets[b.name] = off
        arena = max(arena, off + size)
    return MemoryPlan(offsets, arena, peak, peak_layer, image_bytes, logits.nbytes)
