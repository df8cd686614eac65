// facegs fused CPU compositing kernel: forward and backward of the tile loop of
// facegs/splat/torch_backend.py (gsplat 1.5.3's rules), registered as torch.ops.facegs_splat.*.
//
// Layout and rules (see facegs/splat/cpu_kernel.py for the Python side):
//   means2d [I*N, 2], conics [I*N, 3] (a, b, c), opacities [I*N], colors [I*N, D], all float32;
//   flatten_ids [M] int32 (sorted by image, tile, depth), isect_offsets [I*th*tw] int32.
//   Pixel centre (x + 0.5, y + 0.5); d = mean2d - pixel; sigma = 0.5 (a dx^2 + c dy^2) + b dx dy;
//   raw = opacity exp(-sigma) (evaluated as exp(log opacity - sigma), as the torch path);
//   alpha = min(0.999, raw), or 0 unless raw > 1/255; front to back, stop before the Gaussian that
//   takes T to <= 1e-4.
//
// Vectorisation: inside a tile the pixels are the SIMD axis (Gaussian-outer, pixel-inner: alpha,
// transmittance and the per-pixel gradient terms of 16 pixels at a time, in GCC/Clang vector
// extensions, so the same source compiles to AVX-512, AVX2, SSE or NEON); exp is a Cephes-style
// polynomial (max error ~2 ulp). The D-channel work runs only at the pixels a Gaussian reached
// (about 1 pixel-Gaussian pair in 6 on a face scene), over pixel-major rows [P][D].
//
// Threads: tiles are independent; each thread takes the next tile (largest first) from an atomic
// counter, and every output element is written by exactly one tile, so results do not depend on
// the number of threads or the schedule. The backward writes per-intersection gradients and sums
// them per Gaussian in intersection order (threads own disjoint Gaussian ranges): deterministic.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <tuple>
#include <vector>

