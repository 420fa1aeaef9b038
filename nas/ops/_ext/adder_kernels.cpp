// CPU kernels for the AdderNet operator (nas/ops/adder.py).
//
// Plain C++ with GCC/Clang vector extensions, no torch headers: it compiles in about a second
// with the system compiler and is called through ctypes on raw data pointers. The loader
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
template <typename V> static inline V vmin(V a, V b) { return a < b ? a : b; }  // -> vminps
template <typename V> static inline V vmax(V a, V b) { return a > b ? a : b; }  // -> vmaxps

// Register tiles. Forward: OT weight rows x PV vectors of positions in accumulators.
// Input gradient: KT rows of x x PV vectors, plus the x values themselves (2x registers).
#if SAA_VBYTES == 64
constexpr int FWD_OT = 8, FWD_PV = 2, GX_KT = 4, GX_PV = 2;  // 32 zmm registers
#else
constexpr int FWD_OT = 4, FWD_PV = 2, GX_KT = 2, GX_PV = 2;  // 16 ymm/xmm registers
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
// Dense forward. Shapes per (sample n, group g): W [O, K], X [K, P], Y [O, P]; strides given in
// elements so that unfolded convolutions ([N, G*K, P]) and linears (X = x^T) share the code.
template <typename T>
static void fwd_tile(const T* __restrict wp, const T* __restrict xp, int64_t K, T* __restrict out) {
  using V = typename Vec<T>::v;
  constexpr int NV = Vec<T>::N, PT = FWD_PV * NV;
  V acc[FWD_OT][FWD_PV];
  for (int i = 0; i < FWD_OT; ++i)
    for (int j = 0; j < FWD_PV; ++j) acc[i][j] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V xv[FWD_PV];
    for (int j = 0; j < FWD_PV; ++j) xv[j] = loadu<V>(xp + k * PT + j * NV);
    for (int i = 0; i < FWD_OT; ++i) {
      const V wb = V{} + wp[k * FWD_OT + i];
      for (int j = 0; j < FWD_PV; ++j) acc[i][j] += Vec<T>::abs(xv[j] - wb);
    }
  }
  for (int i = 0; i < FWD_OT; ++i)
    for (int j = 0; j < FWD_PV; ++j) storeu(out + i * PT + j * NV, -acc[i][j]);
}

