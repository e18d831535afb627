// Exact top-k merge of per-shard (score, id) candidate lists.
//
// A sharded search returns, for every query, up to k candidates from each shard.
// The global answer is the k best of their union: sorted by score, descending,
// ties broken by the smaller id so that results do not depend on shard order.
// Candidates with id -1 are padding (a shard with fewer than k documents) and are
// skipped; when fewer than k real candidates exist the output is padded with
// score -inf and id -1.
#pragma once

#include <cstdint>

namespace atlas_fast {

// scores, ids: row-major [n_queries, n_candidates]; out_scores, out_ids: [n_queries, k].
// Runs over queries with OpenMP using n_threads threads (<= 0: OpenMP's default).
void merge_topk(const float* scores, const int64_t* ids, int64_t n_queries, int64_t n_candidates,
                int64_t k, float* out_scores, int64_t* out_ids, int n_threads);

}  // namespace atlas_fast