namespace {

constexpr float kAlphaThreshold = 1.0f / 255.0f;
constexpr float kMaxAlpha = 0.999f;
constexpr float kTransmittanceStop = 1e-4f;
// raw = exp(max(log(opacity) - sigma, -30)), as the torch path: far below 1/255, and it keeps the
// products out of the denormal range (denormal arithmetic is ~100x slower on x86 CPUs).
constexpr float kMinExponent = -30.0f;
constexpr int64_t kPrefetchAhead = 12;  // intersections

// ---- SIMD over pixels: GCC/Clang vector extensions (SSE, AVX2, AVX-512 or NEON, as compiled) ----
#if defined(__AVX512F__)
constexpr int64_t L = 16;  // lanes (pixels) per vector, the machine's native width; P is padded to a multiple
#elif defined(__AVX__)
constexpr int64_t L = 8;
#else
constexpr int64_t L = 4;  // SSE, NEON
#endif
typedef float V __attribute__((vector_size(4 * L)));
typedef int32_t VI __attribute__((vector_size(4 * L)));

static inline V vld(const float* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
static inline VI vldi(const int32_t* p) { VI v; std::memcpy(&v, p, sizeof v); return v; }
static inline void vst(float* p, V v) { std::memcpy(p, &v, sizeof v); }
static inline void vsti(int32_t* p, VI v) { std::memcpy(p, &v, sizeof v); }
static inline V vset(float x) { return V{} + x; }
static inline VI vseti(int32_t x) { return VI{} + x; }
static inline V vsel(VI m, V a, V b) { return (V)(((VI)a & m) | ((VI)b & ~m)); }  // m ? a : b
static inline VI vseli(VI m, VI a, VI b) { return (a & m) | (b & ~m); }
static inline V vmax(V a, V b) { return vsel(a > b, a, b); }
static inline V vmin(V a, V b) { return vsel(a < b, a, b); }
static inline float hsum(V v) {  // fixed order: a pairwise tree over the lanes
  float a[L];
  std::memcpy(a, &v, sizeof v);
  for (int64_t w = L / 2; w >= 1; w /= 2) {
    for (int64_t i = 0; i < w; ++i) a[i] += a[i + w];
  }
  return a[0];
}
static inline bool vany(VI m) {
  int32_t r = 0;
  for (int64_t i = 0; i < L; ++i) r |= m[i];
  return r != 0;
}
static inline bool vall(VI m) {
  int32_t r = -1;
  for (int64_t i = 0; i < L; ++i) r &= m[i];
  return r != 0;
}

// exp(x), Cephes expf: x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial, 2^n from the exponent
// bits; inputs clamped to [-87, 88] (normal range). Max error ~2 ulp (the torch path's exp: ~1 ulp).
static inline V vexp(V x) {
  x = vmin(vmax(x, vset(-87.0f)), vset(88.0f));
  const V n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2): 1.5 * 2^23
  V r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const V z = r * r;
  V y = vset(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  return y * (V)bits;
}

// raw = exp(max(log opacity - sigma, -30)) and alpha = min(raw, 0.999) where raw > 1/255 (else 0).
struct Splat {
  float mx, my, a, b, c, log_op;
  inline void alpha(V px, V py, V& dx, V& dy, V& raw, V& alpha, VI& keep) const {
    dx = mx - px, dy = my - py;
    const V sigma = 0.5f * (a * dx * dx + c * dy * dy) + b * dx * dy;
    raw = vexp(vmax(log_op - sigma, vset(kMinExponent)));
    keep = raw > kAlphaThreshold;
    alpha = vsel(keep, vmin(raw, vset(kMaxAlpha)), vset(0.0f));
  }
};

struct Scene {
  const Splat* splats;  // [I*N] packed per projected Gaussian (one cache line holds 2.7 of them)
  const float* opac;
  const float* colors;
  const int32_t* fid;
  const int32_t* offsets;
  int64_t n_images, D, width, height, ts, tw, th, M;
  int64_t P() const { return ts * ts; }
  int64_t Pp() const { return (P() + L - 1) / L * L; }
  int64_t n_tiles() const { return n_images * tw * th; }
  int64_t begin(int64_t t) const { return offsets[t]; }
  int64_t end(int64_t t) const { return t + 1 < n_tiles() ? offsets[t + 1] : M; }
  // Gaussians are visited in depth order, i.e. at random addresses: fetch a later one's data early.
  void prefetch(int64_t k, int64_t end) const {
    if (k >= end) return;
    const int64_t g = fid[k];
    __builtin_prefetch(splats + g);
    for (int64_t d = 0; d < D; d += 16) __builtin_prefetch(colors + g * D + d);
    __builtin_prefetch(colors + g * D + D - 1);
  }
};

// Splats from means2d [I*N, 2], conics [I*N, 3], opacities [I*N].
std::vector<Splat> pack_splats(const float* means2d, const float* conics, const float* opac, int64_t n) {
  std::vector<Splat> out(n);
  at::parallel_for(0, n, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) {
      out[g] = Splat{means2d[2 * g], means2d[2 * g + 1], conics[3 * g], conics[3 * g + 1], conics[3 * g + 2],
                     std::log(std::max(opac[g], 1e-30f))};
    }
  });
  return out;
}

// Tiles ordered by decreasing number of intersections (ties: tile index), for a balanced schedule.
std::vector<int64_t> tile_order(const Scene& s) {
  std::vector<int64_t> order(s.n_tiles());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return s.end(a) - s.begin(a) > s.end(b) - s.begin(b);
  });
  return order;
}

// Runs fn(tile, buffers) for every tile on at::get_num_threads() threads (dynamic schedule).
template <class Buffers, class Fn>
void for_each_tile(const Scene& s, const std::vector<int64_t>& order, Fn fn) {
  std::atomic<int64_t> next{0};
  const int64_t n = static_cast<int64_t>(order.size());
  const int64_t n_workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n));
  at::parallel_for(0, n_workers, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      Buffers buf(s);
      for (int64_t i; (i = next.fetch_add(1)) < n;) fn(order[i], buf);
    }
  });
}

