// Inner products between a group of fp32 queries and a tile of stored rows.
//
// The stored rows are fp32, fp16 or bf16; they are widened to fp32 in registers
// and accumulated in fp32, so scores are fp32 whatever the storage. The kernel
// is register-blocked (4 rows x 4 queries = 16 accumulators) so that each row
// vector loaded from memory is used by four queries and each query vector by
// four rows: the database is streamed once per query group, which is what makes
// batched search cheaper than one scan per query.
//
// The instruction set is chosen once at run time: AVX-512 (F, BW, VL) with F16C,
// AVX2 with FMA and F16C, or portable C++.
#pragma once

#include <cstdint>
#include <string>

#include "storage.h"

namespace atlas_fast {

// out[q * out_stride + r] = <queries[q], rows[r]> for q < n_queries, r < n_rows.
// queries: n_queries x dim fp32, rows: n_rows x dim of `type`, both row-major, contiguous.
void score_tile(StorageType type, const float* queries, int64_t n_queries, const void* rows, int64_t n_rows,
                int64_t dim, float* out, int64_t out_stride);

// "avx512", "avx2" or "portable": the path score_tile takes on this CPU.
std::string simd_level();

}  // namespace atlas_fast
