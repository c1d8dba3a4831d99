// The decoder's small per-token ops on the CPU, fp32: RMSNorm (with the residual add before it) and
// RoPE (`runtime/layers/norms.py`, `runtime/layers/rotary.py`, `kernels/native_cpu.py`).
//
// In torch each is five to ten elementwise ops, each a pass over its rows with a fresh output; at a
// decode step's 32 rows every one of those passes costs more in calls and in cache misses (the base
// matmul before has evicted everything) than in arithmetic. Here each is one pass per row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>

#include "kernels.h"
#include "vec.h"

namespace {
using namespace lorafleet_cpu;

constexpr int64_t GRAIN = 16384;  // elements per thread below which splitting costs more than it saves

void check_rows(const at::Tensor& t, int64_t rows, int64_t dim, const char* name) {
  TORCH_CHECK(t.dtype() == at::kFloat && t.dim() == 2 && t.size(0) == rows && t.size(1) == dim && t.stride(1) == 1,
              name, ": [rows, dim] fp32 with contiguous rows");
}

// out = x / sqrt(mean(x^2) + eps) * w, with w = weight + offset: as the eager form, which multiplies
// the normalised row by the weight (Llama, offset 0) or by offset + weight (Gemma).
void norm_row(const float* x, const float* w, int64_t dim, float eps, float* out) {
  const int64_t dv = dim / V * V;
  vec squares = vec{};
  for (int64_t i = 0; i < dv; i += V) squares += load(x + i) * load(x + i);
  float sum = hsum(squares);
  for (int64_t i = dv; i < dim; ++i) sum += x[i] * x[i];
  const float inv = 1.f / std::sqrt(sum / (float)dim + eps);
  for (int64_t i = 0; i < dv; i += V) store(out + i, load(x + i) * splat(inv) * load(w + i));
  for (int64_t i = dv; i < dim; ++i) out[i] = x[i] * inv * w[i];
}

at::Tensor norm_weight(const at::Tensor& weight, int64_t dim, double offset) {
  TORCH_CHECK(weight.dtype() == at::kFloat && weight.dim() == 1 && weight.size(0) == dim, "weight: [dim] fp32");
  return offset == 0.0 ? weight.contiguous() : weight + offset;
}
}  // namespace

void rms_norm(at::Tensor out, at::Tensor x, at::Tensor weight, double eps, double offset) {
  const int64_t rows = x.size(0), dim = x.dim() == 2 ? x.size(1) : -1;
  check_rows(x, rows, dim, "x");
  check_rows(out, rows, dim, "out");
  const at::Tensor w = norm_weight(weight, dim, offset);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t xs = x.stride(0), os = out.stride(0);
  at::parallel_for(0, rows, std::max<int64_t>(1, GRAIN / dim), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) norm_row(xp + r * xs, wp, dim, (float)eps, op + r * os);
  });
}

void add_rms_norm(at::Tensor out, at::Tensor total, at::Tensor x, at::Tensor residual, at::Tensor weight, double eps,
                  double offset) {
  const int64_t rows = x.size(0), dim = x.dim() == 2 ? x.size(1) : -1;
  check_rows(x, rows, dim, "x");
  check_rows(residual, rows, dim, "residual");
  check_rows(total, rows, dim, "total");
  check_rows(out, rows, dim, "out");
  const at::Tensor w = norm_weight(weight, dim, offset);
  const float* xp = x.data_ptr<float>();
  const float* rp = residual.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* tp = total.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t xs = x.stride(0), rs = residual.stride(0), ts = total.stride(0), os = out.stride(0);
  const int64_t dv = dim / V * V;
  at::parallel_for(0, rows, std::max<int64_t>(1, GRAIN / dim), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *xr = xp + r * xs, *rr = rp + r * rs;
      float* tr = tp + r * ts;
      for (int64_t i = 0; i < dv; i += V) store(tr + i, load(xr + i) + load(rr + i));
      for (int64_t i = dv; i < dim; ++i) tr[i] = xr[i] + rr[i];
      norm_row(tr, wp, dim, (float)eps, op + r * os);
    }
  });
}

// RoPE in "rotate half" layout, bit for bit the eager `x * cos + rotate_half(x) * sin`: each product
// rounded, then the sum (so no fused multiply-adds here).
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
namespace {
void rotate_row(const float* x, const float* cos, const float* sin, int64_t half, float* out) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    out[i] = a * cos[i] + (-b) * sin[i];
    out[i + half] = b * cos[i + half] + a * sin[i + half];
  }
}
}  // namespace

void rotary(at::Tensor q_out, at::Tensor k_out, at::Tensor q, at::Tensor k, at::Tensor cos, at::Tensor sin) {
  const int64_t tokens = q.size(0), rot = cos.size(-1);
  TORCH_CHECK(q.dtype() == at::kFloat && k.dtype() == at::kFloat && q.dim() == 3 && k.dim() == 3 &&
              k.size(0) == tokens && q.size(2) == rot && k.size(2) == rot && q.stride(2) == 1 && k.stride(2) == 1,
              "q [T, H, D], k [T, KVH, D]: fp32, D the rotary width, contiguous heads");
  TORCH_CHECK(q_out.sizes() == q.sizes() && k_out.sizes() == k.sizes() && q_out.is_contiguous() &&
              k_out.is_contiguous() && q_out.dtype() == at::kFloat && k_out.dtype() == at::kFloat,
              "q_out, k_out: contiguous fp32, the shapes of q and k");
  TORCH_CHECK(cos.dtype() == at::kFloat && sin.dtype() == at::kFloat && cos.is_contiguous() && sin.is_contiguous() &&
              cos.numel() == tokens * rot && sin.numel() == tokens * rot && rot % 2 == 0,
              "cos, sin: [T, (1,) D] contiguous fp32, D even");
  const int64_t heads = q.size(1), kv_heads = k.size(1), half = rot / 2;
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float *qo = q_out.data_ptr<float>(), *ko = k_out.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), ks0 = k.stride(0), ks1 = k.stride(1);
  at::parallel_for(0, tokens, std::max<int64_t>(1, GRAIN / ((heads + kv_heads) * rot)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const float *c = cp + t * rot, *s = sp + t * rot;
      for (int64_t h = 0; h < heads; ++h) rotate_row(qp + t * qs0 + h * qs1, c, s, half, qo + (t * heads + h) * rot);
      for (int64_t h = 0; h < kv_heads; ++h)
        rotate_row(kp + t * ks0 + h * ks1, c, s, half, ko + (t * kv_heads + h) * rot);
    }
  });
}
#pragma GCC pop_options
