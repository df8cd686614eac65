// facegs fused CPU projection and tile intersection (forward and backward of the projection) for the
// "cpu" backend: the rules of facegs/splat/projection.py and facegs/splat/tiles.py (gsplat 1.5.3's
// EWA projection, unpacked layout), one pass per (camera, Gaussian) instead of ~100 small tensor ops.
//
//   means [N, 3], quats [N, 4] (wxyz, normalised here), scales [N, 3], opacities [N] (radii only),
//   viewmats [C, 4, 4] world-to-camera (no gradient), Ks [C, 3, 3] (no gradient); float32.
//   -> radii [C, N, 2] int32, means2d [C, N, 2], depths [C, N], conics [C, N, 3] (culled: 0 except depth).
//
// Threads: Gaussians are independent (their gradients sum over the cameras in camera order) and
// the intersection lists are filled per tile: the results do not depend on the number of threads.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

constexpr float kAlphaThreshold = 1.0f / 255.0f;
constexpr float kMaxExtend = 3.33f;

struct Camera {
  float R[9], t[3], fx, fy, cx, cy, lim_x_neg, lim_x_pos, lim_y_neg, lim_y_pos;
};

std::vector<Camera> cameras(const at::Tensor& viewmats, const at::Tensor& Ks, int64_t W, int64_t H) {
  const int64_t C = viewmats.size(0);
  const float* v = viewmats.data_ptr<float>();
  const float* k = Ks.data_ptr<float>();
  std::vector<Camera> out(C);
  for (int64_t c = 0; c < C; ++c) {
    Camera& cam = out[c];
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j) cam.R[3 * i + j] = v[16 * c + 4 * i + j];
      cam.t[i] = v[16 * c + 4 * i + 3];
    }
    cam.fx = k[9 * c], cam.fy = k[9 * c + 4], cam.cx = k[9 * c + 2], cam.cy = k[9 * c + 5];
    const float tan_x = 0.5f * W / cam.fx, tan_y = 0.5f * H / cam.fy;
    cam.lim_x_pos = (W - cam.cx) / cam.fx + 0.3f * tan_x;
    cam.lim_x_neg = cam.cx / cam.fx + 0.3f * tan_x;
    cam.lim_y_pos = (H - cam.cy) / cam.fy + 0.3f * tan_y;
    cam.lim_y_neg = cam.cy / cam.fy + 0.3f * tan_y;
  }
  return out;
}

// Unit quaternion (w, x, y, z) -> rotation matrix (row-major), as projection.quat_to_rotmat.
inline void rotmat(const float* q, float* R) {
  const float w = q[0], x = q[1], y = q[2], z = q[3];
  R[0] = 1 - 2 * (y * y + z * z), R[1] = 2 * (x * y - w * z), R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z), R[4] = 1 - 2 * (x * x + z * z), R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y), R[7] = 2 * (y * z + w * x), R[8] = 1 - 2 * (x * x + y * y);
}

// Everything the backward needs about one (camera, Gaussian).
struct Proj {
  float p[3];       // camera-space mean
  float Sc[9];      // camera-space covariance
  float J[6];       // 2x3 Jacobian
  float cov2d[4];   // with eps2d
  float zs, u, v;   // safe depth, clamped x/z and y/z
  bool clamp_x, clamp_y, valid;
  float mean2d[2], conic[3], det;
  float rx, ry;
};

// World covariance of one Gaussian: qn (normalised quaternion), R, M = R diag(s), S = M M^T.
struct Covar {
  float qn[4], qnorm, R[9], M[9], S[9];
  void init(const float* q, const float* s) {
    qnorm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
    for (int i = 0; i < 4; ++i) qn[i] = q[i] / qnorm;
    rotmat(qn, R);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) M[3 * i + j] = R[3 * i + j] * s[j];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        float a = 0;
        for (int k = 0; k < 3; ++k) a += M[3 * i + k] * M[3 * j + k];
        S[3 * i + j] = a;
      }
  }
};

