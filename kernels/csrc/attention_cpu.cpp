// Decode attention over the paged KV cache, reading every sequence's blocks where they lie
// (`runtime/layers/attention.py`, `kernels/native_cpu.py`).
//
// The torch path gathers each layer's blocks into padded [B, KVH, C, D] copies of K and V and runs
// SDPA on them with a mask: it writes and reads the whole context twice more than it needs to.
// Here one task is one (sequence, KV head): that head's H/KVH query heads take their scores against
// each key row as it is read from its block, then the softmax, then the values, each row read once.
// Same math as SDPA's: scores = q.k * scale (Gemma 2's cap * tanh(s / cap) where set), masked to the
// sequence's context (and its sliding window), softmax with the maximum subtracted, weights times
// values, divided by the weights' sum; fp32, summed in another order (last bits differ).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"
#include "vec.h"

namespace {
using namespace lorafleet_cpu;

// One layer's cache as the kernel walks it: [num_blocks, block_size, KVH, D].
struct PagedCache {
  const float* keys;
  const float* values;
  int64_t block_size, kv_heads, head_dim;
};

struct Work {
  std::vector<int64_t> rows;  // [n]: where each position's key (and value) row starts
  std::vector<float> scores;  // [G, n]
};

// scores[i] = scale * q . key(start + i), 16 keys at a time: each key's dot product as a vector of
// partial sums, the 16 reduced together.
void scores_of(const float* q, const float* keys, const float* values, const int64_t* rows, int64_t n, int64_t d,
               float scale, float* scores) {
  const int64_t dv = d / V * V;
  for (int64_t i0 = 0; i0 < n; i0 += V) {
    const int64_t m = std::min<int64_t>(V, n - i0);
    for (int64_t j = i0 + V; j < std::min(n, i0 + 2 * V); ++j)  // the next 16 rows, from memory
      for (int64_t c = 0; c < d; c += V) {
        __builtin_prefetch(keys + rows[j] + c);
        if (values != nullptr) __builtin_prefetch(values + rows[j] + c);
      }
    vec acc[V];
    for (int64_t j = 0; j < V; ++j) acc[j] = vec{};
    for (int64_t j = 0; j < m; ++j) {
      const float* key = keys + rows[i0 + j];
      for (int64_t c = 0; c < dv; c += V) acc[j] += load(q + c) * load(key + c);
      for (int64_t c = dv; c < d; ++c) acc[j][0] += q[c] * key[c];
    }
    const vec s = hsum16(acc) * splat(scale);
    if (m == V) {
      store(scores + i0, s);
    } else {
      for (int64_t j = 0; j < m; ++j) scores[i0 + j] = s[j];
    }
  }
}

// scores -> e^(s - max) in place; returns their sum.
float softmax_weights(float* s, int64_t n, float soft_cap) {
  if (soft_cap > 0.f)
    for (int64_t i = 0; i < n; ++i) s[i] = soft_cap * std::tanh(s[i] / soft_cap);
  float top = s[0];
  for (int64_t i = 1; i < n; ++i) top = std::max(top, s[i]);
  const int64_t nv = n / V * V;
  vec sums = vec{};
  for (int64_t i = 0; i < nv; i += V) {
    const vec e = exp_vec(load(s + i) - splat(top));
    store(s + i, e);
    sums += e;
  }
  float sum = hsum(sums);
  for (int64_t i = nv; i < n; ++i) sum += (s[i] = std::exp(s[i] - top));
  return sum;
}

// out[c] = inv * sum_i w[i] * value(start + i)[c]: 64 columns at a time in registers, two positions
// per pass so that each register's additions form two chains, not one.
void weighted_values(const float* w, const float* values, const int64_t* rows, int64_t n, int64_t d, float inv,
                     float* out) {
  int64_t c = 0;
  for (; c + 4 * V <= d; c += 4 * V) {
    vec a[4] = {}, b[4] = {};
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) {
      const float* v0 = values + rows[i] + c;
      const float* v1 = values + rows[i + 1] + c;
      const vec w0 = splat(w[i]), w1 = splat(w[i + 1]);
      for (int k = 0; k < 4; ++k) {
        a[k] += w0 * load(v0 + k * V);
        b[k] += w1 * load(v1 + k * V);
      }
    }
    if (i < n) {
      const float* v0 = values + rows[i] + c;
      for (int k = 0; k < 4; ++k) a[k] += splat(w[i]) * load(v0 + k * V);
    }
    for (int k = 0; k < 4; ++k) store(out + c + k * V, (a[k] + b[k]) * splat(inv));
  }
  for (; c + V <= d; c += V) {
    vec a = vec{};
    for (int64_t i = 0; i < n; ++i) a += splat(w[i]) * load(values + rows[i] + c);
    store(out + c, a * splat(inv));
  }
  for (; c < d; ++c) {
    float a = 0.f;
    for (int64_t i = 0; i < n; ++i) a += w[i] * values[rows[i] + c];
    out[c] = a * inv;
  }
}

