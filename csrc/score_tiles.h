// Inner products between a group of queries and a tile of stored rows, and the threshold test of top-k.
//
// The stored rows are fp32, fp16, bf16 or int8. Float rows are accumulated in fp32; int8 rows
// against queries quantised to int8 once per search (one scale per query) in int32, then scaled.
// Each kernel is register-blocked (4 rows x 4 queries, or 2 rows x 8 queries on the bf16 and int8
// paths: 16 accumulators) so that each row vector loaded from memory is used by several queries
// and each query vector by several rows: the database is streamed once per query group, which is
// what makes batched search cheaper than one scan per query.
//
// The path is chosen once at run time from cpuid (ATLAS_FAST_SIMD forces a narrower one):
// - avx512bf16: bf16 rows against queries rounded to bf16 once per search (vdpbf16ps, fp32
//   accumulation; AMD Zen 4, Intel Cooper Lake and later); fp32/fp16 rows take the avx512 path,
//   int8 rows the avx512vnni one;
// - avx512vnni: int8 rows (vpdpbusd: 64 byte products a step, int32 accumulation; Intel Ice Lake
//   and later, AMD Zen 4); float rows take the avx512 path. From 9 queries a tile call, 4 bytes of a
//   row are broadcast against 16 queries interleaved in a vector, so that no lanes are folded.
//   AMX-INT8 (Sapphire Rapids) is not used: no AMX machine has run this code, so a path for it could
//   not be tested;
// - avx512 (F, BW, VL with F16C): rows widened to fp32 in registers, fp32 queries, FMA;
// - avx2 (with FMA and F16C; int8 rows widened to int16, vpmaddwd), or portable C++: the only path off x86
//   (aarch64 builds it alone). Under ATLAS_FAST_SIMD=avx512, int8 rows take the avx2 path.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "storage.h"
#include "topk.h"

namespace atlas_fast {

// The SIMD levels, narrowest first: the CPU's (the widest it runs) and the path each storage type takes.
enum class SimdLevel : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3, kAvx512Bf16 = 4 };

// "portable", "avx2", "avx512", "avx512vnni" or "avx512bf16": the names ATLAS_FAST_SIMD takes and info reports.
const char* level_name(SimdLevel level);
// The path that scores rows of `type` on this CPU (under ATLAS_FAST_SIMD): avx512bf16 serves bf16 rows only,
// avx512vnni int8 rows only.
SimdLevel path_for(StorageType type);

// A search's queries in the form its path reads: fp32 as given, rounded to bf16, or quantised to int8 with one
// scale per query (those kept here, made once per search).
class QueryPanel {
 public:
  // queries: n_queries x dim fp32, borrowed for the panel's lifetime.
  QueryPanel(StorageType type, const float* queries, int64_t n_queries, int64_t dim);
  StorageType type() const { return type_; }
  SimdLevel path() const { return path_; }
  int64_t dim() const { return dim_; }
  const float* fp32() const { return queries_; }
  const uint16_t* bf16() const { return bf16_.data(); }
  // int8: q = round(query / scale), scale = max|query| / 127, and sum(q) (what vpdpbusd's offset rows add).
  const int8_t* int8() const { return int8_.data(); }
  const float* int8_scales() const { return int8_scales_.data(); }
  const int32_t* int8_sums() const { return int8_sums_.data(); }
  // avx512vnni only: the queries interleaved, 16 to a vector, for the broadcast kernel. Step s of vector v (bytes
  // 4s .. 4s + 3 of queries 16v .. 16v + 15, zero past dim and past the last query) is the 64 bytes at
  // int8_lanes() + (v * int8_steps() + s) * 64; int8_scales and int8_sums are then padded with zeros to whole
  // vectors.
  const int8_t* int8_lanes() const { return int8_lanes_.data(); }
  int64_t int8_steps() const { return (dim_ + 3) / 4; }

 private:
  StorageType type_;
  SimdLevel path_;
  const float* queries_;
  int64_t dim_;
  std::vector<uint16_t> bf16_;
  std::vector<int8_t> int8_;
  std::vector<float> int8_scales_;
  std::vector<int32_t> int8_sums_;
  std::vector<int8_t> int8_lanes_;
};

// The rows of the tile a search scores next. The blocked kernels prefetch them into L2, a share per block of
// this tile, so that streaming the next tile from memory overlaps this tile's arithmetic: a batch of 8 to 64
// queries is bound by both, and without the overlap it waits on each in turn.
struct NextRows {
  const void* rows = nullptr;
  int64_t bytes = 0;
};

// out[q * out_stride + r] = <query first_query + q, rows[r]> for q < n_queries, r < n_rows.
// first_query: a multiple of 16 (int8 on avx512vnni reads the queries interleaved 16 to a vector).
// rows: n_rows x dim of the panel's storage type, row-major, contiguous.
void score_tile(const QueryPanel& panel, int64_t first_query, int64_t n_queries, const void* rows, int64_t n_rows,
                float* out, int64_t out_stride, NextRows next = {});

// Offers selector the candidates (scores[r], ids[r]), r < n, that may enter it (SIMD threshold test).
void push_candidates(const float* scores, const int64_t* ids, int64_t n, TopK& selector);

// The level in use: "avx512bf16", "avx512vnni", "avx512", "avx2" or "portable".
std::string simd_level();
// Why ATLAS_FAST_SIMD cannot be honoured ("" when it can, or is unset).
std::string simd_error();

}  // namespace atlas_fast
