#include "score_tiles.h"

// The SIMD paths are x86's; elsewhere (aarch64) only the portable path is built.
#if defined(__x86_64__) || defined(__i386__)
#define ATLAS_FAST_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <type_traits>

namespace atlas_fast {

namespace {

// Prefetches share `part` (of `parts`) of the next tile's cache lines into L2 (locality 2: prefetcht1).
inline void prefetch_share(NextRows next, int64_t part, int64_t parts) {
  const int64_t lines = (next.bytes + 63) / 64;
  const char* base = static_cast<const char*>(next.rows);
  for (int64_t line = part * lines / parts, end = (part + 1) * lines / parts; line < end; ++line)
    __builtin_prefetch(base + 64 * line, 0, 2);
}

// Walks a tile of n_rows rows x n_queries queries in register blocks of 16 accumulators, each prefetching its
// share of the next tile: 8 queries x 2 rows (a pair of rows read once for all 8), then 4 x 4; each group's last
// rows one at a time, and the queries left over one at a time. blocks.template run<RB, QB>(q, r) scores the block
// of queries q .. q + QB - 1 and rows r .. r + RB - 1; blocks.one_query(q) every row against query q.
template <typename Blocks>
inline void walk_tile(const Blocks& blocks, int64_t n_queries, int64_t n_rows, NextRows next) {
  const int64_t parts = n_queries / 8 * (n_rows / 2) + n_queries % 8 / 4 * (n_rows / 4);
  int64_t q = 0, part = 0;
  for (; q + 8 <= n_queries; q += 8) {
    int64_t r = 0;
    for (; r + 2 <= n_rows; r += 2) {
      prefetch_share(next, part++, parts);
      blocks.template run<2, 8>(q, r);
    }
    for (; r < n_rows; ++r) blocks.template run<1, 8>(q, r);
  }
  for (; q + 4 <= n_queries; q += 4) {
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) {
      prefetch_share(next, part++, parts);
      blocks.template run<4, 4>(q, r);
    }
    for (; r < n_rows; ++r) blocks.template run<1, 4>(q, r);
  }
  for (; q < n_queries; ++q) blocks.one_query(q);
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

// int8 rows (offset bytes, storage.h) against int8 queries: exact int32 dot products, then both scales.
inline float int8_row_scale(const uint8_t* row, int64_t dim) {
  float scale;
  std::memcpy(&scale, row + int8_scale_offset(dim), sizeof scale);
  return scale;
}

void score_tile_int8_portable(const int8_t* queries, const float* query_scales, int64_t n_queries,
                              const uint8_t* rows, int64_t n_rows, int64_t dim, float* out, int64_t out_stride) {
  const size_t stride = row_bytes(StorageType::kInt8, dim);
  for (int64_t r = 0; r < n_rows; ++r) {
    const uint8_t* row = rows + r * stride;
    const float row_scale = int8_row_scale(row, dim);
    for (int64_t q = 0; q < n_queries; ++q) {
      int32_t sum = 0;
      for (int64_t k = 0; k < dim; ++k) sum += (static_cast<int32_t>(row[k]) - 128) * queries[q * dim + k];
      out[q * out_stride + r] = static_cast<float>(sum) * query_scales[q] * row_scale;
    }
  }
}

#ifdef ATLAS_FAST_X86
// ---- AVX-512 ----

// Lane-wise sums for lane_sums_16, of fp32 or int32 lanes.
__attribute__((target("avx512f"))) inline __m512 add_lanes(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
__attribute__((target("avx512f"))) inline __m512i add_lanes(__m512i a, __m512i b) { return _mm512_add_epi32(a, b); }
__attribute__((target("avx512f"))) inline __m512 as_ps(__m512 v) { return v; }
__attribute__((target("avx512f"))) inline __m512 as_ps(__m512i v) { return _mm512_castsi512_ps(v); }
template <typename V>
__attribute__((target("avx512f"))) inline V from_ps(__m512 v) {
  if constexpr (std::is_same_v<V, __m512>) return v; else return _mm512_castps_si512(v);
}

// The even 128-bit lanes of a, b plus their odd ones.
template <typename V>
__attribute__((target("avx512f"))) inline V fold_lane_groups(__m512 a, __m512 b) {
  return add_lanes(from_ps<V>(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0))),
                   from_ps<V>(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1))));
}

// The 16 lane sums of a block of 16 accumulators (QB queries x RB rows, fp32 or int32) in one vector, element
// q * RB + r = the sum of acc[q][r], in 45 shuffles and adds instead of 16 horizontal reductions of 8 each: a
// transpose-and-add over 128-bit lanes, 64-bit pairs, then 128-bit lane groups.
template <typename V, int QB, int RB>
__attribute__((target("avx512f"))) inline V lane_sums_16(const V (&acc)[QB][RB]) {
  static_assert(QB * RB == 16, "a block of 16 accumulators");
  V pairs[8];  // pairs[i], per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] of a = acc #2i, b = acc #2i+1
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    const __m512 a = as_ps(acc[2 * i / RB][2 * i % RB]), b = as_ps(acc[(2 * i + 1) / RB][(2 * i + 1) % RB]);
    pairs[i] = add_lanes(from_ps<V>(_mm512_unpacklo_ps(a, b)), from_ps<V>(_mm512_unpackhi_ps(a, b)));
  }
  __m512 quads[4];  // quads[i], per 128-bit lane L: the lane-L sums of accumulators 4i .. 4i+3
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const __m512d lo = _mm512_castps_pd(as_ps(pairs[2 * i])), hi = _mm512_castps_pd(as_ps(pairs[2 * i + 1]));
    quads[i] = as_ps(add_lanes(from_ps<V>(_mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi))),
                               from_ps<V>(_mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi)))));
  }
  return fold_lane_groups<V>(as_ps(fold_lane_groups<V>(quads[0], quads[1])),
                             as_ps(fold_lane_groups<V>(quads[2], quads[3])));
}