void project_one(const Covar& cv, const float* mean, float opac, const Camera& cam, int64_t W, int64_t H,
                 float near, float far, float eps2d, float radius_clip, Proj& o) {
  const float* R = cam.R;
  for (int i = 0; i < 3; ++i) o.p[i] = R[3 * i] * mean[0] + R[3 * i + 1] * mean[1] + R[3 * i + 2] * mean[2] + cam.t[i];
  float RS[9];  // Rw S
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) RS[3 * i + j] = R[3 * i] * cv.S[j] + R[3 * i + 1] * cv.S[3 + j] + R[3 * i + 2] * cv.S[6 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) o.Sc[3 * i + j] = RS[3 * i] * R[3 * j] + RS[3 * i + 1] * R[3 * j + 1] + RS[3 * i + 2] * R[3 * j + 2];
  const float x = o.p[0], y = o.p[1], z = o.p[2];
  bool valid = z >= near && z <= far;
  const float zs = valid ? z : 1.0f;
  float u = x / zs, v = y / zs;
  o.clamp_x = u < -cam.lim_x_neg || u > cam.lim_x_pos;
  o.clamp_y = v < -cam.lim_y_neg || v > cam.lim_y_pos;
  u = std::min(std::max(u, -cam.lim_x_neg), cam.lim_x_pos);
  v = std::min(std::max(v, -cam.lim_y_neg), cam.lim_y_pos);
  const float tx = zs * u, ty = zs * v;
  o.zs = zs, o.u = u, o.v = v;
  float* J = o.J;
  J[0] = cam.fx / zs, J[1] = 0, J[2] = -cam.fx * tx / (zs * zs);
  J[3] = 0, J[4] = cam.fy / zs, J[5] = -cam.fy * ty / (zs * zs);
  float JS[6];  // J Sc
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) JS[3 * i + j] = J[3 * i] * o.Sc[j] + J[3 * i + 1] * o.Sc[3 + j] + J[3 * i + 2] * o.Sc[6 + j];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) o.cov2d[2 * i + j] = JS[3 * i] * J[3 * j] + JS[3 * i + 1] * J[3 * j + 1] + JS[3 * i + 2] * J[3 * j + 2];
  o.cov2d[0] += eps2d, o.cov2d[3] += eps2d;
  o.mean2d[0] = cam.fx * x / zs + cam.cx, o.mean2d[1] = cam.fy * y / zs + cam.cy;
  const float* c2 = o.cov2d;
  const float det = c2[0] * c2[3] - c2[1] * c2[2];
  valid = valid && det > 0;
  o.det = valid ? det : 1.0f;
  o.conic[0] = c2[3] / o.det, o.conic[1] = -c2[1] / o.det, o.conic[2] = c2[0] / o.det;
  valid = valid && opac >= kAlphaThreshold;
  const float ratio = std::max(opac / kAlphaThreshold, 1.0f);
  const float extend = std::min(std::sqrt(2.0f * std::log(ratio)), kMaxExtend);
  o.rx = std::ceil(extend * std::sqrt(std::max(c2[0], 0.0f)));
  o.ry = std::ceil(extend * std::sqrt(std::max(c2[3], 0.0f)));
  valid = valid && !(o.rx <= radius_clip && o.ry <= radius_clip);
  const bool off = o.mean2d[0] + o.rx <= 0 || o.mean2d[0] - o.rx >= W || o.mean2d[1] + o.ry <= 0 ||
                   o.mean2d[1] - o.ry >= H;
  o.valid = valid && !off;
}

