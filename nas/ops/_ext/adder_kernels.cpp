// CPU kernels for the AdderNet operator (nas/ops/adder.py).
//
// Plain C++ with GCC/Clang vector extensions, no torch headers: it compiles in about 3 s with
// the system compiler and is called through ctypes on raw data pointers. The loader
// (nas/ops/_ext/__init__.py) builds it with -march=native into a cache keyed by the CPU, so the
// vector width chosen below is the host's (AVX-512, AVX2 or SSE; the generic vector types also
// compile on other architectures).
//
// Kernels (T = float or double, all "extern C" at the bottom):
//   fwd  y[n, g*O+o, p]  = -sum_k |x[n, g*K+k, p] - w[g*O+o, k]|
//   gx   gx[n, g*K+k, p] = sum_o gy[n, g*O+o, p] * clamp(w[g*O+o, k] - x[n, g*K+k, p], -1, 1)
//   depthwise forward and backward directly on the image (no im2col).
// The weight gradient of the dense kernels is g @ X^T - w * rowsum(g): a matmul done by torch.
//
// Every output element is summed by one thread in a fixed order, so results do not depend on
// the thread count (except the depthwise weight-gradient reduction, see below).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
#define SAA_VBYTES 64
#elif defined(__AVX__)
#define SAA_VBYTES 32
#else
#define SAA_VBYTES 16
#endif

namespace {

template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float v __attribute__((vector_size(SAA_VBYTES)));
  typedef int32_t vi __attribute__((vector_size(SAA_VBYTES)));
  static constexpr int N = SAA_VBYTES / 4;
  // |a| by clearing the sign bit: one AND, exact.
  static inline v abs(v a) { return (v)((vi)a & 0x7fffffff); }
};
template <> struct Vec<double> {
  typedef double v __attribute__((vector_size(SAA_VBYTES)));
  typedef int64_t vi __attribute__((vector_size(SAA_VBYTES)));
  static constexpr int N = SAA_VBYTES / 8;
  static inline v abs(v a) { return (v)((vi)a & 0x7fffffffffffffffLL); }
};

