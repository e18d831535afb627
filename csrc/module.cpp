// pybind11 bindings of atlas_fast._C: numpy buffers in and out, the GIL released
// around every loop. Argument checking that can name the Python argument lives in
// the Python wrappers; the checks here only guard memory safety.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "topk_merge.h"

namespace py = pybind11;

#ifndef ATLAS_FAST_BUILD_FLAGS
#define ATLAS_FAST_BUILD_FLAGS ""
#endif

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IdArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

py::tuple merge_topk(FloatArray scores, IdArray ids, int64_t k, int n_threads) {
  if (scores.ndim() != 2 || ids.ndim() != 2) throw std::invalid_argument("scores and ids must be 2-D");
  if (scores.shape(0) != ids.shape(0) || scores.shape(1) != ids.shape(1))
    throw std::invalid_argument("scores and ids must have the same shape");
  if (k <= 0) throw std::invalid_argument("k must be positive");
  const int64_t n_queries = scores.shape(0);
  const int64_t n_candidates = scores.shape(1);
  FloatArray out_scores({n_queries, k});
  IdArray out_ids({n_queries, k});
  const float* scores_ptr = scores.data();
  const int64_t* ids_ptr = ids.data();
  float* out_scores_ptr = out_scores.mutable_data();
  int64_t* out_ids_ptr = out_ids.mutable_data();
  {
    py::gil_scoped_release release;
    atlas_fast::merge_topk(scores_ptr, ids_ptr, n_queries, n_candidates, k, out_scores_ptr, out_ids_ptr,
                           n_threads);
  }
  return py::make_tuple(out_scores, out_ids);
}

py::dict build_info() {
  py::dict info;
  info["compiler"] = std::string(
#if defined(__clang__)
      "clang " __clang_version__
#elif defined(__GNUC__)
      "gcc " __VERSION__
#else
      "unknown"
#endif
  );
  info["flags"] = std::string(ATLAS_FAST_BUILD_FLAGS);
#ifdef _OPENMP
  info["openmp"] = true;
  info["max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["max_threads"] = 1;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "atlas_fast native core (private; use atlas_fast.index)";
  m.def("merge_topk", &merge_topk, py::arg("scores"), py::arg("ids"), py::arg("k"), py::arg("n_threads") = 0,
        "Merge candidate (score, id) rows into a sorted top-k per row; id -1 candidates are padding.");
  m.def("build_info", &build_info, "How this module was compiled.");
}