// Pixel centres of one tile, padded to Pp; inside[p] = -1 for pixels in the image, else 0.
struct TilePixels {
  int64_t image, x0, y0;
  void init(const Scene& s, int64_t t, float* px, float* py, int32_t* inside) {
    const int64_t per_image = s.tw * s.th, local = t % per_image;
    image = t / per_image;
    x0 = (local % s.tw) * s.ts;
    y0 = (local / s.tw) * s.ts;
    for (int64_t p = 0; p < s.Pp(); ++p) {
      const int64_t x = x0 + p % s.ts, y = y0 + p / s.ts;
      px[p] = static_cast<float>(x) + 0.5f;
      py[p] = static_cast<float>(y) + 0.5f;
      inside[p] = (p < s.P() && x < s.width && y < s.height) ? -1 : 0;
    }
  }
  int64_t pixel(const Scene& s, int64_t p) const { return (image * s.height + y0 + p / s.ts) * s.width + x0 + p % s.ts; }
};

// bits[p / 64] bit p % 64 set where w[p] != 0 (the pixels a Gaussian reached); P a multiple of L.
static inline void nonzero_bits(const float* w, int64_t P, uint64_t* bits) {
  for (int64_t i = 0; i < (P + 63) / 64; ++i) bits[i] = 0;
  int64_t p = 0;
#if defined(__AVX512F__)
  for (; p + 16 <= P; p += 16) {
    const __mmask16 m = _mm512_cmp_ps_mask(_mm512_loadu_ps(w + p), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    bits[p >> 6] |= static_cast<uint64_t>(m) << (p & 63);
  }
#elif defined(__AVX2__)
  for (; p + 8 <= P; p += 8) {
    const int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(w + p), _mm256_setzero_ps(), _CMP_NEQ_UQ));
    bits[p >> 6] |= static_cast<uint64_t>(m) << (p & 63);
  }
#endif
  for (; p < P; ++p) bits[p >> 6] |= static_cast<uint64_t>(w[p] != 0.0f) << (p & 63);
}

// Calls fn(p) for every set bit p, in increasing order.
template <class Fn>
static inline void for_each_bit(const uint64_t* bits, int64_t P, Fn fn) {
  for (int64_t i = 0; i < (P + 63) / 64; ++i) {
    for (uint64_t m = bits[i]; m; m &= m - 1) fn(i * 64 + __builtin_ctzll(m));
  }
}

struct FwdBuffers {
  std::vector<float> px, py, T, w, acc;
  std::vector<int32_t> inside, done, last;
  std::vector<uint64_t> bits;
  explicit FwdBuffers(const Scene& s) {
    const int64_t Pp = s.Pp();
    px.resize(Pp), py.resize(Pp), T.resize(Pp), w.resize(Pp), acc.resize(Pp * s.D);
    inside.resize(Pp), done.resize(Pp), last.resize(Pp), bits.resize((Pp + 63) / 64);
  }
};