// Element q * RB + r of `sums` -> out[q * out_stride + r], RB = 4 (128-bit lane q to row q of out) or 2 (the
// halves of 128-bit lane L to rows 2L and 2L + 1).
template <int RB>
__attribute__((target("avx512f"))) inline void store_lanes_16(__m512 sums, float* out, int64_t out_stride) {
  static_assert(RB == 4 || RB == 2, "4 or 2 rows");
  const __m128 lanes[4] = {_mm512_castps512_ps128(sums), _mm512_extractf32x4_ps(sums, 1),
                           _mm512_extractf32x4_ps(sums, 2), _mm512_extractf32x4_ps(sums, 3)};
#pragma GCC unroll 4
  for (int lane = 0; lane < 4; ++lane) {
    if constexpr (RB == 4) {
      _mm_storeu_ps(out + lane * out_stride, lanes[lane]);
    } else {
      _mm_storel_pi(reinterpret_cast<__m64*>(out + 2 * lane * out_stride), lanes[lane]);
      _mm_storeh_pi(reinterpret_cast<__m64*>(out + (2 * lane + 1) * out_stride), lanes[lane]);
    }
  }
}

// out[q * out_stride + r] = the lane sum of acc[q][r]: the transpose-and-add for 16 accumulators, else one
// reduction each.
template <int RB, int QB>
__attribute__((target("avx512f"))) inline void store_block_sums(const __m512 (&acc)[QB][RB], float* out,
                                                               int64_t out_stride) {
  if constexpr (RB * QB == 16) {
    store_lanes_16<RB>(lane_sums_16(acc), out, out_stride);
  } else {
#pragma GCC unroll 16
    for (int q = 0; q < QB; ++q)
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) out[q * out_stride + r] = _mm512_reduce_add_ps(acc[q][r]);
  }
}

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
  store_block_sums<RB, QB>(acc, out, out_stride);
}

template <StorageType T, int QB>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) void rows_avx512(const float* queries, const void* rows,
                                                                     int64_t n_rows, int64_t dim, float* out,
                                                                     int64_t out_stride) {
  const size_t stride = row_bytes(T, dim);
  const char* base = static_cast<const char*>(rows);
  int64_t r = 0;
  for (; r + 4 <= n_rows; r += 4) block_avx512<T, 4, QB>(queries, base + r * stride, dim, out + r, out_stride);
  for (; r < n_rows; ++r) block_avx512<T, 1, QB>(queries, base + r * stride, dim, out + r, out_stride);
}

// One query: rows one after another, four accumulators per row (see rows_one_query_avx512bf16).
template <StorageType T>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) void rows_one_query_avx512(const float* query,
                                                                                      const void* rows,
                                                                                      int64_t n_rows, int64_t dim,
                                                                                      float* out) {
  const int64_t body = dim - dim % 64;
  const __mmask16 all = static_cast<__mmask16>(0xffff);
  for (int64_t r = 0; r < n_rows; ++r) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k < body; k += 64) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u)
        acc[u] = _mm512_fmadd_ps(_mm512_loadu_ps(query + k + 16 * u), load16_avx512<T>(rows, r * dim + k + 16 * u, all),
                                 acc[u]);
    }
    for (; k < dim; k += 16) {
      const __mmask16 mask = dim - k >= 16 ? all : static_cast<__mmask16>((1u << (dim - k)) - 1);
      acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, query + k), load16_avx512<T>(rows, r * dim + k, mask),
                               acc[0]);
    }
    out[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  }
}

template <StorageType T>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) void score_tile_avx512(const float* queries, int64_t n_queries,
                                                                            const void* rows, int64_t n_rows,
                                                                            int64_t dim, float* out,
                                                                            int64_t out_stride) {
  int64_t q = 0;
  for (; q + 4 <= n_queries; q += 4) rows_avx512<T, 4>(queries + q * dim, rows, n_rows, dim, out + q * out_stride, out_stride);
  for (; q < n_queries; ++q) rows_one_query_avx512<T>(queries + q * dim, rows, n_rows, dim, out + q * out_stride);
}

// ---- AVX-512 BF16 (vdpbf16ps): bf16 rows against bf16 queries, fp32 accumulation ----

// As block_avx512, 32 bf16 pairs a step: each vdpbf16ps multiplies 32 row values by 32 query values and adds
// the pairwise sums to 16 fp32 lanes.
template <int RB, int QB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void block_avx512bf16(
    const uint16_t* queries, const uint16_t* rows, int64_t dim, float* out, int64_t out_stride) {
  __m512 acc[QB][RB];
#pragma GCC unroll 16
  for (int q = 0; q < QB; ++q)
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) acc[q][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < dim; k += 32) {
    const __mmask32 mask = dim - k >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1ull << (dim - k)) - 1);
    __m512bh row[RB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) row[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, rows + r * dim + k);
