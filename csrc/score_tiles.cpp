#include "score_tiles.h"

#include <immintrin.h>

#include <cstdlib>
#include <cstring>

namespace atlas_fast {

namespace {

// ---- scalar conversions (portable path, and conversions outside the hot loop) ----

inline float bf16_to_float(uint16_t bits) {
  uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof value);
  return value;
}

inline uint16_t float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // keep NaN a NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE half <-> float in plain C++, so that the portable path needs no F16C.
inline float fp16_to_float(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1fu;
  uint32_t mantissa = half & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf or NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline uint16_t float_to_fp16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;             // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;            // rounds to >= 65520: inf
  if (magnitude >= 0x38800000u) {                                 // normal half
    const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
    return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
  }
  if (magnitude < 0x33000000u) return sign;                       // below half the smallest subnormal
  // Subnormal half: shift the implicit-one mantissa into place, round to nearest even.
  const uint32_t exponent = magnitude >> 23;
  const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - exponent;  // value = mantissa * 2^(exponent - 150), half unit = 2^-24
  uint32_t half = mantissa >> shift;
  const uint32_t remainder = mantissa & ((1u << shift) - 1);
  const uint32_t halfway = 1u << (shift - 1);
  if (remainder > halfway || (remainder == halfway && (half & 1u))) ++half;
  return sign | static_cast<uint16_t>(half);
}

template <StorageType T>
inline float load_scalar(const void* rows, int64_t index) {
  if constexpr (T == StorageType::kFloat32) return static_cast<const float*>(rows)[index];
  if constexpr (T == StorageType::kFloat16) return fp16_to_float(static_cast<const uint16_t*>(rows)[index]);
  return bf16_to_float(static_cast<const uint16_t*>(rows)[index]);
}

template <StorageType T>
void score_tile_portable(const float* queries, int64_t n_queries, const void* rows, int64_t n_rows, int64_t dim,
                         float* out, int64_t out_stride) {
  for (int64_t r = 0; r < n_rows; ++r) {
    for (int64_t q = 0; q < n_queries; ++q) {
      float sum = 0.f;
      for (int64_t k = 0; k < dim; ++k) sum += queries[q * dim + k] * load_scalar<T>(rows, r * dim + k);
      out[q * out_stride + r] = sum;
    }
  }
}

// ---- AVX-512 ----

template <StorageType T>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) inline __m512 load16_avx512(const void* rows, int64_t offset,
                                                                                __mmask16 mask) {
  if constexpr (T == StorageType::kFloat32) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(rows) + offset);
  } else {
    __m256i half = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(rows) + offset);
    if constexpr (T == StorageType::kFloat16) return _mm512_cvtph_ps(half);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
  }
}

// One block of RB rows x QB queries: full 16-lane steps, then one masked tail step.
// The loops over the block are unrolled first (the pragmas) so that gcc keeps the
// RB x QB accumulators in registers; left as an indexed array it spills them every step.
template <StorageType T, int RB, int QB>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) inline void block_avx512(const float* queries,
                                                                                      const void* rows,
                                                                                      int64_t dim, float* out,
                                                                                      int64_t out_stride) {
  __m512 acc[QB][RB];
#pragma GCC unroll 16
  for (int q = 0; q < QB; ++q)
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) acc[q][r] = _mm512_setzero_ps();
  const int64_t body = dim - dim % 16;
  for (int64_t k = 0; k <= body; k += 16) {
    if (k == dim) break;
    const __mmask16 mask = k < body ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (dim - k)) - 1);
    __m512 row[RB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) row[r] = load16_avx512<T>(rows, r * dim + k, mask);
#pragma GCC unroll 16
    for (int q = 0; q < QB; ++q) {
      const __m512 query = _mm512_maskz_loadu_ps(mask, queries + q * dim + k);
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) acc[q][r] = _mm512_fmadd_ps(query, row[r], acc[q][r]);
    }
  }
