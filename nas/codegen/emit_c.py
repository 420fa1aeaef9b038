"""C99 generator for an ``IntNet``: ``model.h``, ``model.c`` (layers + constant weights), ``main.c``.

The generated code uses no dynamic allocation and no libm: one static arena (``nas.codegen.memory``)
holds the activations, every layer is a function with its geometry as literal constants, the
weights are ``static const`` arrays. Data-path arithmetic goes through a handful of macros
(``L_ADD``, ``L_MUL``, ``L_SHL32``, ``Q_SHR`` ...): plain operators in a normal build; compiled with
``-DSAA_COUNT`` they also count every executed operation per layer, split into the layer's own
operations (``L_*``: what ``nas.cost.counting`` counts) and requantisation (``Q_*``: BatchNorm,
rescaling, activations). Index arithmetic uses only additions, so a layer function's body
contains no ``*`` at all: its static multiplication sites are its ``L_MUL`` / ``Q_MUL`` uses.

The generator also counts, from the loops it emits, how many operations each layer executes
(``LayerOps``); ``nas.codegen.check`` compares those with the counting build and with
``nas.cost.counting``.

Implementation-defined behaviour relied on (true of GCC, Clang, Arm and IAR compilers for every
two's complement target): ``>>`` of a negative value is an arithmetic shift (a compile-time check
in model.c fails otherwise), and converting an out-of-range unsigned value to a signed type wraps.
Left shifts are done on unsigned values (no undefined behaviour).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nas._version import __version__
from nas.codegen.intnet import AddNode, ConvNode, GateNode, InputNode, IntNet, PoolNode, Requant
from nas.codegen.memory import MemoryPlan, plan_memory
from nas.errors import ConfigError

GENERATOR_VERSION = 1
REQUANT_MODES = ("csd", "mul")
_OPS = ("mul", "add", "shift")
_WRAP = 16  # values per line in constant arrays


def csd_digits(m: int) -> list[tuple[int, int]]:
    """Canonical signed-digit (non-adjacent form) of ``m``: [(shift, +1 | -1)], sum d * 2**shift == m,
    with the fewest non-zero digits (at most ceil((bits + 1) / 2))."""
    digits, i = [], 0
    while m != 0:  # terminates: |m| at least halves every two steps
        if m & 1:
            d = 2 - (m & 3)  # +1 when m = 1 (mod 4), -1 when m = 3 (mod 4)
            digits.append((i, d))
            m -= d
        m >>= 1
        i += 1
    return digits


@dataclass
class LayerOps:
    """Operations one layer executes per inference, from the generator's loops.

    ``loop``: the layer's own arithmetic (conv terms, pooling sums, residual adds, SE gating), the
    operations ``nas.cost.counting`` counts; ``requant``: what the integer deployment adds
    (BatchNorm / rescaling multipliers, rounding, activations). ``terms``: products or
    differences summed (MAC positions computed); ``pad_skipped``: MAC positions on the zero padding
    that shift and multiplicative convs skip (an adder must add |0 - w| there).
    """

    name: str
    kind: str
    op: str
    part: str = ""  # the layer's part (nas.cost.layers.PARTS)
    terms: int = 0
    pad_skipped: int = 0
    outputs: int = 0
    loop: dict = field(default_factory=lambda: dict.fromkeys(_OPS, 0))
    requant: dict = field(default_factory=lambda: dict.fromkeys(_OPS, 0))

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "op": self.op, "terms": self.terms, "pad_skipped": self.pad_skipped,
                "outputs": self.outputs, "loop": dict(self.loop), "requant": dict(self.requant)}


@dataclass
class CProgram:
    """Generated C sources (file name -> text) with the operations and constant bytes per layer and the memory plan."""

    files: dict[str, str]
    ops: list[LayerOps]
    flash: dict[str, int]  # constant bytes per layer
    memory: MemoryPlan
    requant_mode: str

    @property
    def flash_bytes(self) -> int:
        return sum(self.flash.values())


def _lit(v: int) -> str:
    return str(v) if -(1 << 31) < v < (1 << 31) - 1 else f"INT64_C({v})"


def _ctype(values, signed: bool = True) -> str:
    lo, hi = (min(values), max(values)) if values else (0, 0)
    if not signed and lo >= 0:
        for bits in (8, 16, 32):
            if hi < (1 << bits):
                return f"uint{bits}_t"
    for bits in (8, 16, 32, 64):
        if -(1 << (bits - 1)) <= lo and hi < (1 << (bits - 1)):
            return f"int{bits}_t"
    raise ConfigError("constant", (lo, hi), "integers that fit 64 bits")


def _cname(idx: int) -> str:
    return f"l{idx:03d}"


class _Emitter:
    def __init__(self, net: IntNet, mode: str):
        if mode not in REQUANT_MODES:
            raise ConfigError("requant", mode, f"allowed: {', '.join(REQUANT_MODES)}")
        self.net, self.mode = net, mode
        self.consts: list[str] = []
        self.flash: dict[str, int] = {}
        self.layer = ""

    # -------------------------------------------------------------------------------- constants
    def array(self, name: str, values: list[int], ctype: str | None = None, rows: int | None = None) -> str:
        ctype = ctype or _ctype(values)
        nbytes = int(re.search(r"\d+", ctype).group()) // 8
        self.flash[self.layer] = self.flash.get(self.layer, 0) + nbytes * len(values)
        body = ",\n    ".join(", ".join(_lit(v) for v in values[i : i + _WRAP]) for i in range(0, len(values), _WRAP))
        dims = f"[{len(values)}]" if rows is None else f"[{rows}][{len(values) // rows}]"
        if rows is not None:
            w = len(values) // rows
            body = ",\n    ".join("{" + ", ".join(_lit(v) for v in values[r * w : (r + 1) * w]) + "}" for r in range(rows))
        self.consts.append(f"static const {ctype} {name}{dims} = {{\n    {body}\n}};")
        return name

    def per_channel(self, name: str, values: list[int], ch: str, signed: bool = True) -> str:
        """A literal when every channel has the same value, else an array indexed by ``ch``."""
        if len(set(values)) == 1:
            return _lit(values[0])
        return f"{self.array(name, values, _ctype(values, signed))}[{ch}]"

    # -------------------------------------------------------------------------------- requantisation
    def const_mult(self, var: str, m: int) -> tuple[str, dict]:
        """``var = var * m`` for a constant m: one Q_MUL, or its CSD expansion (shifts and adds)."""
        if self.mode == "mul":
            return f"{var} = Q_MUL({var}, {_lit(m)});", {"mul": 1, "add": 0, "shift": 0}
        digits = csd_digits(m)
        if not digits:
            return f"{var} = 0;", dict.fromkeys(_OPS, 0)
        expr = f"Q_SHL64({var}, {digits[0][0]})"
        if digits[0][1] < 0:
            expr = f"-{expr}"
        for s, d in digits[1:]:
            expr = f"{'Q_ADD' if d > 0 else 'Q_SUB'}({expr}, Q_SHL64({var}, {s}))"
        return f"{var} = {expr};", {"mul": 0, "add": len(digits) - 1, "shift": len(digits)}

    def requant(self, rq: Requant, acc: str, ch: str, counts: list[int], name: str) -> tuple[list[str], dict]:
        """Statements turning accumulator ``acc`` of channel ``ch`` into ``v`` (int64, clamped),
        and their operation counts summed with ``counts[c]`` outputs in channel c."""
        total = sum(counts)
        ops = dict.fromkeys(_OPS, 0)

        def add(per_output: dict, n: int = total):
            for k in _OPS:
                ops[k] += per_output.get(k, 0) * n

        lines = [f"int64_t v = (int64_t){acc};"]
        kind = rq.kind
        if kind == "pow2":
            k = self.per_channel(f"{name}_qk", [m.bit_length() - 1 for m in rq.M], ch, signed=False)
            lines.append(f"v = Q_SHL64(v, {k});")
            add({"shift": 1})
        elif kind == "general":
            if len(set(rq.M)) == 1:
                line, per = self.const_mult("v", rq.M[0])
                lines.append(line)
                add(per)
            elif self.mode == "mul":
                lines.append(f"v = Q_MUL(v, (int64_t){self.array(f'{name}_qm', rq.M)}[{ch}]);")
                add({"mul": 1})
            else:
                digits = [csd_digits(m) for m in rq.M]
                width = max(1, max(len(d) for d in digits))
                codes = []
                for d in digits:
                    codes += [s | (128 if sign < 0 else 0) for s, sign in d] + [0] * (width - len(d))
                qn = self.array(f"{name}_qn", [len(d) for d in digits], "uint8_t")
                qd = self.array(f"{name}_qd", codes, "uint8_t", rows=len(digits))
                lines.append(
                    f"{{ int64_t t = 0; int d; for (d = 0; d < {qn}[{ch}]; d++) {{ uint8_t cd = {qd}[{ch}][d]; "
                    "int64_t u = Q_SHL64(v, cd & 63); t = (cd & 128) ? Q_SUB(t, u) : Q_ADD(t, u); } v = t; }"
                )
                for d, n in zip(digits, counts):
                    add({"shift": len(d), "add": len(d)}, n)
        if any(rq.B):
            lines.append(f"v = Q_ADD(v, {self.per_channel(f'{name}_qb', rq.B, ch)});")
            add({"add": 1})
        if any(rq.S):
            lines.append(f"v = Q_SHR(v, {self.per_channel(f'{name}_qs', rq.S, ch, signed=False)});")
            add({"shift": 1})
        if rq.hswish is not None:
            three, m, b, s = rq.hswish
            mline, per = self.const_mult("v", m)
            lines += [
                f"{{ int64_t z = SAA_CLAMP(v, {_lit(-three)}, {_lit(max(rq.hi, three))}); int64_t t = Q_ADD(z, {_lit(three)});",
                f"  t = SAA_CLAMP(t, 0, {_lit(2 * three)}); v = Q_MUL(z, t); {mline} v = Q_ADD(v, {_lit(b)}); v = Q_SHR(v, {s}); }}",
            ]
            add({"mul": 1 + per["mul"], "add": 2 + per["add"], "shift": 1 + per["shift"]})
        lines.append(f"v = SAA_CLAMP(v, {_lit(rq.lo)}, {_lit(rq.hi)});")
        return lines, ops

    # -------------------------------------------------------------------------------- layers
    def conv(self, n: ConvNode, fn: str, ops: LayerOps) -> str:
        c, h, w = n.inputs[0].shape
        o, ho, wo = n.out.shape
        k, s, p, g = n.kernel, n.stride, n.pad, n.groups
        cg, og = c // g, o // g
        xt, yt = n.inputs[0].fmt.ctype, n.out.fmt.ctype
        at = f"int{n.acc_bits}_t"
        shl = f"L_SHL{n.acc_bits}"
        wname = self.array(f"{fn}_w", n.weights.flatten().tolist(), n.weight_ctype)
        bias = "0"
        if n.bias is not None and bool(n.bias.any()):
            bias = f"{self.array(f'{fn}_b', n.bias.tolist(), f'int{n.acc_bits}_t')}[o]"
        adder_pad = n.op == "add" and p > 0
        skip_pad = p > 0 and n.op != "add"
        xv = "xv" if adder_pad else ("(" + at + ")x[xr + ix]" if skip_pad else f"({at})x[xi]")
        if n.op == "shift":
            zero = " if (cd & 64) v = 0;" if n.has_zero_weights else ""
            term = (f"{{ uint8_t cd = {wname}[wi]; {at} v = {shl}({xv}, cd & 63);{zero} "
                    "acc = (cd & 128) ? L_SUB(acc, v) : L_ADD(acc, v); }")
        elif n.op == "add":
            term = f"{{ {at} d = L_SUB({xv}, ({at}){wname}[wi]); acc = L_SUB(acc, SAA_ABS(d)); }}"
        else:
            term = f"acc = L_ADD(acc, L_MUL({xv}, ({at}){wname}[wi]));"
        if skip_pad:
            inner = [
                f"for (ky = 0, iy = iy0, xr = xc; ky < {k}; ky++, iy++, xr += {w}) {{",
                f"    if (iy < 0 || iy >= {h}) {{ wi += {k}; continue; }}",
                f"    for (kx = 0, ix = ix0; kx < {k}; kx++, ix++, wi++) {{",
                f"        if (ix < 0 || ix >= {w}) continue;",
                f"        {term}",
                "    }",
                "}",
            ]
            decl = "int ky, kx, iy, ix, xr;"
        elif adder_pad:
            inner = [
                f"for (ky = 0, iy = iy0, xr = xc; ky < {k}; ky++, iy++, xr += {w}) {{",
                f"    int rowok = iy >= 0 && iy < {h};",
                f"    for (kx = 0, ix = ix0; kx < {k}; kx++, ix++, wi++) {{",
                f"        {at} xv = (rowok && ix >= 0 && ix < {w}) ? ({at})x[xr + ix] : 0;",
                f"        {term}",
                "    }",
                "}",
            ]
            decl = "int ky, kx, iy, ix, xr;"
        else:
            inner = [
                f"for (ky = 0, xr = xc; ky < {k}; ky++, xr += {w}) {{",
                f"    for (kx = 0, xi = xr + ix0; kx < {k}; kx++, xi++, wi++) {{",
                f"        {term}",
                "    }",
                "}",
            ]
            decl = "int ky, kx, xr, xi;"
        # outputs per channel and the executed terms (the generator's own trip counts)
        rows = [sum(1 for ky in range(k) if 0 <= oy * s - p + ky < h) for oy in range(ho)]
        cols = [sum(1 for kx in range(k) if 0 <= ox * s - p + kx < w) for ox in range(wo)]
        full = o * cg * k * k * ho * wo
        ops.terms = full if not skip_pad else o * cg * sum(rows) * sum(cols)
        ops.pad_skipped = full - ops.terms
        ops.outputs = o * ho * wo
        per_term = {"shift": {"shift": 1, "add": 1}, "add": {"add": 2}, "mult": {"mul": 1, "add": 1}}[n.op]
        for key, v in per_term.items():
            ops.loop[key] += v * ops.terms
        rq_lines, rq_ops = self.requant(n.requant, "acc", "o", [ho * wo] * o, fn)
        ops.requant = rq_ops
        pad_vars = "int iy0, r0;" if p > 0 else "int r0;"
        oy_loop = (f"for (oy = 0, iy0 = {-p}, r0 = {-p * w}; oy < {ho}; oy++, iy0 += {s}, r0 += {s * w}) {{" if p > 0
                   else f"for (oy = 0, r0 = 0; oy < {ho}; oy++, r0 += {s * w}) {{")
        body = [
            "int g, oo, o = 0, yi = 0, wi0 = 0, xg = 0;",
            f"for (g = 0; g < {g}; g++, xg += {cg * h * w}) {{",
            f"    for (oo = 0; oo < {og}; oo++, o++, wi0 += {cg * k * k}) {{",
            f"        int oy; {pad_vars}",
            f"        {oy_loop}",
            "            int ox, ix0;",
            f"            for (ox = 0, ix0 = {-p}; ox < {wo}; ox++, ix0 += {s}) {{",
            f"                {at} acc = {bias};",
            "                int c, xc, wi = wi0;",
            f"                {decl}",
            f"                for (c = 0, xc = xg + r0; c < {cg}; c++, xc += {h * w}) {{",
            *("                    " + line for line in inner),
            "                }",
            "                {",
            *("                    " + line for line in rq_lines),
            f"                    y[yi++] = ({yt})v;",
            "                }",
            "            }",
            "        }",
            "    }",
            "}",
        ]
        desc = (f"{n.name}: {n.op} {'linear' if n.linear else 'conv'} {c}->{o}, k{k} s{s} p{p} g{g}, {h}x{w} -> {ho}x{wo}; "
                f"in {n.inputs[0].fmt}, out {n.out.fmt}, acc int{n.acc_bits} 2^-{n.acc_frac[0] if len(set(n.acc_frac)) == 1 else 'per-channel'}, "
                f"act {n.act}")
        return self._function(fn, desc, [f"const {xt} *restrict x", f"{yt} *restrict y"], body)

    def pool(self, n: PoolNode, fn: str, ops: LayerOps) -> str:
        c, h, w = n.inputs[0].shape
        hw = h * w
        st = f"int{n.sum_bits}_t"
        rq_lines, rq_ops = self.requant(n.requant, "s", "c", [1] * c, fn)
        ops.loop["add"] = c * (hw - 1)
        ops.requant, ops.outputs = rq_ops, c
        body = [
            "int c, i, xc;",
            f"for (c = 0, xc = 0; c < {c}; c++, xc += {hw}) {{",
            f"    {st} s = x[xc];",
            f"    for (i = 1; i < {hw}; i++) s = L_ADD(s, ({st})x[xc + i]);",
            "    {",
            *("        " + line for line in rq_lines),
            f"        y[c] = ({n.out.fmt.ctype})v;",
            "    }",
            "}",
        ]
        desc = f"{n.name}: global average pool {c}x{h}x{w}; in {n.inputs[0].fmt}, out {n.out.fmt}"
        return self._function(fn, desc, [f"const {n.inputs[0].fmt.ctype} *restrict x", f"{n.out.fmt.ctype} *restrict y"], body)

    def _rshift(self, var: str, s: int, ops: dict, n: int, shl: str) -> str:
        """``var`` rounded-shifted right by s (left when s < 0), counting its ops over n elements."""
        if s > 0:
            ops["add"] += n
            ops["shift"] += n
            return f"{var} = Q_SHR(Q_ADD({var}, {1 << (s - 1)}), {s});"
        if s < 0:
            ops["shift"] += n
            return f"{var} = {shl}({var}, {-s});"
        return ""

    def gate(self, n: GateNode, fn: str, ops: LayerOps) -> str:
        (c, h, w), (x, g) = n.out.shape, n.inputs
        pt = f"int{n.prod_bits}_t"
        ops.loop["mul"] = ops.outputs = c * h * w
        shift_line = self._rshift("v", n.shift, ops.requant, c * h * w, f"Q_SHL{n.prod_bits}")
        f = n.out.fmt
        body = [
            "int c, i, xi = 0;",
            f"for (c = 0; c < {c}; c++) {{",
            f"    {pt} gv = ({pt})g[c];",
            f"    for (i = 0; i < {h * w}; i++, xi++) {{",
            f"        {pt} v = L_MUL(({pt})x[xi], gv);",
            f"        {shift_line}",
            f"        v = SAA_CLAMP(v, {_lit(f.lo)}, {_lit(f.hi)});",
            f"        y[xi] = ({f.ctype})v;",
            "    }",
            "}",
        ]
        desc = f"{n.name}: SE gating x * g, x {x.fmt}, g {g.fmt}, out {f}"
        return self._function(fn, desc, [f"const {x.fmt.ctype} *restrict x", f"const {g.fmt.ctype} *restrict g",
                                         f"{f.ctype} *restrict y"], body)

    def add(self, n: AddNode, fn: str, ops: LayerOps) -> str:
        a, b = n.inputs
        f = n.out.fmt
        num = n.out.numel
        ops.loop["add"] = ops.outputs = num
        lines = []
        big = max(max(abs(t.fmt.lo), t.fmt.hi) << max(0, f.frac - t.fmt.frac) for t in (a, b))
        st = "int32_t" if 2 * big < (1 << 31) else "int64_t"
        shl = "Q_SHL32" if st == "int32_t" else "Q_SHL64"
        for var, t in (("va", a), ("vb", b)):
            lines.append(f"{st} {var} = ({st}){var[1]}[i];")
            line = self._rshift(var, t.fmt.frac - f.frac, ops.requant, num, shl)
            if line:
                lines.append(line)
        body = [
            "int i;",
            f"for (i = 0; i < {num}; i++) {{",
            *("    " + line for line in lines),
            f"    {st} v = L_ADD(va, vb);",
            f"    v = SAA_CLAMP(v, {_lit(f.lo)}, {_lit(f.hi)});",
            f"    y[i] = ({f.ctype})v;",
            "}",
        ]
        desc = f"{n.name}: residual add, {a.name} {a.fmt} + {b.name} {b.fmt} -> {f}"
        return self._function(fn, desc, [f"const {a.fmt.ctype} *restrict a", f"const {b.fmt.ctype} *restrict b",
                                         f"{f.ctype} *restrict y"], body)

    def input(self, n: InputNode, fn: str, ops: LayerOps) -> str:
        c, h, w = n.out.shape
        hw = h * w
        yt = n.out.fmt.ctype
        tables: dict[tuple, str] = {}
        body = ["int i;"]
        for ch, src in enumerate(n.src):
            key = tuple(n.lut[ch].tolist())
            if key not in tables:
                tables[key] = self.array(f"{fn}_lut{len(tables)}", list(key), yt)
            body.append(f"for (i = 0; i < {hw}; i++) y[{ch * hw} + i] = {tables[key]}[x[{src * hw} + i]];")
        ops.outputs = c * hw
        desc = f"{n.name}: uint8 pixels -> {n.out.fmt} through per-channel tables (the dataset's normalisation)"
        return self._function(fn, desc, ["const uint8_t *restrict x", f"{yt} *restrict y"], body)

    def _function(self, fn: str, desc: str, params: list[str], body: list[str]) -> str:
        text = "\n".join("    " + line if line else "" for line in body)
        if "*" in text:  # index arithmetic is additions only; every multiplication is an L_MUL / Q_MUL
            raise AssertionError(f"{fn}: a raw '*' in a layer body")
        return f"/* {desc} */\nstatic void {fn}({', '.join(params)})\n{{\n{text}\n}}\n"


_PRELUDE = r"""#include "model.h"