#pragma GCC unroll 16
    for (int q = 0; q < QB; ++q) {
      const __m512bh query = (__m512bh)_mm512_maskz_loadu_epi16(mask, queries + q * dim + k);
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) acc[q][r] = _mm512_dpbf16_ps(acc[q][r], query, row[r]);
    }
  }
  store_block_sums<RB, QB>(acc, out, out_stride);
}

// One query: rows one after another (a linear stream the hardware prefetcher follows at full speed, where
// the 4-row blocks of the batched kernel interleave four short streams), four accumulators per row so that
// consecutive vdpbf16ps do not wait on each other.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void rows_one_query_avx512bf16(
    const uint16_t* query, const uint16_t* rows, int64_t n_rows, int64_t dim, float* out) {
  const int64_t body = dim - dim % 128;
  for (int64_t r = 0; r < n_rows; ++r) {
    const uint16_t* row = rows + r * dim;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k < body; k += 128) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        // Four rows ahead: measured 10-20% faster than the hardware prefetcher alone at N = 1M (a prefetch
        // past the end of the rows never faults).
        _mm_prefetch(reinterpret_cast<const char*>(row + 4 * dim + k + 32 * u), _MM_HINT_T0);
        acc[u] = _mm512_dpbf16_ps(acc[u], (__m512bh)_mm512_loadu_si512(query + k + 32 * u),
                                  (__m512bh)_mm512_loadu_si512(row + k + 32 * u));
      }
    }
    for (; k < dim; k += 32) {
      const __mmask32 mask = dim - k >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1ull << (dim - k)) - 1);
      acc[0] = _mm512_dpbf16_ps(acc[0], (__m512bh)_mm512_maskz_loadu_epi16(mask, query + k),
                                (__m512bh)_mm512_maskz_loadu_epi16(mask, row + k));
    }
    out[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  }
}

// walk_tile's blocks for bf16 rows.
struct Bf16Blocks {
  const uint16_t* queries;
  const uint16_t* rows;
  int64_t n_rows, dim;
  float* out;
  int64_t out_stride;
  template <int RB, int QB>
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void run(int64_t q, int64_t r) const {
    block_avx512bf16<RB, QB>(queries + q * dim, rows + r * dim, dim, out + q * out_stride + r, out_stride);
  }
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void one_query(int64_t q) const {
    rows_one_query_avx512bf16(queries + q * dim, rows, n_rows, dim, out + q * out_stride);
  }
};

void score_tile_avx512bf16(const uint16_t* queries, int64_t n_queries, const uint16_t* rows, int64_t n_rows,
                           int64_t dim, float* out, int64_t out_stride, NextRows next) {
  walk_tile(Bf16Blocks{queries, rows, n_rows, dim, out, out_stride}, n_queries, n_rows, next);
}

// ---- AVX-512 VNNI (vpdpbusd): int8 rows against int8 queries, int32 accumulation ----

// The queries of a search in int8 form: values (n x dim), scales, and sums of values (vpdpbusd's offset rows add
// 128 times a query's sum to its dot products, taken off when the score is finished).
struct Int8Queries {
  const int8_t* values;
  const float* scales;
  const int32_t* sums;
};

// As block_avx512bf16, 64 byte products a step: vpdpbusd multiplies the rows' unsigned bytes (q + 128) by the
// query's signed ones and adds each group of four to an int32 lane. The block's scores are finished in
// registers: (sum - 128 sum(query)) * query scale * row scale.
template <int RB, int QB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) inline void block_int8_vnni(
    Int8Queries query_set, const uint8_t* rows, size_t stride, int64_t dim, float* out, int64_t out_stride) {
  const int8_t* queries = query_set.values;
  __m512i acc[QB][RB];
#pragma GCC unroll 16
  for (int q = 0; q < QB; ++q)
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) acc[q][r] = _mm512_setzero_si512();
  for (int64_t k = 0; k < dim; k += 64) {
    const __mmask64 mask = dim - k >= 64 ? ~__mmask64{0} : static_cast<__mmask64>((1ull << (dim - k)) - 1);
    __m512i row[RB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) row[r] = _mm512_maskz_loadu_epi8(mask, rows + r * stride + k);
#pragma GCC unroll 16
    for (int q = 0; q < QB; ++q) {
      const __m512i query = _mm512_maskz_loadu_epi8(mask, queries + q * dim + k);
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) acc[q][r] = _mm512_dpbusd_epi32(acc[q][r], row[r], query);
    }
  }
  // Multiplied as the other paths do, ((sum - offset) * query) * row. The sums stay below 2^24 (255 * 127 * dim for
  // dim < 518), or their fp32 rounding is the same as theirs.
  if constexpr (RB * QB == 16) {  // element q * RB + r: query q, row r
    const __m512i query_of = _mm512_srli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               RB == 4 ? 2 : 1);
    const __mmask16 queries_in = static_cast<__mmask16>((1u << QB) - 1);
    const __m512 offsets = _mm512_mul_ps(
        _mm512_set1_ps(128.f),
        _mm512_cvtepi32_ps(_mm512_permutexvar_epi32(query_of, _mm512_maskz_loadu_epi32(queries_in, query_set.sums))));
    const __m512 query_scales = _mm512_permutexvar_ps(query_of, _mm512_maskz_loadu_ps(queries_in, query_set.scales));
    const __m512 row_scales = _mm512_broadcast_f32x4(_mm_setr_ps(
        int8_row_scale(rows, dim), int8_row_scale(rows + 1 % RB * stride, dim),
        int8_row_scale(rows + 2 % RB * stride, dim), int8_row_scale(rows + 3 % RB * stride, dim)));
    const __m512 shifted = _mm512_sub_ps(_mm512_cvtepi32_ps(lane_sums_16(acc)), offsets);
    store_lanes_16<RB>(_mm512_mul_ps(_mm512_mul_ps(shifted, query_scales), row_scales), out, out_stride);
  } else {
    for (int q = 0; q < QB; ++q) {
      const float offset = 128.f * static_cast<float>(query_set.sums[q]);
      for (int r = 0; r < RB; ++r)
        out[q * out_stride + r] = (static_cast<float>(_mm512_reduce_add_epi32(acc[q][r])) - offset) *
                                  query_set.scales[q] * int8_row_scale(rows + r * stride, dim);
    }
  }
}

