// pybind11 bindings of atlas_fast._C: numpy buffers in and out, the GIL released
// around every call into the index or the merge (each is a loop over rows or ids), so
// other Python threads run meanwhile. Buffers are allocated and their pointers taken
// before the release. Argument checking that can name the Python argument lives in
// the Python wrappers; the checks here only guard memory safety.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "document_index.h"
#include "score_tiles.h"
#include "merge_topk.h"

namespace py = pybind11;

#ifndef ATLAS_FAST_BUILD_FLAGS
#define ATLAS_FAST_BUILD_FLAGS ""
#endif

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IdArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using StepArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using CountArray = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>;
using atlas_fast::DocumentIndex;
using atlas_fast::StorageType;
using atlas_fast::storage_name;

StorageType storage_type(const std::string& name) {
  if (name == "float32") return StorageType::kFloat32;
  if (name == "float16") return StorageType::kFloat16;
  if (name == "bfloat16") return StorageType::kBFloat16;
  if (name == "int8") return StorageType::kInt8;
  throw std::invalid_argument("dtype must be float32, float16, bfloat16 or int8");
}

void require_rows(const py::array& array, int64_t n, int64_t dim, const char* what) {
  if (array.ndim() != 2 || array.shape(0) != n || array.shape(1) != dim)
    throw std::invalid_argument(std::string(what) + " must have shape (" + std::to_string(n) + ", " +
                                std::to_string(dim) + ")");
}

// `compute()` run without the GIL (it must not touch Python objects).
template <typename Compute>
auto release_gil_for(Compute compute) {
  py::gil_scoped_release release;
  return compute();
}

IdArray id_array(const std::vector<int64_t>& ids) {
  IdArray out(static_cast<int64_t>(ids.size()));
  std::copy(ids.begin(), ids.end(), out.mutable_data());
  return out;
}

// Raw storage of n rows: float32 (n, dim), uint16 (n, dim) holding fp16/bf16 bits, or for int8 the rows' bytes
// (n, row_bytes): dim offset values, padding, the fp32 scale (storage.h).
py::array raw_rows(StorageType type, int64_t n, int64_t dim) {
  if (type == StorageType::kFloat32) return py::array_t<float>({n, dim});
  if (type == StorageType::kInt8) return py::array_t<uint8_t>({n, static_cast<int64_t>(atlas_fast::row_bytes(type, dim))});
  return py::array_t<uint16_t>({n, dim});
}

// append_raw or attach_mapped: n rows of ids, steps, retrieval counts and raw vectors (raw_rows' layout).
template <void (DocumentIndex::*add)(const int64_t*, const int32_t*, const uint32_t*, const void*, int64_t)>
void add_raw_rows(DocumentIndex& self, IdArray ids, StepArray steps, CountArray retrieved, py::array raw) {
  const int64_t n = ids.size();
  const size_t expected = static_cast<size_t>(n) * atlas_fast::row_bytes(self.type(), self.dim());
  if (steps.size() != n || retrieved.size() != n || static_cast<size_t>(raw.nbytes()) != expected ||
      !(raw.flags() & py::array::c_style))
    throw std::invalid_argument("raw rows: arrays of inconsistent sizes");
  const int64_t* id_ptr = ids.data();
  const int32_t* step_ptr = steps.data();
  const uint32_t* retrieved_ptr = retrieved.data();
  const void* raw_ptr = raw.data();
  py::gil_scoped_release release;
  (self.*add)(id_ptr, step_ptr, retrieved_ptr, raw_ptr, n);
}