// The G query heads of KV head h, one sequence: keys and values at positions [start, end).
void attend(const float* q, int64_t q_head_stride, int64_t groups, const PagedCache& cache, const int64_t* table,
            int64_t start, int64_t end, int64_t h, float scale, float soft_cap, float* out, int64_t out_head_stride,
            Work& work) {
  const int64_t n = end - start, d = cache.head_dim, bs = cache.block_size;
  work.rows.resize(n);
  work.scores.resize(groups * n);
  for (int64_t i = 0, block = start / bs, offset = start % bs; i < n; ++i) {
    work.rows[i] = ((table[block] * bs + offset) * cache.kv_heads + h) * d;
    if (++offset == bs) offset = 0, ++block;
  }
  for (int64_t g = 0; g < groups; ++g) {
    float* s = &work.scores[g * n];
    scores_of(q + g * q_head_stride, cache.keys, g == 0 ? cache.values : nullptr, work.rows.data(), n, d, scale, s);
    const float total = softmax_weights(s, n, soft_cap);
    weighted_values(s, cache.values, work.rows.data(), n, d, 1.f / total, out + g * out_head_stride);
  }
}
}  // namespace

// out[token_index[b], head] for every decode row b: q[token_index[b], head] attending to the first
// context_lens[b] positions of its sequence (block_tables[b]), or to the last `window` of them.
// window < 0: no window; soft_cap <= 0: no capping.
void decode_attention(at::Tensor out, at::Tensor q, at::Tensor token_index, at::Tensor k_cache, at::Tensor v_cache,
                      at::Tensor block_tables, at::Tensor context_lens, double scale, int64_t window,
                      double soft_cap) {
  // The callers' tensors are the engine's own; checked anyway, since a wrong one would read or
  // write out of bounds rather than raise.
  TORCH_CHECK(q.dtype() == at::kFloat && out.dtype() == at::kFloat && k_cache.dtype() == at::kFloat &&
              v_cache.dtype() == at::kFloat, "fp32 queries, output and cache");
  TORCH_CHECK(q.dim() == 3 && out.sizes() == q.sizes() && q.stride(2) == 1 && out.stride(2) == 1,
              "q, out: [T, H, D] with contiguous heads");
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() && k_cache.is_contiguous() &&
              v_cache.is_contiguous(), "k_cache, v_cache: [blocks, block_size, KVH, D] contiguous");
  const int64_t num_blocks = k_cache.size(0), block_size = k_cache.size(1), kv_heads = k_cache.size(2),
                head_dim = k_cache.size(3), tokens = q.size(0), heads = q.size(1);
  TORCH_CHECK(q.size(2) == head_dim && heads % kv_heads == 0, "query heads: a multiple of the KV heads, same D");
  TORCH_CHECK(token_index.dtype() == at::kLong && block_tables.dtype() == at::kLong &&
              context_lens.dtype() == at::kLong && token_index.dim() == 1 && block_tables.dim() == 2 &&
              block_tables.is_contiguous() && token_index.is_contiguous() && context_lens.is_contiguous() &&
              context_lens.sizes() == token_index.sizes() && block_tables.size(0) == token_index.size(0),
              "token_index [B], block_tables [B, max_blocks], context_lens [B]: int64, contiguous");
  TORCH_CHECK(window != 0, "window: > 0, or < 0 for none");
  const int64_t rows = token_index.size(0), max_blocks = block_tables.size(1);
  const int64_t* index = token_index.data_ptr<int64_t>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < rows; ++b) {
    TORCH_CHECK(0 <= index[b] && index[b] < tokens, "token_index out of range");
    TORCH_CHECK(0 < lens[b] && lens[b] <= max_blocks * block_size, "context_lens out of range");
    for (int64_t j = 0; j < (lens[b] + block_size - 1) / block_size; ++j)
      TORCH_CHECK(0 <= tables[b * max_blocks + j] && tables[b * max_blocks + j] < num_blocks,
                  "block table entry out of range");
  }
  const PagedCache cache{k_cache.data_ptr<float>(), v_cache.data_ptr<float>(), block_size, kv_heads, head_dim};
  const int64_t groups = heads / kv_heads;
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), os0 = out.stride(0), os1 = out.stride(1);
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t task0, int64_t task1) {
    Work work;
    for (int64_t task = task0; task < task1; ++task) {
      const int64_t b = task / kv_heads, h = task % kv_heads;
      const int64_t end = lens[b], start = window > 0 ? std::max<int64_t>(0, end - window) : 0;
      attend(qp + index[b] * qs0 + h * groups * qs1, qs1, groups, cache, tables + b * max_blocks, start, end, h,
             (float)scale, (float)soft_cap, op + index[b] * os0 + h * groups * os1, os1, work);
    }
  });
}
