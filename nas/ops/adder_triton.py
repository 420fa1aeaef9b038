"""Triton kernels for the AdderNet operator (GPU path of ``nas.ops.adder``).

Imported only when a CUDA tensor reaches the adder (or when ``SHIFTADDAUG_ADDER_BACKEND=triton``
forces this path); ``triton`` is an optional dependency (``pip install shiftaddaug[gpu]``).

All three kernels work on 4-d *strided* views, so a convolution of any ``groups`` (dense, grouped,
depthwise), a channels-last input, a sliced weight of a hybrid layer and the linear layer (a
``[1, in, 1, batch]`` view of ``x`` with a 1x1 kernel) need no copies. Padding, stride and dilation
are folded into the address arithmetic (implicit im2col): no column buffer and never an
``out_channels x K x L`` intermediate; the largest temporary is one register tile per program.

With K = (C / groups) * kh * kw terms per output and M = N * Ho * Wo output positions (batch
folded in, so small feature maps and the linear layer still fill the tiles):

* forward ``y[m, o] = -sum_k |x[k, m] - w[o, k]|``: one program per (BLOCK_M positions,
  BLOCK_O output channels of one group); it walks K in steps of BLOCK_K, gathers the x tile
  [BLOCK_K, BLOCK_M] straight from the input (zero where the window hangs over the padding, which
  contributes |0 - w| as in AdderNet) and the w tile [BLOCK_O, BLOCK_K], and reduces the
  [BLOCK_O, BLOCK_K, BLOCK_M] block of |x - w| over K into fp32 accumulators.
* input gradient ``gx[c, q] = sum_{o, tap} gy[o, out(q, tap)] * clamp(w[o, c, tap] - x[c, q], -1, 1)``
  (AdderNet's HardTanh): the transposed gather, one program per (BLOCK_Q input positions, BLOCK_C
  input channels); the reduction runs over R = (O / groups) * kh * kw (output channel, tap) pairs
  whose output position exists (stride and padding checked per element). Every gx element is
  written once by one program: no atomics, deterministic.
* weight gradient ``gw[o, k] = sum_m gy[o, m] * (x[k, m] - w[o, k])`` (AdderNet's full-precision
  gradient), computed directly rather than as ``g x^T - w * rowsum(g)``: the same cost here (the
  kernel reads each tile once either way) and no cancellation between two large sums. The M axis is
  split over ``split`` programs per output tile that write fp32 partial sums ``[split, O, K]``;
  torch adds them in a fixed order (deterministic, no atomics). The adaptive gradient scale (eta)
  is applied by the caller, the same code on every device.

Accumulation is in fp32 (fp64 for fp64 inputs); bf16/fp16 inputs are loaded and widened.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["conv_forward", "conv_input_grad", "conv_weight_grad", "blocks", "launch_config"]

# Tile shapes per kernel: (cap on the row block, column block or its cap, cap on the reduction
# block, elements of the 3-d register tile). Chosen so that every kernel compiles for sm_90 with
# <= ~170 registers per thread and no spills at 4 warps (checked by tests/test_ops_triton.py);
# benchmarks/gpu.py times them against cuDNN.
_TILES = {
    "forward": (32, 128, 16, 16384),  # rows: output channels, columns: positions, reduction: K
    "input": (16, 64, 8, 4096),  # rows: input channels, columns: input positions, reduction: R
    "weight": (16, 32, 64, 4096),  # rows: output channels, columns: K (cap), reduction: positions
}
NUM_WARPS = 4
# Aim for about this many programs per launch (an H100/H200 has 132 multiprocessors).
TARGET_PROGRAMS = 1024


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def blocks(kind: str, rows: int, red: int, cols: int, groups: int = 1) -> tuple[int, int, int]:
    """Power-of-two tile (rows, reduction, columns) of kernel ``kind`` ("forward", "input", "weight").

    ``rows``: output channels per group (forward, weight) or input channels per group (input);
    ``red``: the reduction length (K, R = (O / groups) * kh * kw, or the N * Ho * Wo positions);
    ``cols``: the positions (forward, input) or K (weight). The position block shrinks (down to 32)
    until the grid has about TARGET_PROGRAMS programs, since a GPU needs several resident programs
    per multiprocessor to hide memory latency; the reduction block grows to keep the tile's volume.
    Depthwise layers (one row) get the whole 3x3 window per step.
    """
    row_cap, col, red_cap, elems = _TILES[kind]
    br = min(row_cap, _p2(rows))
    if kind == "weight":
        bc = min(col, _p2(cols))
    else:
        bc = col
        while bc > 32 and triton.cdiv(cols, bc) * triton.cdiv(rows, br) * groups < TARGET_PROGRAMS:
            bc //= 2
    bred = max(1, min(red_cap, _p2(red), elems // (br * bc)))
    return br, bred, bc


# Layer sizes and outer strides are not specialised on (Triton would compile one variant per
# divisibility pattern, dozens for one network); innermost strides are, since 1 there enables
# contiguous loads.
_NO_SPEC = ["H", "W", "Og", "Cg", "KH", "KW", "Ho", "Wo", "sh", "sw", "ph", "pw", "dh", "dw"]


@triton.jit
def _taps(offs, KH, KW):
    """Split a flat (outer, kh, kw) index: (c, kh, kw) for K, (o, kh, kw) for R."""
    t = offs % (KH * KW)
    return offs // (KH * KW), t // KW, t % KW


@triton.jit
def _im2col(x_ptr, offs_k, k_ok, offs_m, m_ok, g, sxn, sxc, sxh, sxw, H, W, Cg, KH, KW, Wo, P,
            sh, sw, ph, pw, dh, dw, ACC: tl.constexpr):  # fmt: skip
    """The im2col tile x[k, m] of group g ([len(offs_k), len(offs_m)]) gathered from the input:
    zero where the window hangs over the padding or the indices run past K or M."""
    c, kh, kw = _taps(offs_k, KH, KW)
    n = offs_m // P
    p = offs_m % P
    ih = ((p // Wo) * sh - ph)[None, :] + (kh * dh)[:, None]
    iw = ((p % Wo) * sw - pw)[None, :] + (kw * dw)[:, None]
    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & k_ok[:, None] & m_ok[None, :]
    x_off = (n.to(tl.int64) * sxn)[None, :] + ((g * Cg + c) * sxc)[:, None] + ih * sxh + iw * sxw
    return tl.load(x_ptr + x_off, mask=inside, other=0.0).to(ACC)


@triton.jit
def _weights(w_ptr, oc, o_ok, offs_k, k_ok, swo, swc, swh, sww, KH, KW, ACC: tl.constexpr):
    """The weight tile w[o, k] ([len(oc), len(offs_k)]), zero past O or K."""
    c, kh, kw = _taps(offs_k, KH, KW)
    w_off = (oc * swo)[:, None] + (c * swc + kh * swh + kw * sww)[None, :]
    return tl.load(w_ptr + w_off, mask=o_ok[:, None] & k_ok[None, :], other=0.0).to(ACC)


@triton.jit(do_not_specialize=_NO_SPEC + ["sxn", "sxc", "sxh", "swo", "swc", "swh", "syn", "syo", "syh", "M", "K"])
def _fwd_kernel(
    x_ptr, w_ptr, y_ptr,
    sxn, sxc, sxh, sxw,
    swo, swc, swh, sww,
    syn, syo, syh, syw,
    H, W, Og, Cg, KH, KW, Ho, Wo, M, K,
    sh, sw, ph, pw, dh, dw,
    ACC: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid_m, pid_o, g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = offs_o < Og
    oc = g * Og + offs_o
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    P = Ho * Wo
    acc = tl.zeros([BLOCK_O, BLOCK_M], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        xv = _im2col(x_ptr, offs_k, k_ok, offs_m, m_ok, g, sxn, sxc, sxh, sxw, H, W, Cg, KH, KW, Wo, P,
                     sh, sw, ph, pw, dh, dw, ACC)  # [BLOCK_K, BLOCK_M]  # fmt: skip
        wv = _weights(w_ptr, oc, o_ok, offs_k, k_ok, swo, swc, swh, sww, KH, KW, ACC)  # [BLOCK_O, BLOCK_K]
        # Terms past K load x = w = 0 and add nothing; padded taps load x = 0 and add |w|.
        acc += tl.sum(tl.abs(xv[None, :, :] - wv[:, :, None]), axis=1)
    n = offs_m // P
    p = offs_m % P
    y_off = (n.to(tl.int64) * syn + (p // Wo) * syh + (p % Wo) * syw)[None, :] + (oc * syo)[:, None]
    tl.store(y_ptr + y_off, -acc, mask=o_ok[:, None] & m_ok[None, :])


@triton.jit(
    do_not_specialize=_NO_SPEC + ["sgn", "sgo", "sgh", "sxn", "sxc", "sxh", "swo", "swc", "swh", "sdn", "sdc", "sdh", "Q", "R"]
)
def _gx_kernel(
    gy_ptr, x_ptr, w_ptr, gx_ptr,
    sgn, sgo, sgh, sgw,
    sxn, sxc, sxh, sxw,
    swo, swc, swh, sww,
    sdn, sdc, sdh, sdw,
    H, W, Og, Cg, KH, KW, Ho, Wo, Q, R,
    sh, sw, ph, pw, dh, dw,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr,
):  # fmt: skip
    pid_q, pid_c, g = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < Cg
    cin = g * Cg + offs_c
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = offs_q < Q
    HW = H * W
    n64 = (offs_q // HW).to(tl.int64)
    ih = (offs_q % HW) // W
    iw = offs_q % W
    xc_ok = c_ok[:, None] & q_ok[None, :]
    x_off = (n64 * sxn + ih * sxh + iw * sxw)[None, :] + (cin * sxc)[:, None]
    xv = tl.load(x_ptr + x_off, mask=xc_ok, other=0.0).to(ACC)  # [BLOCK_C, BLOCK_Q]
    acc = tl.zeros([BLOCK_C, BLOCK_Q], dtype=ACC)
    for r0 in range(0, R, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_ok = offs_r < R
        o, kh, kw = _taps(offs_r, KH, KW)
        # Output position reading input (ih, iw) through tap (kh, kw): (ih + ph - kh*dh) / sh, if whole.
        nh = ih[None, :] + ph - (kh * dh)[:, None]
        nw = iw[None, :] + pw - (kw * dw)[:, None]
        oh = nh // sh
        ow = nw // sw
        hit = (nh >= 0) & (nw >= 0) & (nh % sh == 0) & (nw % sw == 0) & (oh < Ho) & (ow < Wo)
        hit = hit & r_ok[:, None] & q_ok[None, :]
        g_off = (n64 * sgn)[None, :] + ((g * Og + o) * sgo)[:, None] + oh * sgh + ow * sgw
        gv = tl.load(gy_ptr + g_off, mask=hit, other=0.0).to(ACC)  # [BLOCK_R, BLOCK_Q]
        w_off = (offs_c * swc)[:, None] + ((g * Og + o) * swo + kh * swh + kw * sww)[None, :]
        wv = tl.load(w_ptr + w_off, mask=c_ok[:, None] & r_ok[None, :], other=0.0).to(ACC)  # [BLOCK_C, BLOCK_R]
        ht = tl.minimum(tl.maximum(wv[:, :, None] - xv[:, None, :], -1.0), 1.0)
        acc += tl.sum(ht * gv[None, :, :], axis=1)  # missing (r, q) pairs have gy = 0
    d_off = (n64 * sdn + ih * sdh + iw * sdw)[None, :] + (cin * sdc)[:, None]
    tl.store(gx_ptr + d_off, acc, mask=xc_ok)


@triton.jit(
    do_not_specialize=_NO_SPEC + ["sgn", "sgo", "sgh", "sxn", "sxc", "sxh", "swo", "swc", "swh", "O", "G", "M", "K", "chunk"]
)
def _gw_kernel(
    gy_ptr, x_ptr, w_ptr, part_ptr,
    sgn, sgo, sgh, sgw,
    sxn, sxc, sxh, sxw,
    swo, swc, swh, sww,
    H, W, O, G, Og, Cg, KH, KW, Ho, Wo, M, K, chunk,  # noqa: E741 (O: output channels, as in the other kernels)
    sh, sw, ph, pw, dh, dw,
    ACC: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_k, pid_o, pid_gs = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    g = pid_gs % G
    split = pid_gs // G
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = offs_o < Og
    oc = g * Og + offs_o
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = offs_k < K
    wv = _weights(w_ptr, oc, o_ok, offs_k, k_ok, swo, swc, swh, sww, KH, KW, ACC)  # [BLOCK_O, BLOCK_K]
    P = Ho * Wo
    acc = tl.zeros([BLOCK_O, BLOCK_K], dtype=ACC)
    m_begin = split * chunk
    m_end = tl.minimum(m_begin + chunk, M)
    for m0 in range(m_begin, m_end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < m_end
        n64 = (offs_m // P).to(tl.int64)
        p = offs_m % P
        g_off = (n64 * sgn + (p // Wo) * sgh + (p % Wo) * sgw)[None, :] + (oc * sgo)[:, None]
        gv = tl.load(gy_ptr + g_off, mask=o_ok[:, None] & m_ok[None, :], other=0.0).to(ACC)  # [BLOCK_O, BLOCK_M]
        xv = _im2col(x_ptr, offs_k, k_ok, offs_m, m_ok, g, sxn, sxc, sxh, sxw, H, W, Cg, KH, KW, Wo, P,
                     sh, sw, ph, pw, dh, dw, ACC)  # [BLOCK_K, BLOCK_M]  # fmt: skip
        # Padded taps hold x = 0 (gradient g * (0 - w), as the unfolded reference); positions past
        # the chunk have g = 0.
        acc += tl.sum(gv[:, None, :] * (xv[None, :, :] - wv[:, :, None]), axis=2)
    p_off = split.to(tl.int64) * O * K + (oc * K)[:, None] + offs_k[None, :]
    tl.store(part_ptr + p_off, acc, mask=o_ok[:, None] & k_ok[None, :])


def _geometry(c) -> list[int]:
    return [c.sh, c.sw, c.ph, c.pw, c.dh, c.dw]


def _weight_split(c, bo: int, bm: int, bk: int) -> tuple[int, int]:
    """(splits, chunk): the N*Ho*Wo positions of the weight gradient cut into ``splits`` chunks of
    ``chunk`` positions (a multiple of the position block)."""
    m = c.N * c.Ho * c.Wo
    tiles = triton.cdiv(c.K, bk) * triton.cdiv(c.O // c.G, bo) * c.G
    splits = max(1, min(triton.cdiv(m, bm), TARGET_PROGRAMS // tiles))
    chunk = triton.cdiv(triton.cdiv(m, splits), bm) * bm
    return triton.cdiv(m, chunk), chunk


def launch_config(kind: str, c: Any, dtype: torch.dtype) -> tuple[Any, tuple[int, ...], dict[str, Any]]:
    """(kernel, grid, constexpr arguments) of kernel ``kind`` ("forward", "input", "weight") for
    geometry ``c`` and input dtype; also what tests compile ahead of time for a GPU target."""
    og = c.O // c.G
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    if kind == "forward":
        m = c.N * c.Ho * c.Wo
        bo, bk, bm = blocks(kind, og, c.K, m, c.G)
        grid = (triton.cdiv(m, bm), triton.cdiv(og, bo), c.G)
        return _fwd_kernel, grid, dict(ACC=acc, BLOCK_O=bo, BLOCK_K=bk, BLOCK_M=bm)
    if kind == "input":
        q = c.N * c.H * c.W
        bc, br, bq = blocks(kind, c.Cg, og * c.KH * c.KW, q, c.G)
        grid = (triton.cdiv(q, bq), triton.cdiv(c.Cg, bc), c.G)
        return _gx_kernel, grid, dict(ACC=acc, BLOCK_C=bc, BLOCK_R=br, BLOCK_Q=bq)
    bo, bm, bk = blocks(kind, og, c.N * c.Ho * c.Wo, c.K)
    splits, _ = _weight_split(c, bo, bm, bk)
    grid = (triton.cdiv(c.K, bk), triton.cdiv(og, bo), c.G * splits)
    return _gw_kernel, grid, dict(ACC=acc, BLOCK_O=bo, BLOCK_M=bm, BLOCK_K=bk)


def conv_forward(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, c: Any) -> None:
    """Write the adder forward of geometry ``c`` (``nas.ops.adder._Conv``) into the view ``y``."""
    kernel, grid, const = launch_config("forward", c, x.dtype)
    kernel[grid](
        x, w, y, *x.stride(), *w.stride(), *y.stride(),
        c.H, c.W, c.O // c.G, c.Cg, c.KH, c.KW, c.Ho, c.Wo, c.N * c.Ho * c.Wo, c.K, *_geometry(c),
        **const, num_warps=NUM_WARPS,
    )  # fmt: skip


def conv_input_grad(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, gx: torch.Tensor, c: Any) -> None:
    """Write AdderNet's HardTanh input gradient into the view ``gx`` (shaped like ``x``)."""
    kernel, grid, const = launch_config("input", c, x.dtype)
    og = c.O // c.G
    kernel[grid](
        gy, x, w, gx, *gy.stride(), *x.stride(), *w.stride(), *gx.stride(),
        c.H, c.W, og, c.Cg, c.KH, c.KW, c.Ho, c.Wo, c.N * c.H * c.W, og * c.KH * c.KW, *_geometry(c),
        **const, num_warps=NUM_WARPS,
    )  # fmt: skip


def conv_weight_grad(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, c: Any) -> torch.Tensor:
    """AdderNet's full-precision weight gradient ``sum g (x - w)`` as a ``[O, Cg, kh, kw]`` tensor
    in the accumulation dtype (fp32, or fp64 for fp64 inputs), before the eta scaling."""
    kernel, grid, const = launch_config("weight", c, x.dtype)
    splits, chunk = _weight_split(c, const["BLOCK_O"], const["BLOCK_M"], const["BLOCK_K"])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    part = torch.empty(splits, c.O, c.K, device=x.device, dtype=acc)
    kernel[grid](
        gy, x, w, part, *gy.stride(), *x.stride(), *w.stride(),
        c.H, c.W, c.O, c.G, c.O // c.G, c.Cg, c.KH, c.KW, c.Ho, c.Wo, c.N * c.Ho * c.Wo, c.K, chunk,
        *_geometry(c), **const, num_warps=NUM_WARPS,
    )  # fmt: skip
    return part.sum(0).view(c.O, c.Cg, c.KH, c.KW)
