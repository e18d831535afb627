#include "topk_merge.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace atlas_fast {

namespace {

// Strict "ranks before" order: higher score first, then smaller id.
inline bool ranks_before(const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

}  // namespace

void merge_topk(const float* scores, const int64_t* ids, int64_t n_queries, int64_t n_candidates,
                int64_t k, float* out_scores, int64_t* out_ids, int n_threads) {
#ifdef _OPENMP
  const int threads = n_threads > 0 ? n_threads : omp_get_max_threads();
#pragma omp parallel num_threads(threads)
#endif
  {
    std::vector<float> real_scores;
    std::vector<std::pair<float, int64_t>> survivors;
    real_scores.reserve(static_cast<size_t>(n_candidates));
    survivors.reserve(static_cast<size_t>(n_candidates));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t q = 0; q < n_queries; ++q) {
      // Find the k-th best score by selection over plain floats (cheap compares, no
      // branchy heap), keep the candidates at or above it, and sort only those.
      const float* row_scores = scores + q * n_candidates;
      const int64_t* row_ids = ids + q * n_candidates;
      real_scores.clear();
      for (int64_t c = 0; c < n_candidates; ++c)
        if (row_ids[c] >= 0) real_scores.push_back(row_scores[c]);
      const int64_t n_real = static_cast<int64_t>(real_scores.size());
      const int64_t kept = std::min(k, n_real);
      float threshold = -std::numeric_limits<float>::infinity();
      if (kept > 0 && kept < n_real) {
        std::nth_element(real_scores.begin(), real_scores.begin() + (kept - 1), real_scores.end(),
                         std::greater<float>());
        threshold = real_scores[kept - 1];
      }
      survivors.clear();
      for (int64_t c = 0; c < n_candidates; ++c)
        if (row_ids[c] >= 0 && row_scores[c] >= threshold) survivors.emplace_back(row_scores[c], row_ids[c]);
      // Ties at the threshold may leave more than k survivors; the id order decides.
      std::sort(survivors.begin(), survivors.end(), ranks_before);
      float* row_out_scores = out_scores + q * k;
      int64_t* row_out_ids = out_ids + q * k;
      for (int64_t i = 0; i < kept; ++i) {
        row_out_scores[i] = survivors[i].first;
        row_out_ids[i] = survivors[i].second;
      }
      for (int64_t i = kept; i < k; ++i) {
        row_out_scores[i] = -std::numeric_limits<float>::infinity();
        row_out_ids[i] = -1;
      }
    }
  }
}

}  // namespace atlas_fast