// One query: rows one after another, four accumulators per row, four rows prefetched ahead (as
// rows_one_query_avx512bf16).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void rows_one_query_int8_vnni(
    Int8Queries query_set, const uint8_t* rows, size_t stride, int64_t n_rows, int64_t dim, float* out) {
  const int8_t* query = query_set.values;
  const float offset = 128.f * static_cast<float>(query_set.sums[0]);
  const int64_t body = dim - dim % 256;
  for (int64_t r = 0; r < n_rows; ++r) {
    const uint8_t* row = rows + r * stride;
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                      _mm512_setzero_si512()};
    int64_t k = 0;
    for (; k < body; k += 256) {
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        _mm_prefetch(reinterpret_cast<const char*>(row + 4 * stride + k + 64 * u), _MM_HINT_T0);
        acc[u] = _mm512_dpbusd_epi32(acc[u], _mm512_loadu_si512(row + k + 64 * u),
                                     _mm512_loadu_si512(query + k + 64 * u));
      }
    }
    for (; k < dim; k += 64) {
      const __mmask64 mask = dim - k >= 64 ? ~__mmask64{0} : static_cast<__mmask64>((1ull << (dim - k)) - 1);
      acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_maskz_loadu_epi8(mask, row + k),
                                   _mm512_maskz_loadu_epi8(mask, query + k));
    }
    const __m512i total = _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]));
    out[r] = (static_cast<float>(_mm512_reduce_add_epi32(total)) - offset) * query_set.scales[0] *
             int8_row_scale(row, dim);
  }
}

// walk_tile's blocks for int8 rows.
struct Int8Blocks {
  Int8Queries queries;
  const uint8_t* rows;
  int64_t n_rows, dim;
  float* out;
  int64_t out_stride;
  Int8Queries from(int64_t q) const {
    return {queries.values + q * dim, queries.scales + q, queries.sums + q};
  }
  template <int RB, int QB>
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void run(int64_t q, int64_t r) const {
    const size_t stride = row_bytes(StorageType::kInt8, dim);
    block_int8_vnni<RB, QB>(from(q), rows + r * stride, stride, dim, out + q * out_stride + r, out_stride);
  }
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void one_query(int64_t q) const {
    rows_one_query_int8_vnni(from(q), rows, row_bytes(StorageType::kInt8, dim), n_rows, dim, out + q * out_stride);
  }
};

void score_tile_int8_vnni(Int8Queries queries, int64_t n_queries, const uint8_t* rows, int64_t n_rows, int64_t dim,
                          float* out, int64_t out_stride, NextRows next) {
  walk_tile(Int8Blocks{queries, rows, n_rows, dim, out, out_stride}, n_queries, n_rows, next);
}

// ---- AVX-512 VNNI, many queries: a row's bytes broadcast against 16 queries a vector ----

// block_int8_vnni keeps one accumulator per (query, row) pair and folds its 16 lanes into one sum at the end. An
// int8 pair of d = 768 takes only 12 vpdpbusd, so that fold and the finishing of each score weigh a third as much
// again as the products. Here the queries come interleaved (QueryPanel::int8_lanes: lane i of vector v holds 4
// bytes of query 16v + i), and 4 bytes of a row, broadcast to every lane, meet 16 queries in one vpdpbusd: each
// lane ends holding one whole dot product, and nothing is folded.

// The fewest queries a tile call scores this way. Up to 8, block_int8_vnni measured faster (8 queries at N = 1M:
// 32 ms against 44 ms in 256-bit registers and 49 ms in 512-bit ones, half their lanes padding); from 12 on, this
// kernel (12 queries: 43 against 54 ms, 16: 53 against 73 ms).
constexpr int64_t kBroadcastQueries = 9;

// Where one search's interleaved queries are: vector v, step s (bytes 4s .. 4s + 3) at values + (v * steps + s) * 64;
// their sums and scales padded with zeros to whole vectors.
struct Int8Lanes {
  const int8_t* values;
  int64_t steps;
  const int32_t* sums;
  const float* scales;
};

constexpr int broadcast_rows(int vectors) { return std::min(8, 16 / vectors); }