/* >> of a negative value must be an arithmetic shift (implementation-defined in C99). */
typedef char saa_arithmetic_right_shift_required[((-3 >> 1) == -2 && ((int64_t)-3 >> 1) == -2) ? 1 : -1];

#define SAA_ABS(d) ((d) < 0 ? -(d) : (d))
#define SAA_CLAMP(v, lo, hi) ((v) < (lo) ? (lo) : (v) > (hi) ? (hi) : (v))
#ifdef SAA_COUNT
saa_ops_t saa_layer_ops[SAA_NUM_LAYERS][2];
static saa_ops_t saa_now[2];
#define SAA_N(k, f) (saa_now[k].f++)
#define SAA_LAYER_DONE(i) saa_layer_done(i)
static void saa_layer_done(int i)
{
    int k;
    for (k = 0; k < 2; k++) {
        saa_layer_ops[i][k].mul += saa_now[k].mul;
        saa_layer_ops[i][k].add += saa_now[k].add;
        saa_layer_ops[i][k].shift += saa_now[k].shift;
        saa_now[k].mul = saa_now[k].add = saa_now[k].shift = 0;
    }
}
#define SAA_OP(k, f, e) (SAA_N(k, f), (e))
#else
#define SAA_LAYER_DONE(i) ((void)0)
#define SAA_OP(k, f, e) (e)
#endif
/* L_*: the layer's own arithmetic; Q_*: requantisation (BatchNorm, rescaling, activations). */
#define L_ADD(a, b) SAA_OP(0, add, (a) + (b))
#define L_SUB(a, b) SAA_OP(0, add, (a) - (b))
#define L_MUL(a, b) SAA_OP(0, mul, (a) * (b))
#define L_SHL32(v, n) SAA_OP(0, shift, (int32_t)((uint32_t)(v) << (n)))
#define L_SHL64(v, n) SAA_OP(0, shift, (int64_t)((uint64_t)(v) << (n)))
#define Q_ADD(a, b) SAA_OP(1, add, (a) + (b))
#define Q_SUB(a, b) SAA_OP(1, add, (a) - (b))
#define Q_MUL(a, b) SAA_OP(1, mul, (a) * (b))
#define Q_SHL32(v, n) SAA_OP(1, shift, (int32_t)((uint32_t)(v) << (n)))
#define Q_SHL64(v, n) SAA_OP(1, shift, (int64_t)((uint64_t)(v) << (n)))
#define Q_SHR(v, n) SAA_OP(1, shift, (v) >> (n))
"""

_MAIN = r"""/* Generated by shiftaddaug: run the network on raw images and print the logits.
 *
 * usage: model IMAGE_FILE
 *   IMAGE_FILE holds one or more images of SAA_INPUT_BYTES bytes each: uint8 pixels, channel by
 *   channel, row by row, at the network's input resolution (no header). For every image one line
 *   is printed: the predicted class, then the SAA_NUM_CLASSES integer logits
 *   (real logit = value * 2^-SAA_LOGIT_FRAC_BITS).
 * Built with -DSAA_COUNT it also prints, per layer, the operations executed over all images.
 */