void bind_document_index(py::module_& m) {
  py::class_<DocumentIndex>(m, "DocumentIndex")
      .def(py::init([](int64_t dim, const std::string& dtype) { return new DocumentIndex(dim, storage_type(dtype)); }),
           py::arg("dim"), py::arg("dtype"))
      .def_readonly_static("block_rows", &DocumentIndex::kBlockRows)
      .def_property_readonly("dim", &DocumentIndex::dim)
      .def_property_readonly("dtype", [](const DocumentIndex& self) { return storage_name(self.type()); })
      .def("__len__", &DocumentIndex::size, py::call_guard<py::gil_scoped_release>())
      .def(
          "upsert",
          [](DocumentIndex& self, IdArray ids, FloatArray vectors, int32_t step, int n_threads) {
            require_rows(vectors, ids.size(), self.dim(), "vectors");
            py::gil_scoped_release release;
            self.upsert(ids.data(), vectors.data(), ids.size(), step, n_threads);
          },
          py::arg("ids"), py::arg("vectors"), py::arg("step"), py::arg("n_threads") = 0)
      .def(
          "remove",
          [](DocumentIndex& self, IdArray ids) {
            py::gil_scoped_release release;
            self.remove(ids.data(), ids.size());
          },
          py::arg("ids"))
      .def("rows_of",
           [](const DocumentIndex& self, IdArray ids) {
             IdArray rows(ids.size());
             const int64_t* id_ptr = ids.data();
             int64_t* row_ptr = rows.mutable_data();
             {
               py::gil_scoped_release release;
               self.rows_of(id_ptr, ids.size(), row_ptr);
             }
             return rows;
           })
      .def("get",
           [](const DocumentIndex& self, IdArray ids) {
             FloatArray out({static_cast<int64_t>(ids.size()), self.dim()});
             const int64_t* id_ptr = ids.data();
             float* out_ptr = out.mutable_data();
             {
               py::gil_scoped_release release;
               self.get(id_ptr, ids.size(), out_ptr);
             }
             return out;
           })
      .def("ids", [](const DocumentIndex& self) { return id_array(release_gil_for([&] { return self.ids(); })); })
      .def(
          "search",
          [](const DocumentIndex& self, FloatArray queries, int64_t k, int n_threads) {
            require_rows(queries, queries.ndim() == 2 ? queries.shape(0) : -1, self.dim(), "queries");
            if (k <= 0) throw std::invalid_argument("k must be positive");
            const int64_t n_queries = queries.shape(0);
            FloatArray scores({n_queries, k});
            IdArray ids({n_queries, k});
            const float* query_ptr = queries.data();
            float* score_ptr = scores.mutable_data();
            int64_t* id_ptr = ids.mutable_data();
            {
              py::gil_scoped_release release;
              self.search(query_ptr, n_queries, k, n_threads, score_ptr, id_ptr);
            }
            return py::make_tuple(scores, ids);
          },
          py::arg("queries"), py::arg("k"), py::arg("n_threads") = 0)
      .def("steps_of",
           [](const DocumentIndex& self, IdArray ids) {
             StepArray steps(ids.size());
             const int64_t* id_ptr = ids.data();
             int32_t* step_ptr = steps.mutable_data();
             {
               py::gil_scoped_release release;
               self.steps_of(id_ptr, ids.size(), step_ptr);
             }
             return steps;
           })
      .def("record_retrieved",
           [](DocumentIndex& self, IdArray ids) {
             const int64_t* id_ptr = ids.data();
             py::gil_scoped_release release;
             self.record_retrieved(id_ptr, ids.size());
           })
      .def("stale_ids",
           [](const DocumentIndex& self, int64_t budget, const std::string& policy) {
             return id_array(release_gil_for([&] { return self.stale_ids(budget, policy); }));
           })
      .def("drift", &DocumentIndex::drift, py::arg("reset"), py::call_guard<py::gil_scoped_release>())
      .def(
          "transform",
          [](DocumentIndex& self, FloatArray matrix, int32_t older_than, bool normalize, int n_threads) {
            require_rows(matrix, self.dim(), self.dim(), "matrix");
            const float* matrix_ptr = matrix.data();
            py::gil_scoped_release release;
            return self.transform(matrix_ptr, older_than, normalize, n_threads);
          },
          py::arg("matrix"), py::arg("older_than"), py::arg("normalize") = false, py::arg("n_threads") = 0)
      .def("export_rows",
           [](const DocumentIndex& self, int64_t start, int64_t count) {
             IdArray ids(count);
             StepArray steps(count);
             CountArray retrieved(count);
             py::array raw = raw_rows(self.type(), count, self.dim());
             int64_t* id_ptr = ids.mutable_data();
             int32_t* step_ptr = steps.mutable_data();
             uint32_t* retrieved_ptr = retrieved.mutable_data();
             void* raw_ptr = raw.mutable_data();
             {
               py::gil_scoped_release release;
               self.export_rows(start, count, id_ptr, step_ptr, retrieved_ptr, raw_ptr);
             }
             return py::make_tuple(ids, steps, retrieved, raw);
           })
      .def("append_raw", &add_raw_rows<&DocumentIndex::append_raw>)
      .def("attach_mapped", &add_raw_rows<&DocumentIndex::attach_mapped>,
           py::keep_alive<1, 5>())  // the mapped rows live as long as the index
      .def("reserve", &DocumentIndex::reserve, py::arg("rows"), py::call_guard<py::gil_scoped_release>())
      .def("memory_bytes", &DocumentIndex::memory_bytes, py::call_guard<py::gil_scoped_release>())
      .def("mapped_bytes", &DocumentIndex::mapped_bytes, py::call_guard<py::gil_scoped_release>());
}

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
  info["simd"] = atlas_fast::simd_level();
  py::dict paths;  // the path that scores each storage type
  for (StorageType type : {StorageType::kFloat32, StorageType::kFloat16, StorageType::kBFloat16, StorageType::kInt8})
    paths[py::str(storage_name(type))] = atlas_fast::level_name(atlas_fast::path_for(type));
  info["simd_paths"] = paths;
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
  m.def(
      "row_bytes", [](const std::string& dtype, int64_t dim) { return atlas_fast::row_bytes(storage_type(dtype), dim); },
      py::arg("dtype"), py::arg("dim"), "Bytes of one stored row of dim values (int8: the values, padding, the scale).");
  m.def("build_info", &build_info, "How this module was compiled, and the SIMD path of each storage type.");
  m.def("simd_error", &atlas_fast::simd_error, "Why ATLAS_FAST_SIMD cannot be honoured ('' when it can).");
  bind_document_index(m);
}