template <typename T>
static void adder_fwd(const T* x, const T* w, T* y, int64_t N, int64_t G, int64_t O, int64_t K,
                      int64_t P, int64_t sxn, int64_t sxk, int64_t sxp, int64_t syn, int64_t syo,
                      int64_t syp, int64_t nthreads) {
  constexpr int PT = FWD_PV * Vec<T>::N, OT = FWD_OT;
  const int64_t otiles = (O + OT - 1) / OT, panels = (P + PT - 1) / PT;
  // Weights packed once as [G][otile][K][OT] (rows past O are zero and their outputs dropped),
  // so the tile loop reads them sequentially.
  std::vector<T> wpack(G * otiles * K * OT, T(0));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t k = 0; k < K; ++k)
        wpack[((g * otiles + o / OT) * K + k) * OT + o % OT] = w[(g * O + o) * K + k];
  parallel_ranges(N * G * panels, nthreads, [&](int64_t, int64_t begin, int64_t end) {
    // Per-thread buffers: one X panel [K][PT] (zero-padded past P) and one output tile.
    std::vector<T> xpack(K * PT), tile(OT * PT);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (G * panels), g = (item / panels) % G, p0 = (item % panels) * PT;
      const int64_t pn = std::min<int64_t>(PT, P - p0);
      const T* xs = x + n * sxn + g * K * sxk + p0 * sxp;
      for (int64_t k = 0; k < K; ++k) {
        T* dst = xpack.data() + k * PT;
        if (sxp == 1 && pn == PT) {
          std::memcpy(dst, xs + k * sxk, PT * sizeof(T));
        } else {
          for (int64_t j = 0; j < pn; ++j) dst[j] = xs[k * sxk + j * sxp];
          for (int64_t j = pn; j < PT; ++j) dst[j] = T(0);
        }
      }
      for (int64_t ot = 0; ot < otiles; ++ot) {
        fwd_tile<T>(wpack.data() + (g * otiles + ot) * K * OT, xpack.data(), K, tile.data());
        const int64_t on = std::min<int64_t>(OT, O - ot * OT);
        T* ys = y + n * syn + (g * O + ot * OT) * syo + p0 * syp;
        for (int64_t i = 0; i < on; ++i) {
          if (syp == 1) {
            std::memcpy(ys + i * syo, tile.data() + i * PT, pn * sizeof(T));
          } else {
            for (int64_t j = 0; j < pn; ++j) ys[i * syo + j * syp] = tile[i * PT + j];
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Dense input gradient (AdderNet's HardTanh-clipped gradient):
//   gx[k, p] = sum_o gy[o, p] * clamp(w[o, k] - x[k, p], -1, 1)
template <typename T>
static void gx_tile(const T* __restrict wp, const T* __restrict gp, const T* __restrict xp,
                    int64_t O, T* __restrict out) {
  using V = typename Vec<T>::v;
  constexpr int NV = Vec<T>::N, PT = GX_PV * NV;
  V acc[GX_KT][GX_PV], xv[GX_KT][GX_PV];
  const V one = V{} + T(1), mone = V{} - T(1);
  for (int i = 0; i < GX_KT; ++i)
    for (int j = 0; j < GX_PV; ++j) {
      acc[i][j] = V{};
      xv[i][j] = loadu<V>(xp + i * PT + j * NV);
    }
  for (int64_t o = 0; o < O; ++o) {
    V gv[GX_PV];
    for (int j = 0; j < GX_PV; ++j) gv[j] = loadu<V>(gp + o * PT + j * NV);
    for (int i = 0; i < GX_KT; ++i) {
      const V wb = V{} + wp[o * GX_KT + i];
      for (int j = 0; j < GX_PV; ++j) acc[i][j] += gv[j] * vmin(vmax(wb - xv[i][j], mone), one);
    }
  }
  for (int i = 0; i < GX_KT; ++i)
    for (int j = 0; j < GX_PV; ++j) storeu(out + i * PT + j * NV, acc[i][j]);
}

template <typename T>
static void adder_gx(const T* gy, const T* w, const T* x, T* gx, int64_t N, int64_t G, int64_t O,
                     int64_t K, int64_t P, int64_t sgn, int64_t sgo, int64_t sgp, int64_t sxn,
                     int64_t sxk, int64_t sxp, int64_t sdn, int64_t sdk, int64_t sdp,
                     int64_t nthreads) {
  constexpr int PT = GX_PV * Vec<T>::N, KT = GX_KT;
  const int64_t ktiles = (K + KT - 1) / KT, panels = (P + PT - 1) / PT;
  // Weights packed as [G][ktile][O][KT] (columns past K are zero; their outputs are dropped).
  std::vector<T> wpack(G * ktiles * O * KT, T(0));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t k = 0; k < K; ++k)
        wpack[((g * ktiles + k / KT) * O + o) * KT + k % KT] = w[(g * O + o) * K + k];
  parallel_ranges(N * G * panels, nthreads, [&](int64_t, int64_t begin, int64_t end) {
    // Per-thread panels of gy [O][PT] and x [ktiles*KT][PT]; zero padding past P gives zero
    // gradient contributions, padding past K is dropped.
    std::vector<T> gpack(O * PT), xpack(ktiles * KT * PT, T(0)), tile(KT * PT);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (G * panels), g = (item / panels) % G, p0 = (item % panels) * PT;
      const int64_t pn = std::min<int64_t>(PT, P - p0);
      const T* gs = gy + n * sgn + g * O * sgo + p0 * sgp;
      const T* xs = x + n * sxn + g * K * sxk + p0 * sxp;
      for (int64_t o = 0; o < O; ++o) {
        T* dst = gpack.data() + o * PT;
        for (int64_t j = 0; j < pn; ++j) dst[j] = gs[o * sgo + j * sgp];
        for (int64_t j = pn; j < PT; ++j) dst[j] = T(0);
      }
      for (int64_t k = 0; k < K; ++k) {
        T* dst = xpack.data() + k * PT;
        for (int64_t j = 0; j < pn; ++j) dst[j] = xs[k * sxk + j * sxp];
        for (int64_t j = pn; j < PT; ++j) dst[j] = T(0);
      }
      for (int64_t kt = 0; kt < ktiles; ++kt) {
        gx_tile<T>(wpack.data() + (g * ktiles + kt) * O * KT, gpack.data(),
                   xpack.data() + kt * KT * PT, O, tile.data());
        const int64_t kn = std::min<int64_t>(KT, K - kt * KT);
        T* ds = gx + n * sdn + (g * K + kt * KT) * sdk + p0 * sdp;
        for (int64_t i = 0; i < kn; ++i)
          for (int64_t j = 0; j < pn; ++j) ds[i * sdk + j * sdp] = tile[i * PT + j];
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Depthwise (each output channel o reads input channel o / M), directly on the image: a padded
// copy of one input plane per (n, c) in a per-thread buffer, then row-wise sliding windows that
// the compiler vectorises along the output row.
struct DwGeom {
  int64_t N, C, H, W, M, KH, KW, sh, sw, ph, pw, dh, dw, Ho, Wo;
  int64_t Hp() const { return std::max(H + 2 * ph, (Ho - 1) * sh + (KH - 1) * dh + 1); }
  int64_t Wp() const { return std::max(W + 2 * pw, (Wo - 1) * sw + (KW - 1) * dw + 1); }
};

template <typename T> static void pad_plane(const T* src, const DwGeom& d, T* dst) {
  const int64_t Wp = d.Wp();
  std::fill(dst, dst + d.Hp() * Wp, T(0));
  for (int64_t i = 0; i < d.H; ++i) std::memcpy(dst + (i + d.ph) * Wp + d.pw, src + i * d.W, d.W * sizeof(T));
}

template <typename T>
static void adder_dw_fwd(const T* x, const T* w, T* y, const DwGeom& d, int64_t nthreads) {
  parallel_ranges(d.N * d.C, nthreads, [&](int64_t, int64_t begin, int64_t end) {
    const int64_t Wp = d.Wp();
    std::vector<T> xp(d.Hp() * Wp), acc(d.Wo);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / d.C, c = item % d.C;
      pad_plane(x + (n * d.C + c) * d.H * d.W, d, xp.data());
      for (int64_t m = 0; m < d.M; ++m) {
        const int64_t o = c * d.M + m;
        const T* wo = w + o * d.KH * d.KW;
        T* yo = y + (n * d.C * d.M + o) * d.Ho * d.Wo;
        for (int64_t i = 0; i < d.Ho; ++i) {
          T* __restrict a = acc.data();
          std::fill(a, a + d.Wo, T(0));
          for (int64_t kh = 0; kh < d.KH; ++kh)
            for (int64_t kw = 0; kw < d.KW; ++kw) {
              const T wv = wo[kh * d.KW + kw];
              const T* __restrict xr = xp.data() + (i * d.sh + kh * d.dh) * Wp + kw * d.dw;
              if (d.sw == 1) {
                for (int64_t j = 0; j < d.Wo; ++j) a[j] += std::fabs(xr[j] - wv);
              } else {
                for (int64_t j = 0; j < d.Wo; ++j) a[j] += std::fabs(xr[j * d.sw] - wv);
              }
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
// partials, reduced in thread order (deterministic for a given thread count).
template <typename T>
static void adder_dw_bwd(const T* x, const T* w, const T* gy, T* gx, double* wstat, const DwGeom& d,
                         int64_t nthreads) {
  const int64_t KK = d.KH * d.KW, O = d.C * d.M, S = KK + 1;
  nthreads = std::max<int64_t>(1, std::min<int64_t>(nthreads, d.N * d.C));
  std::vector<double> partial(nthreads * O * S, 0.0);
  parallel_ranges(d.N * d.C, nthreads, [&](int64_t t, int64_t begin, int64_t end) {
    const int64_t Wp = d.Wp(), Hp = d.Hp();
    std::vector<T> xp(Hp * Wp), gxp(Hp * Wp), srow(KK * d.Wo), grow(d.Wo);
    double* part = partial.data() + t * O * S;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / d.C, c = item % d.C;
      pad_plane(x + (n * d.C + c) * d.H * d.W, d, xp.data());
      std::fill(gxp.begin(), gxp.end(), T(0));
      for (int64_t m = 0; m < d.M; ++m) {
        const int64_t o = c * d.M + m;
        const T* wo = w + o * KK;
        const T* go = gy + (n * O + o) * d.Ho * d.Wo;
        // Per-position partial sums along the output row keep the inner loops reduction-free
        // (vectorisable without -ffast-math); they are reduced once per plane in double.
        std::fill(srow.begin(), srow.end(), T(0));
        std::fill(grow.begin(), grow.end(), T(0));
        for (int64_t i = 0; i < d.Ho; ++i) {
          const T* __restrict gr = go + i * d.Wo;
          for (int64_t j = 0; j < d.Wo; ++j) grow[j] += gr[j];
          for (int64_t kh = 0; kh < d.KH; ++kh)
            for (int64_t kw = 0; kw < d.KW; ++kw) {
              const T wv = wo[kh * d.KW + kw];
              const int64_t off = (i * d.sh + kh * d.dh) * Wp + kw * d.dw;
              const T* __restrict xr = xp.data() + off;
              T* __restrict gxr = gxp.data() + off;
              T* __restrict sr = srow.data() + (kh * d.KW + kw) * d.Wo;
              if (d.sw == 1) {
                for (int64_t j = 0; j < d.Wo; ++j) {
                  sr[j] += gr[j] * xr[j];
                  if (gx) gxr[j] += gr[j] * std::min(std::max(wv - xr[j], T(-1)), T(1));
                }
              } else {
                for (int64_t j = 0; j < d.Wo; ++j) {
                  sr[j] += gr[j] * xr[j * d.sw];
                  if (gx) gxr[j * d.sw] += gr[j] * std::min(std::max(wv - xr[j * d.sw], T(-1)), T(1));
                }
              }
            }
        }
        for (int64_t q = 0; q < KK; ++q) {
          double s = 0.0;
          for (int64_t j = 0; j < d.Wo; ++j) s += srow[q * d.Wo + j];
          part[o * S + q] += s;
        }
        double gs = 0.0;
        for (int64_t j = 0; j < d.Wo; ++j) gs += grow[j];
        part[o * S + KK] += gs;
      }
      if (gx) {
        T* gxo = gx + (n * d.C + c) * d.H * d.W;
        for (int64_t i = 0; i < d.H; ++i)
          std::memcpy(gxo + i * d.W, gxp.data() + (i + d.ph) * Wp + d.pw, d.W * sizeof(T));
      }
    }
  });
  for (int64_t q = 0; q < O * S; ++q) {
    double s = 0.0;
    for (int64_t t = 0; t < nthreads; ++t) s += partial[t * O * S + q];
    wstat[q] = s;
  }
}

}  // namespace

#define SAA_EXPORT(T, SUF)                                                                         \
  extern "C" int saa_adder_fwd_##SUF(const T* x, const T* w, T* y, int64_t N, int64_t G,          \
                                     int64_t O, int64_t K, int64_t P, int64_t sxn, int64_t sxk,   \
                                     int64_t sxp, int64_t syn, int64_t syo, int64_t syp,          \
                                     int64_t nthreads) {                                          \
    adder_fwd<T>(x, w, y, N, G, O, K, P, sxn, sxk, sxp, syn, syo, syp, nthreads);                \
    return 0;                                                                                     \
  }                                                                                               \
  extern "C" int saa_adder_gx_##SUF(const T* gy, const T* w, const T* x, T* gx, int64_t N,       \
                                    int64_t G, int64_t O, int64_t K, int64_t P, int64_t sgn,      \
                                    int64_t sgo, int64_t sgp, int64_t sxn, int64_t sxk,           \
                                    int64_t sxp, int64_t sdn, int64_t sdk, int64_t sdp,           \
                                    int64_t nthreads) {                                           \
    adder_gx<T>(gy, w, x, gx, N, G, O, K, P, sgn, sgo, sgp, sxn, sxk, sxp, sdn, sdk, sdp,        \
                nthreads);                                                                        \
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
extern "C" int saa_abi_version() { return 1; }