#pragma GCC unroll 16
  for (int q = 0; q < QB; ++q)
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) out[q * out_stride + r] = _mm512_reduce_add_ps(acc[q][r]);
}

template <StorageType T, int QB>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) void rows_avx512(const float* queries, const void* rows,
                                                                     int64_t n_rows, int64_t dim, float* out,
                                                                     int64_t out_stride) {
  const size_t row_bytes = storage_bytes(T) * static_cast<size_t>(dim);
  const char* base = static_cast<const char*>(rows);
  int64_t r = 0;
  for (; r + 4 <= n_rows; r += 4) block_avx512<T, 4, QB>(queries, base + r * row_bytes, dim, out + r, out_stride);
  for (; r < n_rows; ++r) block_avx512<T, 1, QB>(queries, base + r * row_bytes, dim, out + r, out_stride);
}

template <StorageType T>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) void score_tile_avx512(const float* queries, int64_t n_queries,
                                                                            const void* rows, int64_t n_rows,
                                                                            int64_t dim, float* out,
                                                                            int64_t out_stride) {
  int64_t q = 0;
  for (; q + 4 <= n_queries; q += 4) rows_avx512<T, 4>(queries + q * dim, rows, n_rows, dim, out + q * out_stride, out_stride);
  for (; q < n_queries; ++q) rows_avx512<T, 1>(queries + q * dim, rows, n_rows, dim, out + q * out_stride, out_stride);
}

// ---- AVX2 ----

template <StorageType T>
__attribute__((target("avx2,f16c,fma"))) inline __m256 load8_avx2(const void* rows, int64_t offset) {
  if constexpr (T == StorageType::kFloat32) {
    return _mm256_loadu_ps(static_cast<const float*>(rows) + offset);
  } else {
    __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(rows) + offset));
    if constexpr (T == StorageType::kFloat16) return _mm256_cvtph_ps(half);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
  }
}

__attribute__((target("avx2,fma"))) inline float hsum_avx2(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
  return _mm_cvtss_f32(sum);
}

// As block_avx512 (the unroll pragmas keep the accumulators in registers); the tail is scalar.
template <StorageType T, int RB, int QB>
__attribute__((target("avx2,f16c,fma"))) inline void block_avx2(const float* queries, const void* rows, int64_t dim,
                                                                float* out, int64_t out_stride) {
  __m256 acc[QB][RB];
#pragma GCC unroll 16
  for (int q = 0; q < QB; ++q)
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) acc[q][r] = _mm256_setzero_ps();
  const int64_t body = dim - dim % 8;
  for (int64_t k = 0; k < body; k += 8) {
    __m256 row[RB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) row[r] = load8_avx2<T>(rows, r * dim + k);
#pragma GCC unroll 16
    for (int q = 0; q < QB; ++q) {
      const __m256 query = _mm256_loadu_ps(queries + q * dim + k);
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) acc[q][r] = _mm256_fmadd_ps(query, row[r], acc[q][r]);
    }
  }
  for (int q = 0; q < QB; ++q) {
    for (int r = 0; r < RB; ++r) {
      float sum = hsum_avx2(acc[q][r]);
      for (int64_t k = body; k < dim; ++k) sum += queries[q * dim + k] * load_scalar<T>(rows, r * dim + k);
      out[q * out_stride + r] = sum;
    }
  }
}

template <StorageType T, int QB>
__attribute__((target("avx2,f16c,fma"))) void rows_avx2(const float* queries, const void* rows, int64_t n_rows,
                                                        int64_t dim, float* out, int64_t out_stride) {
  const size_t row_bytes = storage_bytes(T) * static_cast<size_t>(dim);
  const char* base = static_cast<const char*>(rows);
  int64_t r = 0;
  for (; r + 2 <= n_rows; r += 2) block_avx2<T, 2, QB>(queries, base + r * row_bytes, dim, out + r, out_stride);
  for (; r < n_rows; ++r) block_avx2<T, 1, QB>(queries, base + r * row_bytes, dim, out + r, out_stride);
}

