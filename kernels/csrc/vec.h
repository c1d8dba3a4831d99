// Vectors of 16 floats for the CPU kernels (GCC vector types): one AVX-512 register, or two AVX
// ones, whatever -march the build chose.
#pragma once
#include <cstdint>
#include <cstring>

namespace lorafleet_cpu {
typedef float vec __attribute__((vector_size(64)));
typedef float half_vec __attribute__((vector_size(32)));
typedef float quarter_vec __attribute__((vector_size(16)));
typedef int32_t int_vec __attribute__((vector_size(64)));
constexpr int64_t V = 16;

inline vec load(const float* p) { vec v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof(v)); }
inline vec splat(float f) { return vec{} + f; }

// The sum of the 16 lanes, pairwise (halves, then quarters): three vector adds and three scalar ones.
inline float hsum(vec v) {
  const half_vec h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                     __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const quarter_vec q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}
// Lane i of the result: the sum of the 16 lanes of a[i]. Four levels; each adds two vectors'
// lanes pairwise while packing two inputs into one (16 inputs -> 8 -> 4 -> 2 -> 1), so the 16 sums
// cost 15 pairs of shuffles and 15 adds instead of 16 separate reductions.
inline vec hsum16(const vec a[16]) {
  vec x[8], y[4], z[2];
  for (int j = 0; j < 8; ++j)  // lanes 0-7: a[2j]'s halves added; 8-15: a[2j+1]'s
    x[j] = __builtin_shufflevector(a[2 * j], a[2 * j + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a[2 * j], a[2 * j + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int j = 0; j < 4; ++j)  // four groups of four lanes: a[4j] .. a[4j+3]
    y[j] = __builtin_shufflevector(x[2 * j], x[2 * j + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(x[2 * j], x[2 * j + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int j = 0; j < 2; ++j)  // eight groups of two lanes: a[8j] .. a[8j+7]
    z[j] = __builtin_shufflevector(y[2 * j], y[2 * j + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(y[2 * j], y[2 * j + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(z[0], z[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(z[0], z[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// e^x lane by lane, within about 1 ulp of expf: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two
// parts so that n ln2 is exact), e^r by Cephes' expf polynomial, 2^n put in the exponent bits.
// Inputs are clamped to [-87.3, 88]: below, e^-87.3 (~1e-38, the smallest normal) instead of 0 or a
// denormal; above, e^88. NaN stays NaN.
inline vec exp_vec(vec x) {
  const vec lo = splat(-87.33654f), hi = splat(88.f);
  vec c = x < lo ? lo : x;
  c = c > hi ? hi : c;
  const vec round = splat(12582912.f);  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const vec n = (c * splat(1.44269504088896341f) + round) - round;
  const vec r = c - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  vec p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  const vec e = p * r * r + r + splat(1.f);
  const int_vec bits = (__builtin_convertvector(n, int_vec) + 127) << 23;
  vec scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const vec result = e * scale;
  return x == x ? result : x;  // NaN lanes: NaN
}
}  // namespace lorafleet_cpu