void check(const at::Tensor& x, const char* name, std::initializer_list<int64_t> shape) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(), "facegs_splat: ", name,
              " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(x.sizes() == at::IntArrayRef(shape), "facegs_splat: ", name, " has shape ", x.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_forward(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opac,
    const at::Tensor& viewmats, const at::Tensor& Ks, int64_t W, int64_t H, double near, double far, double eps2d,
    double radius_clip) {
  const int64_t N = means.size(0), C = viewmats.size(0);
  check(means, "means", {N, 3}), check(quats, "quats", {N, 4}), check(scales, "scales", {N, 3});
  check(opac, "opacities", {N}), check(viewmats, "viewmats", {C, 4, 4}), check(Ks, "Ks", {C, 3, 3});
  const auto cams = cameras(viewmats, Ks, W, H);
  auto fopt = means.options();
  at::Tensor radii = at::empty({C, N, 2}, fopt.dtype(at::kInt)), m2 = at::empty({C, N, 2}, fopt);
  at::Tensor depths = at::empty({C, N}, fopt), conics = at::empty({C, N, 3}, fopt);
  const float *mp = means.data_ptr<float>(), *qp = quats.data_ptr<float>(), *sp = scales.data_ptr<float>();
  const float* op = opac.data_ptr<float>();
  int32_t* rp = radii.data_ptr<int32_t>();
  float *m2p = m2.data_ptr<float>(), *dp = depths.data_ptr<float>(), *cp = conics.data_ptr<float>();
  at::parallel_for(0, N, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t n = lo; n < hi; ++n) {
      Covar cv;
      cv.init(qp + 4 * n, sp + 3 * n);
      for (int64_t c = 0; c < C; ++c) {
        Proj o;
        project_one(cv, mp + 3 * n, op[n], cams[c], W, H, near, far, eps2d, radius_clip, o);
        const int64_t i = c * N + n;
        dp[i] = o.p[2];
        rp[2 * i] = o.valid ? static_cast<int32_t>(o.rx) : 0, rp[2 * i + 1] = o.valid ? static_cast<int32_t>(o.ry) : 0;
        m2p[2 * i] = o.valid ? o.mean2d[0] : 0.0f, m2p[2 * i + 1] = o.valid ? o.mean2d[1] : 0.0f;
        for (int j = 0; j < 3; ++j) cp[3 * i + j] = o.valid ? o.conic[j] : 0.0f;
      }
    }
  });
  return {radii, m2, depths, conics};
}

// d R / d (w, x, y, z) of rotmat(), contracted with v_R.
inline void rotmat_vjp(const float* q, const float* vR, float* vq) {
  const float w = q[0], x = q[1], y = q[2], z = q[3];
  const float dw[9] = {0, -2 * z, 2 * y, 2 * z, 0, -2 * x, -2 * y, 2 * x, 0};
  const float dx[9] = {0, 2 * y, 2 * z, 2 * y, -4 * x, -2 * w, 2 * z, 2 * w, -4 * x};
  const float dy[9] = {-4 * y, 2 * x, 2 * w, 2 * x, 0, 2 * z, -2 * w, 2 * z, -4 * y};
  const float dz[9] = {-4 * z, -2 * w, 2 * x, 2 * w, -4 * z, 2 * y, 2 * x, 2 * y, 0};
  vq[0] = vq[1] = vq[2] = vq[3] = 0;
  for (int i = 0; i < 9; ++i) vq[0] += vR[i] * dw[i], vq[1] += vR[i] * dx[i], vq[2] += vR[i] * dy[i], vq[3] += vR[i] * dz[i];
}