#include <stdio.h>

#include "model.h"

int main(int argc, char **argv)
{
    static uint8_t image[SAA_INPUT_BYTES];
    static int32_t logits[SAA_NUM_CLASSES];
    size_t got;
    long images = 0;
    FILE *f;
    if (argc != 2) {
        fprintf(stderr, "usage: %s IMAGE_FILE (raw uint8 images of %d bytes each)\n", argv[0], SAA_INPUT_BYTES);
        return 2;
    }
    f = fopen(argv[1], "rb");
    if (f == NULL) {
        perror(argv[1]);
        return 2;
    }
    while ((got = fread(image, 1, SAA_INPUT_BYTES, f)) == SAA_INPUT_BYTES) {
        int k, best = 0;
        saa_run(image, logits);
        for (k = 1; k < SAA_NUM_CLASSES; k++)
            if (logits[k] > logits[best])
                best = k;
        printf("%d", best);
        for (k = 0; k < SAA_NUM_CLASSES; k++)
            printf(" %ld", (long)logits[k]);
        printf("\n");
        images++;
    }
    fclose(f);
    if (got != 0 || images == 0) {
        fprintf(stderr, "%s: the file size is not a positive multiple of %d bytes\n", argv[1], SAA_INPUT_BYTES);
        return 1;
    }
#ifdef SAA_COUNT
    {
        int i;
        fprintf(stderr, "# images %ld\n", images);
        for (i = 0; i < SAA_NUM_LAYERS; i++)
            fprintf(stderr, "%s %llu %llu %llu %llu %llu %llu\n", saa_layer_names[i],
                    saa_layer_ops[i][0].mul, saa_layer_ops[i][0].add, saa_layer_ops[i][0].shift,
                    saa_layer_ops[i][1].mul, saa_layer_ops[i][1].add, saa_layer_ops[i][1].shift);
    }
#endif
    return 0;
}
"""


def generate_c(net: IntNet, requant: str = "csd", arch_id: str = "") -> CProgram:
    """The C sources of ``net`` (file name -> text) with op counts, flash bytes and memory plan."""
    em = _Emitter(net, requant)
    memory = plan_memory(net)
    functions, calls, ops = [], [], []
    for i, n in enumerate(net.nodes):
        fn = _cname(i)
        em.layer = n.name
        lo = LayerOps(n.name, n.kind, n.op if isinstance(n, ConvNode) else "-", n.part)
        emit = {InputNode: em.input, ConvNode: em.conv, PoolNode: em.pool, GateNode: em.gate, AddNode: em.add}[type(n)]
        text = emit(n, fn, lo)
        functions.append(text)
        ops.append(lo)
        args = ["image"] if isinstance(n, InputNode) else [_arena(b, memory, const=True) for b in n.inputs]
        args.append("logits" if n.out is net.logits else _arena(n.out, memory, const=False))
        calls.append(f"    {fn}({', '.join(args)});\n    SAA_LAYER_DONE({i});")
    raw = net.input.raw_shape
    header = f"""/* Generated by shiftaddaug {__version__} (nas.codegen, generator version {GENERATOR_VERSION}) from {net.name}{f' (arch {arch_id})' if arch_id else ''}.
 * Integer-only inference: see docs/deploy.md of shiftaddaug. Do not edit. */