void forward_tile(const Scene& s, int64_t t, FwdBuffers& b, float* out, float* out_T, int32_t* out_last) {
  const int64_t Pp = s.Pp(), D = s.D;
  float *px = b.px.data(), *py = b.py.data(), *T = b.T.data(), *w = b.w.data(), *acc = b.acc.data();
  int32_t *inside = b.inside.data(), *done = b.done.data(), *last = b.last.data();
  TilePixels tp;
  tp.init(s, t, px, py, inside);
  for (int64_t p = 0; p < Pp; ++p) T[p] = 1.0f, done[p] = ~inside[p], last[p] = 0;
  std::fill(b.acc.begin(), b.acc.end(), 0.0f);  // pixel-major [P][D]
  const int64_t k0 = s.begin(t), k1 = s.end(t);
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t g = s.fid[k];
    s.prefetch(k + kPrefetchAhead, k1);
    const Splat sp = s.splats[g];
    VI any = vseti(0), all_done = vseti(-1);
    for (int64_t o = 0; o < Pp; o += L) {
      V dx, dy, raw, alpha;
      VI keep;
      sp.alpha(vld(px + o), vld(py + o), dx, dy, raw, alpha, keep);
      const V Tc = vld(T + o);
      VI dn = vldi(done + o);
      const V next_T = Tc * (1.0f - alpha);
      const VI contrib = ~dn & keep;
      const VI stop = contrib & (next_T <= kTransmittanceStop);
      const VI use = contrib & ~stop;
      dn |= stop;
      vsti(done + o, dn);
      vst(w + o, vsel(use, alpha * Tc, vset(0.0f)));
      vst(T + o, vsel(use, next_T, Tc));
      vsti(last + o, vseli(use, vseti(static_cast<int32_t>(k + 1)), vldi(last + o)));
      any |= use;
      all_done &= dn;
    }
    if (vany(any)) {  // the D channels, only at the pixels this Gaussian reached (about 1 in 6 on a face)
      const float* col = s.colors + g * D;
      nonzero_bits(w, Pp, b.bits.data());
      for_each_bit(b.bits.data(), Pp, [&](int64_t p) {
        const float wp = w[p];
        float* a = acc + p * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) a[d] += wp * col[d];
      });
    }
    if (vall(all_done)) break;
  }
  for (int64_t p = 0; p < Pp; ++p) {
    if (!inside[p]) continue;
    const int64_t pix = tp.pixel(s, p);
    std::copy(acc + p * D, acc + (p + 1) * D, out + pix * D);
    out_T[pix] = T[p];
    out_last[pix] = last[p];
  }
}

struct BwdBuffers {
  std::vector<float> px, py, T, cum, base, w, gl, gp;
  std::vector<int32_t> inside, last;
  std::vector<uint64_t> bits;
  explicit BwdBuffers(const Scene& s) {
    const int64_t Pp = s.Pp();
    for (auto* v : {&px, &py, &T, &cum, &base, &w}) v->resize(Pp);
    gl.resize(Pp * s.D), gp.resize(Pp * s.D);
    inside.resize(Pp), last.resize(Pp), bits.resize((Pp + 63) / 64);
  }
};