// scores[r * lanes_stride + 16v + i] = the score of row r against lane i of vector v, for RB rows x VB vectors.
template <int RB, int VB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) inline void block_int8_broadcast(
    Int8Lanes lanes, const uint8_t* rows, size_t stride, int64_t dim, float* scores, int64_t lanes_stride) {
  __m512i acc[RB][VB];
#pragma GCC unroll 32
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < VB; ++v) acc[r][v] = _mm512_setzero_si512();
  for (int64_t s = 0; s < lanes.steps; ++s) {
    __m512i query[VB];
#pragma GCC unroll 4
    for (int v = 0; v < VB; ++v) query[v] = _mm512_loadu_si512(lanes.values + (v * lanes.steps + s) * 64);
#pragma GCC unroll 32
    for (int r = 0; r < RB; ++r) {
      int32_t word;  // bytes 4s .. 4s + 3 lie inside the row (its scale starts at dim rounded up to 4)
      std::memcpy(&word, rows + r * stride + 4 * s, sizeof word);
      const __m512i row = _mm512_set1_epi32(word);
#pragma GCC unroll 4
      for (int v = 0; v < VB; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], row, query[v]);
    }
  }
  __m512 offsets[VB], scales[VB];
#pragma GCC unroll 4
  for (int v = 0; v < VB; ++v) {
    offsets[v] = _mm512_mul_ps(_mm512_set1_ps(128.f), _mm512_cvtepi32_ps(_mm512_loadu_si512(lanes.sums + 16 * v)));
    scales[v] = _mm512_loadu_ps(lanes.scales + 16 * v);
  }
#pragma GCC unroll 32
  for (int r = 0; r < RB; ++r) {
    const __m512 row_scale = _mm512_set1_ps(int8_row_scale(rows + r * stride, dim));
#pragma GCC unroll 4
    for (int v = 0; v < VB; ++v) {  // as the other paths: ((sum - offset) * query scale) * row scale
      const __m512 shifted = _mm512_sub_ps(_mm512_cvtepi32_ps(acc[r][v]), offsets[v]);
      _mm512_storeu_ps(scores + r * lanes_stride + 16 * v, _mm512_mul_ps(_mm512_mul_ps(shifted, scales[v]), row_scale));
    }
  }
}

// All rows against VB vectors of queries: blocks of RB rows, then one row at a time. Blocks of at most 16
// accumulators and 8 rows: with more gcc keeps the accumulators or the row pointers on the stack.
template <int VB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void rows_int8_broadcast(
    Int8Lanes lanes, const uint8_t* rows, size_t stride, int64_t n_rows, int64_t dim, float* scores,
    int64_t lanes_stride, NextRows next, int64_t& part, int64_t parts) {
  constexpr int RB = broadcast_rows(VB);
  int64_t r = 0;
  for (; r + RB <= n_rows; r += RB) {
    prefetch_share(next, part++, parts);
    block_int8_broadcast<RB, VB>(lanes, rows + r * stride, stride, dim, scores + r * lanes_stride, lanes_stride);
  }
  for (; r < n_rows; ++r)
    block_int8_broadcast<1, VB>(lanes, rows + r * stride, stride, dim, scores + r * lanes_stride, lanes_stride);
}

// In place: lane j of vector i <-> lane i of vector j (unpack 32- and 64-bit pairs, then swap 128-bit lanes twice).
__attribute__((target("avx512f"))) inline void transpose_16x16(__m512i (&v)[16]) {
  __m512i t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  // u[4i + c], per 128-bit lane L: element 4L + c of vectors 4i .. 4i + 3.
  __m512i u[16];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m512i even_lo = _mm512_shuffle_i32x4(u[c], u[4 + c], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512i odd_lo = _mm512_shuffle_i32x4(u[c], u[4 + c], _MM_SHUFFLE(3, 1, 3, 1));
    const __m512i even_hi = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512i odd_hi = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], _MM_SHUFFLE(3, 1, 3, 1));
    v[c] = _mm512_shuffle_i32x4(even_lo, even_hi, _MM_SHUFFLE(2, 0, 2, 0));
    v[8 + c] = _mm512_shuffle_i32x4(even_lo, even_hi, _MM_SHUFFLE(3, 1, 3, 1));
    v[4 + c] = _mm512_shuffle_i32x4(odd_lo, odd_hi, _MM_SHUFFLE(2, 0, 2, 0));
    v[12 + c] = _mm512_shuffle_i32x4(odd_lo, odd_hi, _MM_SHUFFLE(3, 1, 3, 1));
  }
}