#ifndef SAA_MODEL_H
#define SAA_MODEL_H

#include <stdint.h>

#define SAA_INPUT_CHANNELS {raw[0]}
#define SAA_INPUT_HEIGHT {raw[1]}
#define SAA_INPUT_WIDTH {raw[2]}
#define SAA_INPUT_BYTES {raw[0] * raw[1] * raw[2]}
#define SAA_NUM_CLASSES {net.num_classes}
#define SAA_LOGIT_FRAC_BITS {net.logit_frac}
#define SAA_ARENA_BYTES {memory.arena_bytes}
#define SAA_NUM_LAYERS {len(net.nodes)}

/* Classify one image (SAA_INPUT_BYTES uint8 pixels, CHW); logits[k] * 2^-SAA_LOGIT_FRAC_BITS is
 * the k-th logit. Not reentrant: the activations live in one static arena. */
void saa_run(const uint8_t *image, int32_t *logits);

#ifdef SAA_COUNT
typedef struct {{
    unsigned long long mul, add, shift;
}} saa_ops_t;
/* [layer][0]: the layer's own operations, [layer][1]: requantisation; summed over saa_run calls */
extern saa_ops_t saa_layer_ops[SAA_NUM_LAYERS][2];
extern const char *const saa_layer_names[SAA_NUM_LAYERS];
#endif