// Per-intersection gradients of one tile: vgeo [M, 6] (mean x, mean y, a, b, c, opacity), vcol [M, D].
// Front to back, with S_k + T_final dL/dT = base - (inclusive prefix sum of w G), base = acc . dL/dacc
// + T_final dL/dT, as the torch path. Only channels [0, Dg) send gradient to the geometry (G, base);
// every channel gets its colour gradient. One pass over the pixels per Gaussian (G = colour . dL/dacc
// from a channel-major copy of the gradient, [Dg][P]); the colour gradient sum_p w_p dL/dacc_p runs
// over the pixels the Gaussian reached only (pixel-major rows, [P][D]).
void backward_tile(const Scene& s, int64_t t, BwdBuffers& b, const float* acc_img, const float* T_img,
                   const int32_t* last_img, const float* g_acc, const float* g_T, int64_t Dg, float* vgeo,
                   float* vcol) {
  const int64_t Pp = s.Pp(), D = s.D;
  float *px = b.px.data(), *py = b.py.data(), *T = b.T.data(), *cum = b.cum.data(), *base = b.base.data();
  float *w = b.w.data(), *gl = b.gl.data(), *gp = b.gp.data();
  int32_t *inside = b.inside.data(), *last = b.last.data();
  TilePixels tp;
  tp.init(s, t, px, py, inside);
  const int64_t k0 = s.begin(t), k1 = s.end(t);
  int64_t kmax = k0;
  for (int64_t p = 0; p < Pp; ++p) {
    T[p] = 1.0f, cum[p] = 0.0f, base[p] = 0.0f, last[p] = 0;
    for (int64_t d = 0; d < D; ++d) gp[p * D + d] = 0.0f, gl[d * Pp + p] = 0.0f;
    if (!inside[p]) continue;
    const int64_t pix = tp.pixel(s, p);
    float bs = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      const float gv = g_acc[pix * D + d];
      gp[p * D + d] = gv, gl[d * Pp + p] = gv;
      bs += d < Dg ? acc_img[pix * D + d] * gv : 0.0f;
    }
    base[p] = bs + T_img[pix] * g_T[pix];
    last[p] = last_img[pix];
    kmax = std::max<int64_t>(kmax, last[p]);
  }
  for (int64_t k = k0; k < k1; ++k) {
    float* vg = vgeo + k * 6;
    float* vc = vcol + k * D;
    std::fill(vg, vg + 6, 0.0f);
    std::fill(vc, vc + D, 0.0f);
    if (k >= kmax) continue;
    const int64_t g = s.fid[k];
    s.prefetch(k + kPrefetchAhead, k1);
    const Splat sp = s.splats[g];
    const float* col = s.colors + g * D;
    const VI kk = vseti(static_cast<int32_t>(k));
    VI any = vseti(0);
    V s_op{}, s_dx2{}, s_dy2{}, s_dxdy{}, s_dx{}, s_dy{};
    for (int64_t o = 0; o < Pp; o += L) {
      V dx, dy, raw, alpha;
      VI keep;
      sp.alpha(vld(px + o), vld(py + o), dx, dy, raw, alpha, keep);
      const VI u = keep & (kk < vldi(last + o));
      if (!vany(u)) {
        vst(w + o, vset(0.0f));
        continue;
      }
      any |= u;
      const V a = vsel(u, alpha, vset(0.0f)), Tc = vld(T + o), one_minus = 1.0f - a;
      V G{};
      for (int64_t d = 0; d < Dg; ++d) G += col[d] * vld(gl + d * Pp + o);
      const V wv = a * Tc;
      vst(w + o, wv);
      const V cm = vld(cum + o) + wv * G;
      vst(cum + o, cm);
      // dL/dalpha = T G - (S + T_final dL/dT) / (1 - alpha)
      const V v_alpha = Tc * G + (cm - vld(base + o)) / one_minus;
      const V v_e = vsel(u & (raw <= kMaxAlpha), v_alpha * a, vset(0.0f));  // dL/d log(raw)
      vst(T + o, vsel(u, Tc * one_minus, Tc));
      s_op += v_e;
      s_dx2 += v_e * dx * dx;
      s_dy2 += v_e * dy * dy;
      s_dxdy += v_e * dx * dy;
      s_dx += v_e * dx;
      s_dy += v_e * dy;
    }
    if (!vany(any)) continue;
    nonzero_bits(w, Pp, b.bits.data());
    for_each_bit(b.bits.data(), Pp, [&](int64_t p) {
      const float* gr = gp + p * D;
      const float wp = w[p];
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) vc[d] += wp * gr[d];
    });
    // log(raw) = log(op) - sigma: dL/dsigma = -v_e, dL/dop = v_e / op.
    const float sx = hsum(s_dx), sy = hsum(s_dy);
    vg[0] = -(sp.a * sx + sp.b * sy);
    vg[1] = -(sp.c * sy + sp.b * sx);
    vg[2] = -0.5f * hsum(s_dx2);
    vg[3] = -hsum(s_dxdy);
    vg[4] = -0.5f * hsum(s_dy2);
    vg[5] = hsum(s_op) / s.opac[g];
  }
}