// out[q * out_stride + r] = scores[r * lanes_stride + q] for q < n_queries, r < n_rows (scores holds n_rows rounded
// up to 16 rows), 16 x 16 at a time.
__attribute__((target("avx512f"))) void store_transposed(const float* scores, int64_t lanes_stride, int64_t n_rows,
                                                         int64_t n_queries, float* out, int64_t out_stride) {
  for (int64_t r = 0; r < n_rows; r += 16) {
    const __mmask16 valid = n_rows - r >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n_rows - r)) - 1);
    for (int64_t q = 0; q < n_queries; q += 16) {
      __m512i block[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) block[i] = _mm512_loadu_si512(scores + (r + i) * lanes_stride + q);
      transpose_16x16(block);
      for (int64_t j = 0; j < std::min<int64_t>(16, n_queries - q); ++j)
        _mm512_mask_storeu_ps(out + (q + j) * out_stride + r, valid, _mm512_castsi512_ps(block[j]));
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void score_tile_int8_broadcast(
    Int8Lanes lanes, int64_t n_queries, const uint8_t* rows, int64_t n_rows, int64_t dim, float* out,
    int64_t out_stride, NextRows next) {
  const size_t stride = row_bytes(StorageType::kInt8, dim);
  const int64_t vectors = (n_queries + 15) / 16, lanes_stride = 16 * vectors;
  thread_local std::vector<float> scores;  // rows x lanes, the tile's scores before the transpose
  scores.resize(static_cast<size_t>((n_rows + 15) / 16 * 16 * lanes_stride));
  int64_t parts = 0;
  for (int64_t v = 0; v < vectors; v += 4) parts += n_rows / broadcast_rows(static_cast<int>(std::min<int64_t>(4, vectors - v)));
  int64_t part = 0;
  for (int64_t v = 0; v < vectors; v += 4) {
    const Int8Lanes from{lanes.values + v * lanes.steps * 64, lanes.steps, lanes.sums + 16 * v, lanes.scales + 16 * v};
    float* block_scores = scores.data() + 16 * v;
    switch (std::min<int64_t>(4, vectors - v)) {
      case 1: rows_int8_broadcast<1>(from, rows, stride, n_rows, dim, block_scores, lanes_stride, next, part, parts); break;
      case 2: rows_int8_broadcast<2>(from, rows, stride, n_rows, dim, block_scores, lanes_stride, next, part, parts); break;
      case 3: rows_int8_broadcast<3>(from, rows, stride, n_rows, dim, block_scores, lanes_stride, next, part, parts); break;
      default: rows_int8_broadcast<4>(from, rows, stride, n_rows, dim, block_scores, lanes_stride, next, part, parts);
    }
  }
  store_transposed(scores.data(), lanes_stride, n_rows, n_queries, out, out_stride);
}

// Pushes the scores at or above the selector's threshold, 16 compared at once.
__attribute__((target("avx512f"))) void push_candidates_avx512(const float* scores, const int64_t* ids, int64_t n,
                                                               TopK& selector) {
  for (int64_t r = 0; r < n; r += 16) {
    const __mmask16 valid = n - r >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - r)) - 1);
    const __m512 block = _mm512_maskz_loadu_ps(valid, scores + r);
    uint32_t entering = _mm512_mask_cmp_ps_mask(valid, block, _mm512_set1_ps(selector.threshold()), _CMP_GE_OQ);
    while (entering) {  // push() re-checks against the threshold, which each push may raise
      const int lane = __builtin_ctz(entering);
      entering &= entering - 1;
      selector.push(scores[r + lane], ids[r + lane]);
    }
  }
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
  const size_t stride = row_bytes(T, dim);
  const char* base = static_cast<const char*>(rows);
  int64_t r = 0;
  for (; r + 2 <= n_rows; r += 2) block_avx2<T, 2, QB>(queries, base + r * stride, dim, out + r, out_stride);
  for (; r < n_rows; ++r) block_avx2<T, 1, QB>(queries, base + r * stride, dim, out + r, out_stride);
}

template <StorageType T>
__attribute__((target("avx2,f16c,fma"))) void score_tile_avx2(const float* queries, int64_t n_queries,
                                                              const void* rows, int64_t n_rows, int64_t dim,
                                                              float* out, int64_t out_stride) {
  int64_t q = 0;
  for (; q + 4 <= n_queries; q += 4) rows_avx2<T, 4>(queries + q * dim, rows, n_rows, dim, out + q * out_stride, out_stride);
  for (; q < n_queries; ++q) rows_avx2<T, 1>(queries + q * dim, rows, n_rows, dim, out + q * out_stride, out_stride);
}

// int8 rows on AVX2: 16 bytes a step widened to int16 (rows back to signed: q + 128 xor 0x80 = q), vpmaddwd
// pairs into int32 lanes; exact, as the portable path. Two rows x four queries per block; the tail is scalar.
__attribute__((target("avx2"))) inline int32_t hsum_epi32_avx2(__m256i v) {
  __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(1, 0, 3, 2)));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(sum);
}

template <int RB, int QB>
__attribute__((target("avx2"))) inline void block_int8_avx2(const int8_t* queries, const float* query_scales,
                                                            const uint8_t* rows, size_t stride, int64_t dim,
                                                            float* out, int64_t out_stride) {
  __m256i acc[QB][RB];
#pragma GCC unroll 16
  for (int q = 0; q < QB; ++q)
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) acc[q][r] = _mm256_setzero_si256();
  const __m128i offset = _mm_set1_epi8(static_cast<char>(0x80));
  const int64_t body = dim - dim % 16;
  for (int64_t k = 0; k < body; k += 16) {
    __m256i row[RB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r)
      row[r] = _mm256_cvtepi8_epi16(
          _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + r * stride + k)), offset));
#pragma GCC unroll 16
    for (int q = 0; q < QB; ++q) {
      const __m256i query =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(queries + q * dim + k)));
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) acc[q][r] = _mm256_add_epi32(acc[q][r], _mm256_madd_epi16(query, row[r]));
    }
  }
  for (int q = 0; q < QB; ++q) {
    for (int r = 0; r < RB; ++r) {
      const uint8_t* row = rows + r * stride;
      int32_t sum = hsum_epi32_avx2(acc[q][r]);
      for (int64_t k = body; k < dim; ++k) sum += (static_cast<int32_t>(row[k]) - 128) * queries[q * dim + k];
      out[q * out_stride + r] = static_cast<float>(sum) * query_scales[q] * int8_row_scale(row, dim);
    }
  }
}

