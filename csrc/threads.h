// The one thread-count rule of the native module.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace atlas_fast {

// Threads for a parallel loop asked to run on `n_threads` (0: OpenMP's default). Called from inside an
// OpenMP region (a torch or BLAS worker, or our own), it is 1: a pool is never nested in another.
inline int resolve_threads(int n_threads) {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
  return n_threads > 0 ? n_threads : omp_get_max_threads();
#else
  (void)n_threads;
  return 1;
#endif
}

}  // namespace atlas_fast