template <typename V, typename T> static inline V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T> static inline void storeu(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
// Broadcast a scalar to every lane. Written as s - 0, which the compiler folds to a plain
// broadcast (x - (+0) == x for every x), unlike 0 + s (not an identity for s = -0.0).
template <typename V, typename T> static inline V bcast(T s) { return s - V{}; }
template <typename V> static inline V vmin(V a, V b) { return a < b ? a : b; }  // -> vminps
template <typename V> static inline V vmax(V a, V b) { return a > b ? a : b; }  // -> vmaxps

// Register tiles. Forward: OT weight rows x PV vectors of positions in accumulators (+ the PV
// x vectors of the current k). Input gradient: KT rows x PV vectors of accumulators plus the
// bounds x - 1 and x + 1 of the same tile (3x registers).
#if SAA_VBYTES == 64
constexpr int FWD_OT = 8, FWD_PV = 2, GX_KT = 4, GX_PV = 2;  // 32 zmm registers (gx: 3 x 8 + 3)
#else
constexpr int FWD_OT = 4, FWD_PV = 2, GX_KT = 2, GX_PV = 2;  // 16 ymm/xmm registers (gx: 3 x 4 + 3)
#endif

// Run body(t, begin, end) on nthreads threads over [0, total) in contiguous ranges.
template <typename F> static void parallel_ranges(int64_t total, int64_t nthreads, F body) {
  nthreads = std::max<int64_t>(1, std::min<int64_t>(nthreads, total));
  if (nthreads == 1) {
    body(0, 0, total);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(nthreads - 1);
  for (int64_t t = 1; t < nthreads; ++t)
    pool.emplace_back([=, &body] { body(t, total * t / nthreads, total * (t + 1) / nthreads); });
  body(0, 0, total / nthreads);
  for (auto& th : pool) th.join();
}

// ---------------------------------------------------------------------------------------------
// Dense (im2col-free) convolution geometry: x [N, G*Cg, H, W] zero-padded by ph, pw; weights
// w [G*O, K] with K = Cg*KH*KW in (c, kh, kw) order; outputs [N, G*O, P] with P = Ho*Wo. The
// forward is handed an input the caller already padded (H, W the padded sizes, ph = pw = 0); the
// input gradient pads each (n, g) block into a per-thread buffer itself and writes the unpadded
// gradient. A linear layer is the case N = G = H = KH = KW = 1, W = Wo = batch, x = x^T.
struct ConvGeom {
  int64_t N, G, Cg, O, H, W, ph, pw, KH, KW, sh, sw, dh, dw, Ho, Wo;
  int64_t Hp() const { return H + 2 * ph; }
  int64_t Wp() const { return W + 2 * pw; }
  int64_t K() const { return Cg * KH * KW; }
  int64_t P() const { return Ho * Wo; }
  bool padded() const { return ph != 0 || pw != 0; }
  // Offset of im2col row k = (c, kh, kw) inside one padded (n, g) block, for `rows` >= K rows
  // (rows past K point at offset 0: tiles may read them, their results are dropped).
  std::vector<int64_t> koffsets(int64_t rows) const {
    std::vector<int64_t> off(std::max(rows, K()), 0);
    for (int64_t c = 0; c < Cg; ++c)
      for (int64_t a = 0; a < KH; ++a)
        for (int64_t b = 0; b < KW; ++b) off[(c * KH + a) * KW + b] = c * Hp() * Wp() + a * dh * Wp() + b * dw;
    return off;
  }
};

// Where the im2col columns of a panel of output positions [p0, p0 + pn) come from. In general
// they are runs along output rows, each starting at padded offset `src` and advancing by sw per
// position, and get packed into a [K][PT] buffer. A "direct" panel is full and each of its
// vectors lies inside one output row with sw == 1: vector j of im2col row k is then contiguous at
// koff[k] + vsrc[j], so the tiles read the (padded) image in place and nothing is packed.
struct Run {
  int64_t j0, len, src;
};
constexpr int MAX_PV = 4;
struct Panel {
  int64_t p0 = 0, pn = 0;
  bool direct = false;
  int64_t vsrc[MAX_PV] = {};
  std::vector<Run> runs;

  template <int NV, int PV> void set(const ConvGeom& d, int64_t p0_, int64_t pn_, bool rows_whole) {
    static_assert(PV <= MAX_PV, "MAX_PV");
    p0 = p0_, pn = pn_;
    direct = rows_whole && pn == NV * PV;
    runs.clear();
    if (direct) {
      for (int j = 0; j < PV; ++j) {
        const int64_t p = p0 + j * NV;
        vsrc[j] = (p / d.Wo) * d.sh * d.Wp() + p % d.Wo;
      }
      return;
    }
    for (int64_t j = 0; j < pn;) {
      const int64_t p = p0 + j, i = p / d.Wo, jj = p % d.Wo;
      const int64_t len = std::min(d.Wo - jj, pn - j);
      runs.push_back({j, len, i * d.sh * d.Wp() + jj * d.sw});
      j += len;
    }
  }
};

// Gather the im2col panel [K][PT] of one (n, g) block (zeros past pn), fusing im2col into the
// packing so that no [K, P] column buffer is ever materialised.
template <typename T>
static void pack_cols(const T* xs, const std::vector<int64_t>& koff, int64_t K, const Panel& pan,
                      const ConvGeom& d, int PT, T* dst) {
  for (int64_t k = 0; k < K; ++k) {
    T* row = dst + k * PT;
    const T* src = xs + koff[k];
    for (const Run& r : pan.runs) {
      if (d.sw == 1) {
        std::memcpy(row + r.j0, src + r.src, r.len * sizeof(T));
      } else {
        for (int64_t t = 0; t < r.len; ++t) row[r.j0 + t] = src[r.src + t * d.sw];
      }
    }
    for (int64_t j = pan.pn; j < PT; ++j) row[j] = T(0);
  }
}

// x vectors of a tile: im2col row k, vector j, from a packed panel or in place (direct panel).
template <typename T, bool DIRECT> struct Cols {
  const T* base;          // packed [rows][PT] buffer, or the padded (n, g) block
  const int64_t* koff;    // direct: im2col row offsets
  int64_t vsrc[MAX_PV];   // direct: vector offsets
  int PT;
  inline const T* at(int64_t k, int j, int NV) const {
    return DIRECT ? base + koff[k] + vsrc[j] : base + k * PT + j * NV;
  }
};

// The x source of a panel's tiles: in place for a direct panel, else packed into `xpack`.
template <typename T>
static void panel_cols(const Panel& pan, const T* xs, const std::vector<int64_t>& koff, int64_t K,
                       const ConvGeom& d, int PT, T* xpack, Cols<T, true>& direct, Cols<T, false>& packed) {
  direct = Cols<T, true>{xs, koff.data(), {}, PT};
  packed = Cols<T, false>{xpack, nullptr, {}, PT};
  if (pan.direct)
    std::copy(pan.vsrc, pan.vsrc + MAX_PV, direct.vsrc);
  else
    pack_cols(xs, koff, K, pan, d, PT, xpack);
}

// ---------------------------------------------------------------------------------------------
// Dense forward: y[o, p] = -sum_k |x[k, p] - w[o, k]|, register tile OT x (PV vectors of p).
template <typename T, bool DIRECT>
static void fwd_tile(const T* __restrict wp, const Cols<T, DIRECT>& cols, int64_t K, T* __restrict out) {
  using V = typename Vec<T>::v;
  constexpr int NV = Vec<T>::N, PT = FWD_PV * NV;
  V acc[FWD_OT][FWD_PV];
  for (int i = 0; i < FWD_OT; ++i)
    for (int j = 0; j < FWD_PV; ++j) acc[i][j] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V xv[FWD_PV];
    for (int j = 0; j < FWD_PV; ++j) xv[j] = loadu<V>(cols.at(k, j, NV));
    for (int i = 0; i < FWD_OT; ++i) {
      const V wb = bcast<V>(wp[k * FWD_OT + i]);
      for (int j = 0; j < FWD_PV; ++j) acc[i][j] += Vec<T>::abs(xv[j] - wb);
    }
  }
  for (int i = 0; i < FWD_OT; ++i)
    for (int j = 0; j < FWD_PV; ++j) storeu(out + i * PT + j * NV, -acc[i][j]);
}

template <typename T>
static void adder_fwd(const T* xpad, const T* w, T* y, const ConvGeom& d, int64_t nthreads) {
  constexpr int NV = Vec<T>::N, PT = FWD_PV * NV, OT = FWD_OT;
  const int64_t K = d.K(), P = d.P(), O = d.O, G = d.G;
  const int64_t otiles = (O + OT - 1) / OT, panels = (P + PT - 1) / PT;
  const std::vector<int64_t> koff = d.koffsets(K);
  const bool rows_whole = d.sw == 1 && d.Wo % NV == 0;
  // Weights packed once as [G][otile][K][OT] (rows past O are zero and their outputs dropped),
  // so the tile loop reads them sequentially.
  std::vector<T> wpack(G * otiles * K * OT, T(0));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t k = 0; k < K; ++k)
        wpack[((g * otiles + o / OT) * K + k) * OT + o % OT] = w[(g * O + o) * K + k];
  parallel_ranges(d.N * G * panels, nthreads, [&](int64_t, int64_t begin, int64_t end) {
    std::vector<T> xpack(K * PT), tile(OT * PT);
    Panel pan;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (G * panels), g = (item / panels) % G, p0 = (item % panels) * PT;
      const T* xs = xpad + (n * G + g) * d.Cg * d.H * d.W;
      pan.set<NV, FWD_PV>(d, p0, std::min<int64_t>(PT, P - p0), rows_whole);
      Cols<T, true> direct;
      Cols<T, false> packed;
      panel_cols(pan, xs, koff, K, d, PT, xpack.data(), direct, packed);
      for (int64_t ot = 0; ot < otiles; ++ot) {
        const T* wt = wpack.data() + (g * otiles + ot) * K * OT;
        if (pan.direct)
          fwd_tile<T, true>(wt, direct, K, tile.data());
        else
          fwd_tile<T, false>(wt, packed, K, tile.data());
        const int64_t on = std::min<int64_t>(OT, O - ot * OT);
        T* ys = y + ((n * G + g) * O + ot * OT) * P + p0;
        for (int64_t i = 0; i < on; ++i) std::memcpy(ys + i * P, tile.data() + i * PT, pan.pn * sizeof(T));
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Dense input gradient (AdderNet's HardTanh-clipped gradient):
//   gcol[k, p] = sum_o gy[o, p] * clamp(w[o, k] - x[k, p], -1, 1)
// scattered straight back onto the padded image (col2im fused), so no column buffer either.
//
// Fast form: sum_o gy[o, p] * clamp(w[o, k], x - 1, x + 1) - x[k, p] * sum_o gy[o, p], whose
// bounds x -/+ 1 stay in registers: max, min, fma per step instead of sub, max, min, fma (about
// 1.4x faster). Its final subtraction cancels about |x| ulps, so it is used only for tiles whose
// |x| <= CLIP_TRICK_MAX_ABS (relative error < 1e-5 in float32); other tiles take the direct form.
constexpr double CLIP_TRICK_MAX_ABS = 32.0;

template <typename T, bool DIRECT>
static void gx_tile(const T* __restrict wp, const T* __restrict gp, int64_t gstride, const T* __restrict gsum,
                    const Cols<T, DIRECT>& cols, int64_t k0, int64_t O, T* __restrict out) {
  using V = typename Vec<T>::v;
  constexpr int NV = Vec<T>::N, PT = GX_PV * NV;
  V acc[GX_KT][GX_PV], lo[GX_KT][GX_PV], hi[GX_KT][GX_PV];
  V amax = V{};
  for (int i = 0; i < GX_KT; ++i)
    for (int j = 0; j < GX_PV; ++j) {
      const V xv = loadu<V>(cols.at(k0 + i, j, NV));
      acc[i][j] = V{};
      lo[i][j] = xv - T(1);
      hi[i][j] = xv + T(1);
      amax = vmax(amax, Vec<T>::abs(xv));
    }
  T m = 0;
  for (int l = 0; l < NV; ++l) m = std::max(m, T(amax[l]));
  if (m <= T(CLIP_TRICK_MAX_ABS)) {
    for (int64_t o = 0; o < O; ++o) {
      V gv[GX_PV];
      for (int j = 0; j < GX_PV; ++j) gv[j] = loadu<V>(gp + o * gstride + j * NV);
      for (int i = 0; i < GX_KT; ++i) {
        const V wb = bcast<V>(wp[o * GX_KT + i]);
        for (int j = 0; j < GX_PV; ++j) acc[i][j] += gv[j] * vmin(vmax(wb, lo[i][j]), hi[i][j]);
      }
    }
    for (int i = 0; i < GX_KT; ++i)
      for (int j = 0; j < GX_PV; ++j) {
        const V xv = loadu<V>(cols.at(k0 + i, j, NV)), gs = loadu<V>(gsum + j * NV);
        storeu(out + i * PT + j * NV, acc[i][j] - xv * gs);
      }
  } else {
    const V one = bcast<V>(T(1)), mone = bcast<V>(T(-1));
    V xs[GX_KT][GX_PV];
    for (int i = 0; i < GX_KT; ++i)
      for (int j = 0; j < GX_PV; ++j) xs[i][j] = loadu<V>(cols.at(k0 + i, j, NV));
    for (int64_t o = 0; o < O; ++o) {
      V gv[GX_PV];
      for (int j = 0; j < GX_PV; ++j) gv[j] = loadu<V>(gp + o * gstride + j * NV);
      for (int i = 0; i < GX_KT; ++i) {
        const V wb = bcast<V>(wp[o * GX_KT + i]);
        for (int j = 0; j < GX_PV; ++j) acc[i][j] += gv[j] * vmin(vmax(wb - xs[i][j], mone), one);
      }
    }
    for (int i = 0; i < GX_KT; ++i)
      for (int j = 0; j < GX_PV; ++j) storeu(out + i * PT + j * NV, acc[i][j]);
  }
}

// x [N, G*Cg, H, W] unpadded, gx likewise (fully written). Each (n, g) block is owned by one
// thread, which pads it into a private buffer (when there is padding) and accumulates its
// gradient in a private padded buffer, so the overlapping scatter-adds of neighbouring windows
// never race and the result does not depend on the thread count.
template <typename T>
static void adder_gx(const T* gy, const T* w, const T* x, T* gx, const ConvGeom& d, int64_t nthreads) {
  using V = typename Vec<T>::v;
  constexpr int NV = Vec<T>::N, PT = GX_PV * NV, KT = GX_KT;
  const int64_t K = d.K(), P = d.P(), O = d.O, G = d.G;
  const int64_t ktiles = (K + KT - 1) / KT, kpad = ktiles * KT;
  const std::vector<int64_t> koff = d.koffsets(kpad);
  const bool rows_whole = d.sw == 1 && d.Wo % NV == 0;
  const int64_t plane = d.Hp() * d.Wp(), block = d.Cg * plane, ublock = d.Cg * d.H * d.W;
  // Scatter order: the im2col rows sorted by kw (then c, kh), so that consecutive read-modify-
  // writes never hit a vector stored one element earlier (which stalls store forwarding).
  std::vector<int64_t> order(K);
  for (int64_t k = 0; k < K; ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return a % d.KW < b % d.KW; });
  // Weights packed as [G][ktile][O][KT] (columns past K are zero; their outputs are dropped).
  std::vector<T> wpack(G * ktiles * O * KT, T(0));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t k = 0; k < K; ++k)
        wpack[((g * ktiles + k / KT) * O + o) * KT + k % KT] = w[(g * O + o) * K + k];
  parallel_ranges(d.N * G, nthreads, [&](int64_t, int64_t begin, int64_t end) {
    std::vector<T> gpack(O * PT), gsum(PT), xpack(kpad * PT, T(0)), gcol(kpad * PT);
    std::vector<T> xbuf(d.padded() ? block : 0), gbuf(d.padded() ? block : 0);
    Panel pan;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / G, g = item % G;
      const T* xb = x + item * ublock;
      T* gb = gx + item * ublock;
      const T* xs = xb;
      T* gs = gb;
      if (d.padded()) {
        std::fill(xbuf.begin(), xbuf.end(), T(0));
        for (int64_t c = 0; c < d.Cg; ++c)
          for (int64_t i = 0; i < d.H; ++i)
            std::memcpy(&xbuf[c * plane + (i + d.ph) * d.Wp() + d.pw], xb + (c * d.H + i) * d.W, d.W * sizeof(T));
        std::fill(gbuf.begin(), gbuf.end(), T(0));
        xs = xbuf.data(), gs = gbuf.data();
      } else {
        std::fill(gb, gb + ublock, T(0));
      }
      for (int64_t p0 = 0; p0 < P; p0 += PT) {
        pan.set<NV, GX_PV>(d, p0, std::min<int64_t>(PT, P - p0), rows_whole);
        // gy rows of this panel: read in place when the panel is full, else packed with zeros.
        const T* gsrc = gy + (n * G + g) * O * P + p0;
        const T* gp = gsrc;
        int64_t gstride = P;
        if (pan.pn < PT) {
          for (int64_t o = 0; o < O; ++o) {
            std::memcpy(&gpack[o * PT], gsrc + o * P, pan.pn * sizeof(T));
            std::fill(&gpack[o * PT + pan.pn], &gpack[o * PT + PT], T(0));
          }
          gp = gpack.data(), gstride = PT;
        }
        for (int j = 0; j < GX_PV; ++j) {
          V s = V{};
          for (int64_t o = 0; o < O; ++o) s += loadu<V>(gp + o * gstride + j * NV);
          storeu(&gsum[j * NV], s);
        }
        Cols<T, true> direct;
        Cols<T, false> packed;
        panel_cols(pan, xs, koff, K, d, PT, xpack.data(), direct, packed);
        for (int64_t kt = 0; kt < ktiles; ++kt) {
          const T* wt = wpack.data() + (g * ktiles + kt) * O * KT;
          T* out = gcol.data() + kt * KT * PT;
          if (pan.direct)
            gx_tile<T, true>(wt, gp, gstride, gsum.data(), direct, kt * KT, O, out);
          else
            gx_tile<T, false>(wt, gp, gstride, gsum.data(), packed, kt * KT, O, out);
        }
        for (const int64_t k : order) {
          T* dst = gs + koff[k];
          const T* src = gcol.data() + k * PT;
          if (pan.direct) {
            for (int j = 0; j < GX_PV; ++j) {
              T* dv = dst + pan.vsrc[j];
              storeu(dv, loadu<V>(dv) + loadu<V>(src + j * NV));
            }
            continue;
          }
          for (const Run& r : pan.runs) {
            T* __restrict dr = dst + r.src;
            const T* __restrict sr = src + r.j0;
            if (d.sw == 1) {
              for (int64_t t = 0; t < r.len; ++t) dr[t] += sr[t];
            } else {
              for (int64_t t = 0; t < r.len; ++t) dr[t * d.sw] += sr[t];
            }
          }
        }
      }
      if (d.padded())
        for (int64_t c = 0; c < d.Cg; ++c)
          for (int64_t i = 0; i < d.H; ++i)
            std::memcpy(gb + (c * d.H + i) * d.W, &gbuf[c * plane + (i + d.ph) * d.Wp() + d.pw], d.W * sizeof(T));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Depthwise (each output channel o reads input channel o / M), directly on the image: a padded
// copy of one input plane per (n, c) in a per-thread buffer whose rows carry DW_SLACK extra zero
// columns, so that whole vectors can be read past the end of an output row. Stride 1 along rows
// (the common case) runs on whole vectors of outputs; other strides use scalar loops.
constexpr int64_t DW_SLACK = 16;  // >= the widest vector (16 floats)

struct DwGeom {
  int64_t N, C, H, W, M, KH, KW, sh, sw, ph, pw, dh, dw, Ho, Wo;
  int64_t Hp() const { return std::max(H + 2 * ph, (Ho - 1) * sh + (KH - 1) * dh + 1); }
  int64_t Wp() const { return std::max(W + 2 * pw, (Wo - 1) * sw + (KW - 1) * dw + 1); }
  int64_t Ws() const { return Wp() + DW_SLACK; }  // row stride of the plane buffers
};

template <typename T> static void pad_plane(const T* src, const DwGeom& d, T* dst) {
  const int64_t Ws = d.Ws();
  std::fill(dst, dst + d.Hp() * Ws, T(0));
  for (int64_t i = 0; i < d.H; ++i) std::memcpy(dst + (i + d.ph) * Ws + d.pw, src + i * d.W, d.W * sizeof(T));
}

template <typename T> static inline double hsum(typename Vec<T>::v v) {
  double s = 0.0;
  for (int l = 0; l < Vec<T>::N; ++l) s += v[l];
  return s;
}

template <typename T>
static void adder_dw_fwd(const T* x, const T* w, T* y, const DwGeom& d, int64_t nthreads) {
  using V = typename Vec<T>::v;
  constexpr int NV = Vec<T>::N;
  const int64_t KK = d.KH * d.KW, Ws = d.Ws(), nvec = (d.Wo + NV - 1) / NV;
  parallel_ranges(d.N * d.C, nthreads, [&](int64_t, int64_t begin, int64_t end) {
    std::vector<T> xp(d.Hp() * Ws), acc(d.Wo);
    std::vector<V> wb(KK);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / d.C, c = item % d.C;
      pad_plane(x + (n * d.C + c) * d.H * d.W, d, xp.data());
      for (int64_t m = 0; m < d.M; ++m) {
        const int64_t o = c * d.M + m;
        const T* wo = w + o * KK;
        T* yo = y + (n * d.C * d.M + o) * d.Ho * d.Wo;
        if (d.sw == 1) {
          for (int64_t q = 0; q < KK; ++q) wb[q] = bcast<V>(wo[q]);
          for (int64_t i = 0; i < d.Ho; ++i)
            for (int64_t jv = 0; jv < nvec; ++jv) {
              const T* base = xp.data() + i * d.sh * Ws + jv * NV;
              V a = V{};
              for (int64_t kh = 0; kh < d.KH; ++kh)
                for (int64_t kw = 0; kw < d.KW; ++kw)
                  a += Vec<T>::abs(loadu<V>(base + kh * d.dh * Ws + kw * d.dw) - wb[kh * d.KW + kw]);
              T out[NV];
              storeu(out, -a);
              std::memcpy(yo + i * d.Wo + jv * NV, out, std::min<int64_t>(NV, d.Wo - jv * NV) * sizeof(T));
            }
          continue;
        }
        for (int64_t i = 0; i < d.Ho; ++i) {
          T* __restrict a = acc.data();
          std::fill(a, a + d.Wo, T(0));
          for (int64_t kh = 0; kh < d.KH; ++kh)
            for (int64_t kw = 0; kw < d.KW; ++kw) {
              const T wv = wo[kh * d.KW + kw];
              const T* __restrict xr = xp.data() + (i * d.sh + kh * d.dh) * Ws + kw * d.dw;
              for (int64_t j = 0; j < d.Wo; ++j) a[j] += std::fabs(xr[j * d.sw] - wv);
            }
          for (int64_t j = 0; j < d.Wo; ++j) yo[i * d.Wo + j] = -a[j];
        }
      }
    }
  });
}

// Backward: gx (optional) and, per output channel, S[o, kh, kw] = sum gy * x_window and
// gsum[o] = sum gy, written to wstat [C*M, KH*KW + 1] (double). The caller forms the AdderNet
// weight gradient S - w * gsum. Threads own contiguous (n, c) ranges and keep private double
// partials, reduced in thread order (deterministic for a given thread count). The tap loop is
// outermost so that the read-modify-write of gx never touches a vector it just stored at a
// one-element offset (that would stall store forwarding).
template <typename T>
static void adder_dw_bwd(const T* x, const T* w, const T* gy, T* gx, double* wstat, const DwGeom& d,
                         int64_t nthreads) {
  using V = typename Vec<T>::v;
  constexpr int NV = Vec<T>::N;
  const int64_t KK = d.KH * d.KW, O = d.C * d.M, S = KK + 1, Ws = d.Ws(), Hp = d.Hp();
  const int64_t nvec = (d.Wo + NV - 1) / NV, gstride = nvec * NV;
  nthreads = std::max<int64_t>(1, std::min<int64_t>(nthreads, d.N * d.C));
  std::vector<double> partial(nthreads * O * S, 0.0);
  parallel_ranges(d.N * d.C, nthreads, [&](int64_t t, int64_t begin, int64_t end) {
    // gbuf: the gy plane with rows padded by zeros to whole vectors (zero lanes contribute nothing).
    std::vector<T> xp(Hp * Ws), gxp(Hp * Ws), gbuf(d.Ho * gstride, T(0));
    double* part = partial.data() + t * O * S;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / d.C, c = item % d.C;
      pad_plane(x + (n * d.C + c) * d.H * d.W, d, xp.data());
      std::fill(gxp.begin(), gxp.end(), T(0));
      for (int64_t m = 0; m < d.M; ++m) {
        const int64_t o = c * d.M + m;
        const T* wo = w + o * KK;
        const T* go = gy + (n * O + o) * d.Ho * d.Wo;
        double gs = 0.0;
        for (int64_t i = 0; i < d.Ho; ++i) {
          std::memcpy(gbuf.data() + i * gstride, go + i * d.Wo, d.Wo * sizeof(T));
          for (int64_t j = 0; j < d.Wo; ++j) gs += go[i * d.Wo + j];
        }
        part[o * S + KK] += gs;
        const V one = bcast<V>(T(1)), mone = bcast<V>(T(-1));
        for (int64_t kh = 0; kh < d.KH; ++kh)
          for (int64_t kw = 0; kw < d.KW; ++kw) {
            const T wv = wo[kh * d.KW + kw];
            if (d.sw == 1) {
              const V wb = bcast<V>(wv);
              V sacc = V{};
              for (int64_t i = 0; i < d.Ho; ++i) {
                const int64_t off = (i * d.sh + kh * d.dh) * Ws + kw * d.dw;
                const T* __restrict xr = xp.data() + off;
                T* __restrict gxr = gxp.data() + off;
                const T* __restrict gr = gbuf.data() + i * gstride;
                for (int64_t jv = 0; jv < nvec; ++jv) {
                  const V gv = loadu<V>(gr + jv * NV), xv = loadu<V>(xr + jv * NV);
                  sacc += gv * xv;
                  if (gx) storeu(gxr + jv * NV, loadu<V>(gxr + jv * NV) + gv * vmin(vmax(wb - xv, mone), one));
                }
              }
              part[o * S + kh * d.KW + kw] += hsum<T>(sacc);
              continue;
            }
            double sacc = 0.0;
            for (int64_t i = 0; i < d.Ho; ++i) {
              const int64_t off = (i * d.sh + kh * d.dh) * Ws + kw * d.dw;
              const T* xr = xp.data() + off;
              T* gxr = gxp.data() + off;
              const T* gr = go + i * d.Wo;
              T srow = 0;
              for (int64_t j = 0; j < d.Wo; ++j) {
                srow += gr[j] * xr[j * d.sw];
                if (gx) gxr[j * d.sw] += gr[j] * std::min(std::max(wv - xr[j * d.sw], T(-1)), T(1));
              }
              sacc += srow;
            }
            part[o * S + kh * d.KW + kw] += sacc;
          }
      }
      if (gx) {
        T* gxo = gx + (n * d.C + c) * d.H * d.W;
        for (int64_t i = 0; i < d.H; ++i)
          std::memcpy(gxo + i * d.W, gxp.data() + (i + d.ph) * Ws + d.pw, d.W * sizeof(T));
      }
    }
  });
  for (int64_t q = 0; q < O * S; ++q) {
    double s = 0.0;
    for (int64_t t = 0; t < nthreads; ++t) s += partial[t * O * S + q];
    wstat[q] = s;
  }
}

static ConvGeom conv_geom(const int64_t* g) {
  return ConvGeom{g[0], g[1], g[2],  g[3],  g[4],  g[5],  g[6],  g[7],
                  g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]};
}

}  // namespace

#define SAA_EXPORT(T, SUF)                                                                         \
  extern "C" int saa_adder_fwd_##SUF(const T* xpad, const T* w, T* y, const int64_t* geom,      \
                                     int64_t nthreads) {                                          \
    adder_fwd<T>(xpad, w, y, conv_geom(geom), nthreads);                                          \
    return 0;                                                                                     \
  }                                                                                               \
  extern "C" int saa_adder_gx_##SUF(const T* gy, const T* w, const T* x, T* gx,                  \
                                    const int64_t* geom, int64_t nthreads) {                      \
    adder_gx<T>(gy, w, x, gx, conv_geom(geom), nthreads);                                         \
    return 0;                                                                                     \
  }                                                                                               \
  extern "C" int saa_adder_dw_fwd_##SUF(const T* x, const T* w, T* y, const int64_t* geom,       \
                                        int64_t nthreads) {                                       \
    const DwGeom d{geom[0], geom[1], geom[2],  geom[3],  geom[4],  geom[5],  geom[6], geom[7],   \
                   geom[8], geom[9], geom[10], geom[11], geom[12], geom[13], geom[14]};           \
    adder_dw_fwd<T>(x, w, y, d, nthreads);                                                        \
    return 0;                                                                                     \
  }                                                                                               \
  extern "C" int saa_adder_dw_bwd_##SUF(const T* x, const T* w, const T* gy, T* gx,              \
                                        double* wstat, const int64_t* geom, int64_t nthreads) {   \
    const DwGeom d{geom[0], geom[1], geom[2],  geom[3],  geom[4],  geom[5],  geom[6], geom[7],   \
                   geom[8], geom[9], geom[10], geom[11], geom[12], geom[13], geom[14]};           \
    adder_dw_bwd<T>(x, w, gy, gx, wstat, d, nthreads);                                            \
    return 0;                                                                                     \
  }

SAA_EXPORT(float, f32)
SAA_EXPORT(double, f64)

// ABI version checked by the loader, bumped whenever a signature changes.
extern "C" int saa_abi_version() { return 2; }