// out[fid[m]] += v[m] for every intersection m, in order of m (threads own disjoint Gaussian ranges).
void scatter_rows(const float* v, const int32_t* fid, int64_t M, int64_t width, float* out, int64_t n_rows) {
  const int64_t n_workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_rows / 256 + 1));
  at::parallel_for(0, n_workers, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t w = lo; w < hi; ++w) {
      const int64_t r0 = n_rows * w / n_workers, r1 = n_rows * (w + 1) / n_workers;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t r = fid[m];
        if (r < r0 || r >= r1) continue;
        float* o = out + r * width;
        const float* x = v + m * width;
        for (int64_t j = 0; j < width; ++j) o[j] += x[j];
      }
    }
  });
}

void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac,
                  const at::Tensor& colors, const at::Tensor& fid, const at::Tensor& offsets) {
  for (const at::Tensor* x : {&means2d, &conics, &opac, &colors}) {
    TORCH_CHECK(x->device().is_cpu() && x->scalar_type() == at::kFloat && x->is_contiguous(),
                "facegs_splat: float inputs must be contiguous float32 CPU tensors");
  }
  for (const at::Tensor* x : {&fid, &offsets}) {
    TORCH_CHECK(x->device().is_cpu() && x->scalar_type() == at::kInt && x->is_contiguous(),
                "facegs_splat: flatten_ids and isect_offsets must be contiguous int32 CPU tensors");
  }
  TORCH_CHECK(means2d.dim() == 3 && means2d.size(2) == 2, "means2d must be [I, N, 2]");
  const int64_t I = means2d.size(0), N = means2d.size(1);
  TORCH_CHECK(conics.sizes() == at::IntArrayRef({I, N, 3}), "conics must be [I, N, 3]");
  TORCH_CHECK(opac.sizes() == at::IntArrayRef({I, N}), "opacities must be [I, N]");
  TORCH_CHECK(colors.dim() == 3 && colors.size(0) == I && colors.size(1) == N, "colors must be [I, N, D]");
  TORCH_CHECK(offsets.dim() == 3 && offsets.size(0) == I, "isect_offsets must be [I, th, tw]");
}

Scene make_scene(const std::vector<Splat>& splats, const at::Tensor& opac, const at::Tensor& colors,
                 const at::Tensor& fid, const at::Tensor& offsets, int64_t width, int64_t height, int64_t tile_size) {
  return Scene{splats.data(), opac.data_ptr<float>(), colors.data_ptr<float>(), fid.data_ptr<int32_t>(),
               offsets.data_ptr<int32_t>(), colors.size(0), colors.size(2), width, height, tile_size,
               offsets.size(2), offsets.size(1), fid.numel()};
}

std::vector<Splat> checked_splats(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac,
                                  const at::Tensor& colors, const at::Tensor& fid, const at::Tensor& offsets,
                                  int64_t tile_size) {
  check_inputs(means2d, conics, opac, colors, fid, offsets);
  TORCH_CHECK(tile_size >= 1 && tile_size <= 64, "tile_size must be in [1, 64]");
  return pack_splats(means2d.data_ptr<float>(), conics.data_ptr<float>(), opac.data_ptr<float>(), opac.numel());
}

// -> (acc [I, H, W, D] (no background), T [I, H, W] final transmittance, last [I, H, W] int32:
//    1 + index of the last composited intersection, 0 if none).
std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_forward(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac, const at::Tensor& colors,
    const at::Tensor& fid, const at::Tensor& offsets, int64_t width, int64_t height, int64_t tile_size) {
  const auto splats = checked_splats(means2d, conics, opac, colors, fid, offsets, tile_size);
  const Scene s = make_scene(splats, opac, colors, fid, offsets, width, height, tile_size);
  auto fopt = means2d.options();
  at::Tensor out = at::empty({s.n_images, height, width, s.D}, fopt);
  at::Tensor out_T = at::empty({s.n_images, height, width}, fopt);
  at::Tensor out_last = at::empty({s.n_images, height, width}, fid.options());
  float* o = out.data_ptr<float>();
  float* oT = out_T.data_ptr<float>();
  int32_t* ol = out_last.data_ptr<int32_t>();
  for_each_tile<FwdBuffers>(s, tile_order(s), [&](int64_t t, FwdBuffers& b) { forward_tile(s, t, b, o, oT, ol); });
  return {out, out_T, out_last};
}

