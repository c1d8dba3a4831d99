// The CPU path's LoRA for decode-sized slot segments, in one call per layer (`kernels/native_cpu.py`).
//
// Each adapter's rows of the batch (a segment: rows lo..hi, at most a few dozen) get
//     out[rows, slice s] += alpha_s * (x[rows] @ A^T[s*r:(s+1)*r]^T) @ B_s
// with A^T [S*r, K] and B_s [r, N_s] the slot's contiguous fp32 copies (`torch_slot_weights`).
// Written for memory, not FLOPs: at a few rows per adapter every weight is read once per call,
// straight from memory (the base matmul before it has evicted it), so each thread streams a
// contiguous run: the shrink as dot products over rows of A^T, split by rows of A^T; the expands
// split by output columns, each thread walking its columns of B's rows 16 rank rows at a time with
// the partial sums in registers. Vectors of 16 floats (`vec.h`); fp32 throughout, summed in another
// order than MKL's (the result differs in the last bits, as any two fp32 GEMMs do).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

#include "kernels.h"
#include "vec.h"

namespace {
using namespace lorafleet_cpu;

// The weights come from memory (the base matmul before has evicted them) in up to 16 streams at once
// (the expand's rank rows), more than the hardware prefetchers follow: the loops prefetch ahead, by
// these distances in floats (one rank-64 gate|up slot of 8 rows read from memory, 2 threads, AMD
// EPYC Zen 5: 64 -> 40-42 us a call, with the expand's partial sums kept for 16 rank rows, not 8).
constexpr int64_t PREFETCH_A = 256, PREFETCH_B = 128;

// t[i * ts + j] = sum_k x[i * xs + k] * a[j * k_dim + k] for i < R, j in [j0, j1): two columns per pass
template <int R>
void shrink_block(const float* x, int64_t xs, const float* a, int64_t k_dim, int64_t j0, int64_t j1, float* t,
                  int64_t ts) {
  const int64_t kv = k_dim / V * V;
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    const float* a0 = a + j * k_dim;
    const float* a1 = a0 + k_dim;
    vec c0[R], c1[R];
    for (int r = 0; r < R; ++r) c0[r] = c1[r] = vec{};
    for (int64_t k = 0; k < kv; k += V) {
      __builtin_prefetch(a0 + k + PREFETCH_A);
      __builtin_prefetch(a1 + k + PREFETCH_A);
      const vec v0 = load(a0 + k), v1 = load(a1 + k);
      for (int r = 0; r < R; ++r) {
        const vec xv = load(x + r * xs + k);
        c0[r] += xv * v0; c1[r] += xv * v1;
      }
    }
    for (int r = 0; r < R; ++r) {
      float s0 = hsum(c0[r]), s1 = hsum(c1[r]);
      for (int64_t k = kv; k < k_dim; ++k) { s0 += x[r * xs + k] * a0[k]; s1 += x[r * xs + k] * a1[k]; }
      t[r * ts + j] = s0; t[r * ts + j + 1] = s1;
    }
  }
  for (; j < j1; ++j) {
    const float* arow = a + j * k_dim;
    vec acc[R];
    for (int r = 0; r < R; ++r) acc[r] = vec{};
    for (int64_t k = 0; k < kv; k += V) {
      const vec av = load(arow + k);
      for (int r = 0; r < R; ++r) acc[r] += load(x + r * xs + k) * av;
    }
    for (int r = 0; r < R; ++r) {
      float s = hsum(acc[r]);
      for (int64_t k = kv; k < k_dim; ++k) s += x[r * xs + k] * arow[k];
      t[r * ts + j] = s;
    }
  }
}

void shrink(const float* x, int64_t xs, int64_t rows, const float* a, int64_t k_dim, int64_t j0, int64_t j1,
            float* t, int64_t ts) {
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) shrink_block<8>(x + i * xs, xs, a, k_dim, j0, j1, t + i * ts, ts);
  for (; i + 4 <= rows; i += 4) shrink_block<4>(x + i * xs, xs, a, k_dim, j0, j1, t + i * ts, ts);
  for (; i < rows; ++i) shrink_block<1>(x + i * xs, xs, a, k_dim, j0, j1, t + i * ts, ts);
}

// acc[i * w + c] += sum_{k < rank} t[i * ts + k] * b[k * ld + c], c < w; partial sums per 16 rank rows
template <int R>
void expand_block(const float* t, int64_t ts, const float* b, int64_t ld, int64_t w, int64_t rank, float* acc) {
  constexpr int64_t KC = 16;
  const int64_t wv = w / (2 * V) * (2 * V);
  for (int64_t kc = 0; kc < rank; kc += KC) {
    const int64_t ke = std::min(rank, kc + KC);
    for (int64_t c = 0; c < wv; c += 2 * V) {
      vec lo[R], hi[R];
      for (int r = 0; r < R; ++r) { lo[r] = load(acc + r * w + c); hi[r] = load(acc + r * w + c + V); }
      for (int64_t k = kc; k < ke; ++k) {
        __builtin_prefetch(b + k * ld + c + PREFETCH_B);
        __builtin_prefetch(b + k * ld + c + PREFETCH_B + V);
        const vec b0 = load(b + k * ld + c), b1 = load(b + k * ld + c + V);
        for (int r = 0; r < R; ++r) {
          const vec tv = splat(t[r * ts + k]);
          lo[r] += tv * b0; hi[r] += tv * b1;
        }
      }
      for (int r = 0; r < R; ++r) { store(acc + r * w + c, lo[r]); store(acc + r * w + c + V, hi[r]); }
    }
    for (int64_t c = wv; c < w; ++c)
      for (int64_t k = kc; k < ke; ++k)
        for (int r = 0; r < R; ++r) acc[r * w + c] += t[r * ts + k] * b[k * ld + c];
  }
}