// -> (v_means [N, 3], v_quats [N, 4], v_scales [N, 3]) from v_means2d [C, N, 2], v_depths [C, N],
//    v_conics [C, N, 3] (recomputes the forward).
std::tuple<at::Tensor, at::Tensor, at::Tensor> project_backward(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opac,
    const at::Tensor& viewmats, const at::Tensor& Ks, int64_t W, int64_t H, double near, double far, double eps2d,
    double radius_clip, const at::Tensor& v_m2, const at::Tensor& v_depths, const at::Tensor& v_conics) {
  const int64_t N = means.size(0), C = viewmats.size(0);
  check(v_m2, "v_means2d", {C, N, 2}), check(v_depths, "v_depths", {C, N}), check(v_conics, "v_conics", {C, N, 3});
  const auto cams = cameras(viewmats, Ks, W, H);
  auto fopt = means.options();
  at::Tensor gm = at::empty({N, 3}, fopt), gq = at::empty({N, 4}, fopt), gs = at::empty({N, 3}, fopt);
  const float *mp = means.data_ptr<float>(), *qp = quats.data_ptr<float>(), *sp = scales.data_ptr<float>();
  const float *op = opac.data_ptr<float>(), *vm2 = v_m2.data_ptr<float>(), *vd = v_depths.data_ptr<float>();
  const float* vc = v_conics.data_ptr<float>();
  float *gmp = gm.data_ptr<float>(), *gqp = gq.data_ptr<float>(), *gsp = gs.data_ptr<float>();
  at::parallel_for(0, N, 1024, [&](int64_t lo, int64_t hi) {
    for (int64_t n = lo; n < hi; ++n) {
      Covar cv;
      cv.init(qp + 4 * n, sp + 3 * n);
      float v_mean[3] = {0, 0, 0}, v_S[9] = {0};
      for (int64_t c = 0; c < C; ++c) {
        const Camera& cam = cams[c];
        Proj o;
        project_one(cv, mp + 3 * n, op[n], cam, W, H, near, far, eps2d, radius_clip, o);
        const int64_t i = c * N + n;
        float v_p[3] = {0, 0, vd[i]};  // depths = camera z, for every Gaussian
        if (o.valid) {
          const float va = vc[3 * i], vb = vc[3 * i + 1], vcc = vc[3 * i + 2];
          const float* c2 = o.cov2d;
          const float det = o.det;
          const float v_det = -(va * o.conic[0] + vb * o.conic[1] + vcc * o.conic[2]) / det;
          const float V[4] = {vcc / det + v_det * c2[3], -vb / det - v_det * c2[2], -v_det * c2[1],
                              va / det + v_det * c2[0]};  // d L / d cov2d entries
          const float* J = o.J;
          // v_Sc = J^T V J; v_J = (V + V^T) J Sc
          float VJ[6];
          for (int a = 0; a < 2; ++a)
            for (int j = 0; j < 3; ++j) VJ[3 * a + j] = V[2 * a] * J[j] + V[2 * a + 1] * J[3 + j];
          float v_Sc[9];
          for (int k = 0; k < 3; ++k)
            for (int j = 0; j < 3; ++j) v_Sc[3 * k + j] = J[k] * VJ[j] + J[3 + k] * VJ[3 + j];
          const float Vs[4] = {2 * V[0], V[1] + V[2], V[1] + V[2], 2 * V[3]};
          float v_J[6];
          for (int a = 0; a < 2; ++a)
            for (int j = 0; j < 3; ++j) {
              float acc = 0;
              for (int k = 0; k < 3; ++k) acc += (Vs[2 * a] * J[k] + Vs[2 * a + 1] * J[3 + k]) * o.Sc[3 * k + j];
              v_J[3 * a + j] = acc;
            }
          // means2d = (fx x / zs + cx, fy y / zs + cy)
          const float zs = o.zs, x = o.p[0], y = o.p[1];
          const float vmx = vm2[2 * i], vmy = vm2[2 * i + 1];
          float v_zs = -(vmx * cam.fx * x + vmy * cam.fy * y) / (zs * zs);
          v_p[0] += vmx * cam.fx / zs, v_p[1] += vmy * cam.fy / zs;
          // J00 = fx / zs, J11 = fy / zs, J02 = -fx tx / zs^2, J12 = -fy ty / zs^2, tx = zs u (u clamped)
          const float tx = zs * o.u, ty = zs * o.v;
          v_zs += -v_J[0] * cam.fx / (zs * zs) - v_J[4] * cam.fy / (zs * zs);
          v_zs += 2 * v_J[2] * cam.fx * tx / (zs * zs * zs) + 2 * v_J[5] * cam.fy * ty / (zs * zs * zs);
          const float v_tx = -v_J[2] * cam.fx / (zs * zs), v_ty = -v_J[5] * cam.fy / (zs * zs);
          if (o.clamp_x) v_zs += v_tx * o.u; else v_p[0] += v_tx;
          if (o.clamp_y) v_zs += v_ty * o.v; else v_p[1] += v_ty;
          v_p[2] += v_zs;  // valid implies zs = z
          // Sc = Rw S Rw^T: v_S += Rw^T v_Sc Rw
          const float* R = cam.R;
          float T1[9];
          for (int a = 0; a < 3; ++a)
            for (int j = 0; j < 3; ++j) T1[3 * a + j] = R[a] * v_Sc[j] + R[3 + a] * v_Sc[3 + j] + R[6 + a] * v_Sc[6 + j];
          for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b) v_S[3 * a + b] += T1[3 * a] * R[b] + T1[3 * a + 1] * R[3 + b] + T1[3 * a + 2] * R[6 + b];
        }
        // p = Rw mean + t
        const float* R = cam.R;
        for (int j = 0; j < 3; ++j) v_mean[j] += R[j] * v_p[0] + R[3 + j] * v_p[1] + R[6 + j] * v_p[2];
      }
      // S = M M^T, M = R diag(s)
      float v_M[9], v_R[9], v_s[3] = {0, 0, 0};
      for (int a = 0; a < 3; ++a)
        for (int j = 0; j < 3; ++j) {
          float acc = 0;
          for (int k = 0; k < 3; ++k) acc += (v_S[3 * a + k] + v_S[3 * k + a]) * cv.M[3 * k + j];
          v_M[3 * a + j] = acc;
        }
      const float* s = sp + 3 * n;
      for (int a = 0; a < 3; ++a)
        for (int j = 0; j < 3; ++j) v_R[3 * a + j] = v_M[3 * a + j] * s[j], v_s[j] += v_M[3 * a + j] * cv.R[3 * a + j];
      float v_qn[4];
      rotmat_vjp(cv.qn, v_R, v_qn);
      const float dot = v_qn[0] * cv.qn[0] + v_qn[1] * cv.qn[1] + v_qn[2] * cv.qn[2] + v_qn[3] * cv.qn[3];
      for (int j = 0; j < 4; ++j) gqp[4 * n + j] = (v_qn[j] - cv.qn[j] * dot) / cv.qnorm;
      for (int j = 0; j < 3; ++j) gmp[3 * n + j] = v_mean[j], gsp[3 * n + j] = v_s[j];
    }
  });
  return {gm, gq, gs};
}