template <int QB>
__attribute__((target("avx2"))) void rows_int8_avx2(const int8_t* queries, const float* query_scales,
                                                    const uint8_t* rows, int64_t n_rows, int64_t dim, float* out,
                                                    int64_t out_stride) {
  const size_t stride = row_bytes(StorageType::kInt8, dim);
  int64_t r = 0;
  for (; r + 2 <= n_rows; r += 2)
    block_int8_avx2<2, QB>(queries, query_scales, rows + r * stride, stride, dim, out + r, out_stride);
  for (; r < n_rows; ++r)
    block_int8_avx2<1, QB>(queries, query_scales, rows + r * stride, stride, dim, out + r, out_stride);
}

__attribute__((target("avx2"))) void score_tile_int8_avx2(const int8_t* queries, const float* query_scales,
                                                          int64_t n_queries, const uint8_t* rows, int64_t n_rows,
                                                          int64_t dim, float* out, int64_t out_stride) {
  int64_t q = 0;
  for (; q + 4 <= n_queries; q += 4)
    rows_int8_avx2<4>(queries + q * dim, query_scales + q, rows, n_rows, dim, out + q * out_stride, out_stride);
  for (; q < n_queries; ++q)
    rows_int8_avx2<1>(queries + q * dim, query_scales + q, rows, n_rows, dim, out + q * out_stride, out_stride);
}

bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

// cpuid leaf 7: subleaf 1 EAX bit 5 = AVX512_BF16; subleaf 0 EDX bits 22 and 24 = AMX-BF16 and AMX-TILE.
bool cpu_has_avx512bf16() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && ((eax >> 5) & 1u);
}

bool cpu_has_amx_bf16() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && ((edx >> 22) & 1u) && ((edx >> 24) & 1u);
}

// The widest level cpuid reports (every CPU with AVX512-BF16 also has VNNI; one without is taken for avx512).
SimdLevel widest_level() {
  __builtin_cpu_init();
  SimdLevel widest = SimdLevel::kPortable;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    widest = SimdLevel::kAvx2;
  if (cpu_has_avx512()) {
    widest = SimdLevel::kAvx512;
    if (__builtin_cpu_supports("avx512vnni"))
      widest = cpu_has_avx512bf16() ? SimdLevel::kAvx512Bf16 : SimdLevel::kAvx512Vnni;
  }
  return widest;
}
#else
SimdLevel widest_level() { return SimdLevel::kPortable; }
bool cpu_has_amx_bf16() { return false; }
#endif  // ATLAS_FAST_X86

struct Selection {
  SimdLevel level;
  std::string error;  // non-empty: ATLAS_FAST_SIMD asked for what cannot run (level is then the widest one)
};

// The widest level cpuid reports, or the one ATLAS_FAST_SIMD forces (how the tests run every path on one CPU).
Selection select_level() {
  const SimdLevel widest = widest_level();
  const char* forced = std::getenv("ATLAS_FAST_SIMD");
  if (forced == nullptr || *forced == '\0') return {widest, ""};
  const std::string name(forced);
  const std::string prefix = "ATLAS_FAST_SIMD=" + name + ": ";
  if (name == "amx")
    return {widest, prefix + (cpu_has_amx_bf16() ? "this build has no AMX path yet (AMX-BF16 and AMX-INT8 were "
                                                   "never run on an AMX machine); the widest path here is "
                                                 : "this CPU has no AMX-BF16; the widest path here is ") +
                        level_name(widest)};
  for (SimdLevel level :
       {SimdLevel::kAvx512Bf16, SimdLevel::kAvx512Vnni, SimdLevel::kAvx512, SimdLevel::kAvx2, SimdLevel::kPortable}) {
    if (name != level_name(level)) continue;
    if (level > widest) return {widest, prefix + "this CPU cannot run it; the widest path here is " + level_name(widest)};
    return {level, ""};
  }
  return {widest, prefix + "expected one of amx, avx512bf16, avx512vnni, avx512, avx2, portable"};
}

const Selection kSelection = select_level();
const SimdLevel kSimd = kSelection.level;

template <StorageType T>
void score_tile_typed(SimdLevel path, const float* queries, int64_t n_queries, const void* rows, int64_t n_rows,
                      int64_t dim, float* out, int64_t out_stride) {
#ifdef ATLAS_FAST_X86
  switch (path) {
    case SimdLevel::kAvx512:
      return score_tile_avx512<T>(queries, n_queries, rows, n_rows, dim, out, out_stride);
    case SimdLevel::kAvx2:
      return score_tile_avx2<T>(queries, n_queries, rows, n_rows, dim, out, out_stride);
    default:
      break;
  }
#endif
  return score_tile_portable<T>(queries, n_queries, rows, n_rows, dim, out, out_stride);
}