template <StorageType T>
__attribute__((target("avx2,f16c,fma"))) void score_tile_avx2(const float* queries, int64_t n_queries,
                                                              const void* rows, int64_t n_rows, int64_t dim,
                                                              float* out, int64_t out_stride) {
  int64_t q = 0;
  for (; q + 4 <= n_queries; q += 4) rows_avx2<T, 4>(queries + q * dim, rows, n_rows, dim, out + q * out_stride, out_stride);
  for (; q < n_queries; ++q) rows_avx2<T, 1>(queries + q * dim, rows, n_rows, dim, out + q * out_stride, out_stride);
}

enum class SimdLevel { kPortable, kAvx2, kAvx512 };

SimdLevel detect_simd() {
  // ATLAS_FAST_SIMD=avx2|portable caps the level: how the tests exercise the other paths on one CPU.
  const char* cap = std::getenv("ATLAS_FAST_SIMD");
  if (cap != nullptr && std::strcmp(cap, "portable") == 0) return SimdLevel::kPortable;
  const bool allow_avx512 = cap == nullptr || std::strcmp(cap, "avx2") != 0;
  __builtin_cpu_init();
  if (allow_avx512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return SimdLevel::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return SimdLevel::kAvx2;
  return SimdLevel::kPortable;
}

const SimdLevel kSimd = detect_simd();

template <StorageType T>
void score_tile_typed(const float* queries, int64_t n_queries, const void* rows, int64_t n_rows, int64_t dim,
                      float* out, int64_t out_stride) {
  switch (kSimd) {
    case SimdLevel::kAvx512:
      return score_tile_avx512<T>(queries, n_queries, rows, n_rows, dim, out, out_stride);
    case SimdLevel::kAvx2:
      return score_tile_avx2<T>(queries, n_queries, rows, n_rows, dim, out, out_stride);
    default:
      return score_tile_portable<T>(queries, n_queries, rows, n_rows, dim, out, out_stride);
  }
}

}  // namespace

size_t storage_bytes(StorageType type) { return type == StorageType::kFloat32 ? 4 : 2; }

void score_tile(StorageType type, const float* queries, int64_t n_queries, const void* rows, int64_t n_rows,
                int64_t dim, float* out, int64_t out_stride) {
  switch (type) {
    case StorageType::kFloat32:
      return score_tile_typed<StorageType::kFloat32>(queries, n_queries, rows, n_rows, dim, out, out_stride);
    case StorageType::kFloat16:
      return score_tile_typed<StorageType::kFloat16>(queries, n_queries, rows, n_rows, dim, out, out_stride);
    case StorageType::kBFloat16:
      return score_tile_typed<StorageType::kBFloat16>(queries, n_queries, rows, n_rows, dim, out, out_stride);
  }
}

void convert_from_float(StorageType type, const float* in, void* out, int64_t n) {
  if (type == StorageType::kFloat32) {
    std::memcpy(out, in, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  uint16_t* dst = static_cast<uint16_t*>(out);
  for (int64_t i = 0; i < n; ++i) dst[i] = type == StorageType::kFloat16 ? float_to_fp16(in[i]) : float_to_bf16(in[i]);
}

void convert_to_float(StorageType type, const void* in, float* out, int64_t n) {
  if (type == StorageType::kFloat32) {
    std::memcpy(out, in, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const uint16_t* src = static_cast<const uint16_t*>(in);
  for (int64_t i = 0; i < n; ++i) out[i] = type == StorageType::kFloat16 ? fp16_to_float(src[i]) : bf16_to_float(src[i]);
}

std::string simd_level() {
  switch (kSimd) {
    case SimdLevel::kAvx512:
      return "avx512";
    case SimdLevel::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

}  // namespace atlas_fast