// Tile intersections sorted by (image, tile, depth), ties by Gaussian index (tiles.isect_tiles):
// -> tiles_per_gauss [I, N] int32, isect_ids [M] int64, flatten_ids [M] int32, isect_offsets [I, th, tw] int32.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> isect_tiles(const at::Tensor& means2d,
                                                                       const at::Tensor& radii,
                                                                       const at::Tensor& depths, int64_t ts,
                                                                       int64_t tw, int64_t th) {
  TORCH_CHECK(means2d.scalar_type() == at::kFloat && radii.scalar_type() == at::kInt && depths.scalar_type() == at::kFloat &&
                  means2d.is_contiguous() && radii.is_contiguous() && depths.is_contiguous(),
              "facegs_splat: isect_tiles needs contiguous float32 means2d/depths and int32 radii");
  const int64_t I = depths.size(0), N = depths.size(1), G = I * N, nt = tw * th;
  const float *m = means2d.data_ptr<float>(), *dp = depths.data_ptr<float>();
  const int32_t* r = radii.data_ptr<int32_t>();
  auto iopt = radii.options();
  at::Tensor tpg = at::empty({I, N}, iopt);
  int32_t* tp = tpg.data_ptr<int32_t>();
  std::vector<int32_t> box(4 * G);  // x0, y0, x1, y1 (exclusive)
  const float ftw = static_cast<float>(tw), fth = static_cast<float>(th), fts = static_cast<float>(ts);
  for (int64_t g = 0; g < G; ++g) {
    const bool vis = r[2 * g] > 0 && r[2 * g + 1] > 0;
    const float mx = m[2 * g] / fts, my = m[2 * g + 1] / fts;
    const float rx = static_cast<float>(r[2 * g]) / fts, ry = static_cast<float>(r[2 * g + 1]) / fts;
    auto clampf = [](float v, float hi) { return std::min(std::max(v, 0.0f), hi); };
    const int32_t x0 = static_cast<int32_t>(clampf(std::floor(mx - rx), ftw));
    const int32_t y0 = static_cast<int32_t>(clampf(std::floor(my - ry), fth));
    const int32_t x1 = static_cast<int32_t>(clampf(std::ceil(mx + rx), ftw));
    const int32_t y1 = static_cast<int32_t>(clampf(std::ceil(my + ry), fth));
    box[4 * g] = x0, box[4 * g + 1] = y0, box[4 * g + 2] = vis ? x1 : x0, box[4 * g + 3] = vis ? y1 : y0;
    tp[g] = vis ? (x1 - x0) * (y1 - y0) : 0;
  }
  std::vector<int64_t> counts(I * nt + 1, 0);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t base = (g / N) * nt;
    for (int32_t y = box[4 * g + 1]; y < box[4 * g + 3]; ++y)
      for (int32_t x = box[4 * g]; x < box[4 * g + 2]; ++x) ++counts[base + y * tw + x + 1];
  }
  for (int64_t b = 0; b < I * nt; ++b) counts[b + 1] += counts[b];
  const int64_t M = counts[I * nt];
  at::Tensor offsets = at::empty({I, th, tw}, iopt), ids = at::empty({M}, iopt.dtype(at::kLong));
  at::Tensor fids = at::empty({M}, iopt);
  int32_t* op = offsets.data_ptr<int32_t>();
  for (int64_t b = 0; b < I * nt; ++b) op[b] = static_cast<int32_t>(counts[b]);
  std::vector<std::pair<uint32_t, int32_t>> keys(M);  // (depth bits, flat Gaussian id), in Gaussian order per tile
  std::vector<int64_t> cursor(counts.begin(), counts.end() - 1);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t base = (g / N) * nt;
    uint32_t bits;
    std::memcpy(&bits, dp + g, sizeof bits);
    for (int32_t y = box[4 * g + 1]; y < box[4 * g + 3]; ++y)
      for (int32_t x = box[4 * g]; x < box[4 * g + 2]; ++x) keys[cursor[base + y * tw + x]++] = {bits, static_cast<int32_t>(g)};
  }
  const int64_t tile_bits = nt > 0 ? 64 - __builtin_clzll(static_cast<uint64_t>(nt)) : 0;
  int64_t* idp = ids.data_ptr<int64_t>();
  int32_t* fp = fids.data_ptr<int32_t>();
  at::parallel_for(0, I * nt, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      auto first = keys.begin() + counts[b], last = keys.begin() + counts[b + 1];
      std::stable_sort(first, last, [](const auto& a, const auto& c) { return a.first < c.first; });
      const int64_t head = ((b / nt) << (tile_bits + 32)) | ((b % nt) << 32);
      for (int64_t j = counts[b]; j < counts[b + 1]; ++j) idp[j] = head | keys[j].first, fp[j] = keys[j].second;
    }
  });
  return {tpg, ids, fids, offsets};
}

}  // namespace

#ifndef FACEGS_SPLAT_NS
#define FACEGS_SPLAT_NS facegs_splat
#endif

TORCH_LIBRARY_FRAGMENT(FACEGS_SPLAT_NS, m) {
  m.def("project_forward(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor viewmats, Tensor Ks, "
        "int width, int height, float near_plane, float far_plane, float eps2d, float radius_clip) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("project_backward(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor viewmats, Tensor Ks, "
        "int width, int height, float near_plane, float far_plane, float eps2d, float radius_clip, "
        "Tensor v_means2d, Tensor v_depths, Tensor v_conics) -> (Tensor, Tensor, Tensor)");
  m.def("isect_tiles(Tensor means2d, Tensor radii, Tensor depths, int tile_size, int tile_width, int tile_height) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.impl("project_forward", c10::DispatchKey::CPU, &project_forward);
  m.impl("project_backward", c10::DispatchKey::CPU, &project_backward);
  m.impl("isect_tiles", c10::DispatchKey::CPU, &isect_tiles);
}