void score_tile_int8(const QueryPanel& panel, int64_t first_query, int64_t n_queries, const uint8_t* rows,
                     int64_t n_rows, float* out, int64_t out_stride, NextRows next) {
  const int64_t dim = panel.dim();
  const int8_t* queries = panel.int8() + first_query * dim;
  const float* scales = panel.int8_scales() + first_query;
#ifdef ATLAS_FAST_X86
  if (panel.path() == SimdLevel::kAvx512Vnni && n_queries >= kBroadcastQueries) {
    const int64_t vector = first_query / 16, steps = panel.int8_steps();
    return score_tile_int8_broadcast({panel.int8_lanes() + vector * steps * 64, steps, panel.int8_sums() + first_query,
                                      scales},
                                     n_queries, rows, n_rows, dim, out, out_stride, next);
  }
  if (panel.path() == SimdLevel::kAvx512Vnni)
    return score_tile_int8_vnni({queries, scales, panel.int8_sums() + first_query}, n_queries, rows, n_rows, dim, out,
                                out_stride, next);
  if (panel.path() == SimdLevel::kAvx2)
    return score_tile_int8_avx2(queries, scales, n_queries, rows, n_rows, dim, out, out_stride);
#endif
  score_tile_int8_portable(queries, scales, n_queries, rows, n_rows, dim, out, out_stride);
}

}  // namespace

const char* level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kAvx512Bf16:
      return "avx512bf16";
    case SimdLevel::kAvx512Vnni:
      return "avx512vnni";
    case SimdLevel::kAvx512:
      return "avx512";
    case SimdLevel::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

SimdLevel path_for(StorageType type) {
  if (type == StorageType::kInt8) {
    if (kSimd >= SimdLevel::kAvx512Vnni) return SimdLevel::kAvx512Vnni;
    return kSimd >= SimdLevel::kAvx2 ? SimdLevel::kAvx2 : SimdLevel::kPortable;
  }
  if (type == StorageType::kBFloat16 && kSimd == SimdLevel::kAvx512Bf16) return kSimd;
  return std::min(kSimd, SimdLevel::kAvx512);
}

QueryPanel::QueryPanel(StorageType type, const float* queries, int64_t n_queries, int64_t dim)
    : type_(type), path_(path_for(type)), queries_(queries), dim_(dim) {
  // Converted once per search, not once per tile.
  if (path_ == SimdLevel::kAvx512Bf16) {
    bf16_.resize(static_cast<size_t>(n_queries * dim));
    for (int64_t i = 0; i < n_queries * dim; ++i) bf16_[i] = float_to_bf16(queries[i]);
  }
  if (type == StorageType::kInt8) {  // each query its own symmetric scale, as the rows
    int8_.resize(static_cast<size_t>(n_queries * dim));
    int8_scales_.resize(static_cast<size_t>(n_queries));
    int8_sums_.resize(static_cast<size_t>(n_queries));
    for (int64_t q = 0; q < n_queries; ++q) {
      int8_t* values = int8_.data() + q * dim;
      int8_scales_[q] = quantise_int8(queries + q * dim, values, dim);
      int8_sums_[q] = std::accumulate(values, values + dim, int32_t{0});
    }
  }
  if (path_ == SimdLevel::kAvx512Vnni) {  // the lanes of score_tile_int8_broadcast, zero past dim and n_queries
    const int64_t vectors = (n_queries + 15) / 16;
    int8_lanes_.assign(static_cast<size_t>(vectors * int8_steps() * 64), 0);
    for (int64_t q = 0; q < n_queries; ++q)
      for (int64_t k = 0; k < dim; ++k)
        int8_lanes_[((q / 16) * int8_steps() + k / 4) * 64 + (q % 16) * 4 + k % 4] = int8_[q * dim + k];
    int8_scales_.resize(static_cast<size_t>(16 * vectors));
    int8_sums_.resize(static_cast<size_t>(16 * vectors));
  }
}

void score_tile(const QueryPanel& panel, int64_t first_query, int64_t n_queries, const void* rows, int64_t n_rows,
                float* out, int64_t out_stride, NextRows next) {
  const int64_t dim = panel.dim();
#ifdef ATLAS_FAST_X86
  if (panel.path() == SimdLevel::kAvx512Bf16)
    return score_tile_avx512bf16(panel.bf16() + first_query * dim, n_queries, static_cast<const uint16_t*>(rows),
                                 n_rows, dim, out, out_stride, next);
#endif
  const float* queries = panel.fp32() + first_query * dim;
  const SimdLevel path = panel.path();
  switch (panel.type()) {
    case StorageType::kFloat32:
      return score_tile_typed<StorageType::kFloat32>(path, queries, n_queries, rows, n_rows, dim, out, out_stride);
    case StorageType::kFloat16:
      return score_tile_typed<StorageType::kFloat16>(path, queries, n_queries, rows, n_rows, dim, out, out_stride);
    case StorageType::kBFloat16:
      return score_tile_typed<StorageType::kBFloat16>(path, queries, n_queries, rows, n_rows, dim, out, out_stride);
    case StorageType::kInt8:
      return score_tile_int8(panel, first_query, n_queries, static_cast<const uint8_t*>(rows), n_rows, out,
                             out_stride, next);
  }
}

void push_candidates(const float* scores, const int64_t* ids, int64_t n, TopK& selector) {
#ifdef ATLAS_FAST_X86
  if (kSimd >= SimdLevel::kAvx512) return push_candidates_avx512(scores, ids, n, selector);
#endif
  for (int64_t r = 0; r < n; ++r)
    if (selector.may_enter(scores[r])) selector.push(scores[r], ids[r]);
}

std::string simd_level() { return level_name(kSimd); }

std::string simd_error() { return kSelection.error; }

}  // namespace atlas_fast
