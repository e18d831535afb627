#include "score_tiles.h"

#include <immintrin.h>

#include <cstdlib>
#include <cstring>

namespace atlas_fast {

namespace {

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