void expand_cols(const float* t, int64_t ts, int64_t rows, const float* b, int64_t ld, int64_t w, int64_t rank,
                 float* acc) {
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) expand_block<8>(t + i * ts, ts, b, ld, w, rank, acc + i * w);
  for (; i + 4 <= rows; i += 4) expand_block<4>(t + i * ts, ts, b, ld, w, rank, acc + i * w);
  for (; i < rows; ++i) expand_block<1>(t + i * ts, ts, b, ld, w, rank, acc + i * w);
}
}  // namespace

// One layer call: for each segment g (rows lo[g]..hi[g] of x and out, slot matrices a_t[g] [S*r_g, K]
// and b[g*S + s] [r_g, N_s]), out[rows, slice s] += alpha[g*S + s] * (x[rows] @ a_t[g].T)[:, s] @ b[g*S+s].
void lora_layer(at::Tensor out, at::Tensor x, std::vector<int64_t> lo, std::vector<int64_t> hi,
                std::vector<at::Tensor> a_t, std::vector<at::Tensor> b, std::vector<int64_t> offsets,
                std::vector<double> alphas) {
  const int64_t segs = (int64_t)lo.size(), num_slices = (int64_t)offsets.size() - 1, k_dim = x.size(1);
  // The callers' tensors are the engine's own; checked anyway, since a wrong one would read or
  // write out of bounds rather than raise.
  TORCH_CHECK(x.dtype() == at::kFloat && out.dtype() == at::kFloat && x.dim() == 2 && out.dim() == 2 &&
              x.stride(1) == 1 && out.stride(1) == 1 && x.size(0) == out.size(0), "x, out: fp32 rows");
  TORCH_CHECK(num_slices >= 1 && offsets[0] == 0 && offsets[num_slices] <= out.size(1), "offsets");
  TORCH_CHECK((int64_t)hi.size() == segs && (int64_t)a_t.size() == segs && (int64_t)b.size() == segs * num_slices &&
              (int64_t)alphas.size() == segs * num_slices, "one entry per segment (and slice)");
  for (int64_t g = 0; g < segs; ++g) {
    TORCH_CHECK(0 <= lo[g] && lo[g] <= hi[g] && hi[g] <= x.size(0), "segment rows");
    const at::Tensor& a = a_t[g];
    TORCH_CHECK(a.dtype() == at::kFloat && a.dim() == 2 && a.is_contiguous() && a.size(1) == k_dim &&
                a.size(0) % num_slices == 0, "a_t: [S*r, K] contiguous fp32");
    for (int64_t s = 0; s < num_slices; ++s) {
      const at::Tensor& bs = b[g * num_slices + s];
      TORCH_CHECK(offsets[s] <= offsets[s + 1], "offsets");
      TORCH_CHECK(bs.dtype() == at::kFloat && bs.dim() == 2 && bs.is_contiguous() &&
                  bs.size(0) == a.size(0) / num_slices && bs.size(1) == offsets[s + 1] - offsets[s],
                  "b: [r, N_s] contiguous fp32");
    }
  }
  const int64_t xs = x.stride(0), os = out.stride(0);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  std::vector<int64_t> width(segs), base(segs + 1, 0), total_cols(segs + 1, 0);
  std::vector<const float*> ap(segs);
  for (int64_t g = 0; g < segs; ++g) {
    width[g] = a_t[g].size(0);
    ap[g] = a_t[g].data_ptr<float>();
    base[g + 1] = base[g] + (hi[g] - lo[g]) * width[g];
    total_cols[g + 1] = total_cols[g] + width[g];
  }
  std::vector<float> shrunk(base[segs]);
  const int64_t threads = std::max(1, at::get_num_threads());
  // every segment's shrink columns, split evenly over the threads
  at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t c0 = total_cols[segs] * p / threads, c1 = total_cols[segs] * (p + 1) / threads;
      for (int64_t g = 0; g < segs; ++g) {
        const int64_t j0 = std::max(c0, total_cols[g]) - total_cols[g];
        const int64_t j1 = std::min(c1, total_cols[g + 1]) - total_cols[g];
        if (j0 >= j1) continue;
        shrink(xp + lo[g] * xs, xs, hi[g] - lo[g], ap[g], k_dim, j0, j1, shrunk.data() + base[g], width[g]);
      }
    }
  });
  // every segment's expands: each thread owns a range of every slice's columns
  at::parallel_for(0, threads, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> acc;
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t g = 0; g < segs; ++g) {
        const int64_t rows = hi[g] - lo[g], rank = width[g] / num_slices;
        for (int64_t s = 0; s < num_slices; ++s) {
          const double alpha = alphas[g * num_slices + s];
          if (alpha == 0.0) continue;
          const int64_t n = offsets[s + 1] - offsets[s];
          const int64_t blocks = (n + 2 * V - 1) / (2 * V);
          const int64_t c0 = std::min(n, blocks * p / threads * 2 * V), c1 = std::min(n, blocks * (p + 1) / threads * 2 * V);
          const int64_t w = c1 - c0;
          if (w <= 0) continue;
          acc.assign(rows * w, 0.f);
          expand_cols(shrunk.data() + base[g] + s * rank, width[g], rows, b[g * num_slices + s].data_ptr<float>() + c0,
                      n, w, rank, acc.data());
          const float a = (float)alpha;
          for (int64_t i = 0; i < rows; ++i) {
            float* orow = op + (lo[g] + i) * os + offsets[s] + c0;
            const float* arow = acc.data() + i * w;
#pragma omp simd
            for (int64_t c = 0; c < w; ++c) orow[c] += a * arow[c];
          }
        }
      }
    }
  });
}
