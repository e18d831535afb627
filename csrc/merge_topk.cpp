#include "merge_topk.h"

#include "threads.h"
#include "topk.h"

namespace atlas_fast {

void merge_topk(const float* scores, const int64_t* ids, int64_t n_queries, int64_t n_candidates, int64_t k,
                float* out_scores, int64_t* out_ids, int n_threads) {
  const int threads = resolve_threads(n_threads);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
  {
    TopK selector(k);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t q = 0; q < n_queries; ++q) {
      selector.reset(k);
      const float* row_scores = scores + q * n_candidates;
      const int64_t* row_ids = ids + q * n_candidates;
      for (int64_t c = 0; c < n_candidates; ++c)
        if (row_ids[c] >= 0) selector.push(row_scores[c], row_ids[c]);
      selector.finish(out_scores + q * k, out_ids + q * k);
    }
  }
}

}  // namespace atlas_fast