#endif
"""
    names = ", ".join(f'"{n.name}"' for n in net.nodes)
    model_c = "\n".join([
        f"/* Generated by shiftaddaug {__version__} (nas.codegen, generator version {GENERATOR_VERSION}) from {net.name}. "
        f"Requantisation multipliers: {'CSD shift-adds' if requant == 'csd' else 'multiplications'}. Do not edit. */",
        _PRELUDE,
        f"#ifdef SAA_COUNT\nconst char *const saa_layer_names[SAA_NUM_LAYERS] = {{{names}}};\n#endif\n",
        "/* ---- constants (flash) ---- */",
        *em.consts,
        "",
        "/* ---- layers ---- */",
        *functions,
        "/* ---- activations (SRAM): one arena, offsets from nas.codegen.memory ---- */",
        f"static int16_t saa_arena[{max(1, (memory.arena_bytes + 1) // 2)}];",
        "",
        "void saa_run(const uint8_t *image, int32_t *logits)",
        "{",
        "    uint8_t *const a = (uint8_t *)saa_arena;",
        *calls,
        "}",
        "",
    ])
    return CProgram({"model.h": header, "model.c": model_c, "main.c": _MAIN}, ops, em.flash, memory, requant)


def _arena(b, memory: MemoryPlan, const: bool) -> str:
    return f"({'const ' if const else ''}{b.fmt.ctype} *)(a + {memory.offsets[b.name]})"


def count_static_mults(program: CProgram) -> dict[str, dict[str, int]]:
    """Multiplication sites per layer function, read back from the generated model.c text:
    ``{"loop": L_MUL uses, "requant": Q_MUL uses, "raw": '*' characters}`` (raw is 0 by construction)."""
    out = {}
    text = program.files["model.c"]
    for i, lo in enumerate(program.ops):
        start = text.index(f"static void {_cname(i)}(")
        end = text.index("\n}\n", start)
        body = text[text.index("{", start) : end]
        out[lo.name] = {"loop": body.count("L_MUL("), "requant": body.count("Q_MUL("), "raw": body.count("*")}
    return out