// -> (v_means2d [I, N, 2], v_conics [I, N, 3], v_opacities [I, N], v_colors [I, N, D]); only
//    channels [0, geo_channels) of g_acc reach the geometry (g_T always does).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> composite_backward(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opac, const at::Tensor& colors,
    const at::Tensor& fid, const at::Tensor& offsets, int64_t width, int64_t height, int64_t tile_size,
    const at::Tensor& acc, const at::Tensor& T_final, const at::Tensor& last, const at::Tensor& g_acc,
    const at::Tensor& g_T, int64_t geo_channels) {
  const auto splats = checked_splats(means2d, conics, opac, colors, fid, offsets, tile_size);
  const Scene s = make_scene(splats, opac, colors, fid, offsets, width, height, tile_size);
  const int64_t I = s.n_images, N = means2d.size(1), D = s.D, M = s.M;
  TORCH_CHECK(acc.is_contiguous() && g_acc.is_contiguous() && g_T.is_contiguous() && T_final.is_contiguous() &&
                  last.is_contiguous(),
              "facegs_splat: saved tensors and gradients must be contiguous");
  TORCH_CHECK(g_acc.sizes() == acc.sizes() && g_T.sizes() == T_final.sizes(), "gradient shapes");
  TORCH_CHECK(geo_channels >= 0 && geo_channels <= D, "geo_channels must be in [0, D]");
  auto fopt = means2d.options();
  at::Tensor vgeo = at::empty({M, 6}, fopt), vcol = at::empty({M, D}, fopt);
  const float *a = acc.data_ptr<float>(), *tf = T_final.data_ptr<float>(), *ga = g_acc.data_ptr<float>();
  const float* gt = g_T.data_ptr<float>();
  const int32_t* li = last.data_ptr<int32_t>();
  float *pg = vgeo.data_ptr<float>(), *pc = vcol.data_ptr<float>();
  for_each_tile<BwdBuffers>(s, tile_order(s), [&](int64_t t, BwdBuffers& b) {
    backward_tile(s, t, b, a, tf, li, ga, gt, geo_channels, pg, pc);
  });
  at::Tensor g_geo = at::zeros({I * N, 6}, fopt), g_col = at::zeros({I, N, D}, fopt);
  scatter_rows(pg, s.fid, M, 6, g_geo.data_ptr<float>(), I * N);
  scatter_rows(pc, s.fid, M, D, g_col.data_ptr<float>(), I * N);
  g_geo = g_geo.view({I, N, 6});
  return {g_geo.narrow(2, 0, 2), g_geo.narrow(2, 2, 3), g_geo.select(2, 5), g_col};
}

}  // namespace

#ifndef FACEGS_SPLAT_NS
#define FACEGS_SPLAT_NS facegs_splat  // another namespace lets benchmarks load two builds side by side
#endif

TORCH_LIBRARY(FACEGS_SPLAT_NS, m) {
  m.def("composite_forward(Tensor means2d, Tensor conics, Tensor opacities, Tensor colors, Tensor flatten_ids, "
        "Tensor isect_offsets, int width, int height, int tile_size) -> (Tensor, Tensor, Tensor)");
  m.def("composite_backward(Tensor means2d, Tensor conics, Tensor opacities, Tensor colors, Tensor flatten_ids, "
        "Tensor isect_offsets, int width, int height, int tile_size, Tensor acc, Tensor T_final, Tensor last, "
        "Tensor g_acc, Tensor g_T, int geo_channels) -> (Tensor, Tensor, Tensor, Tensor)");
  m.impl("composite_forward", c10::DispatchKey::CPU, &composite_forward);
  m.impl("composite_backward", c10::DispatchKey::CPU, &composite_backward);
}
