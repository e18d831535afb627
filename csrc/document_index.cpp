#include "document_index.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>

#include "threads.h"
#include "topk.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace atlas_fast {

namespace {

// Database rows scored per tile: 256 rows of d = 768 fp32 are 768 KiB, an L2-resident tile.
constexpr int64_t kTileRows = 256;
// Queries scored together against a tile; each row is loaded once per group.
constexpr int64_t kQueryGroup = 64;
// How many ids ahead a bulk insertion prefetches id map slots (about the cache misses a core keeps in flight).
constexpr int64_t kInsertAhead = 32;

}  // namespace

DocumentIndex::DocumentIndex(int64_t dim, StorageType type)
    : dim_(dim), type_(type), row_bytes_(row_bytes(type, dim)), map_(&row_ids_) {
  if (dim <= 0) throw std::invalid_argument("dim must be positive");
}

uint32_t DocumentIndex::row_of_present(int64_t id, const char* operation) const {
  const uint32_t row = map_.find(id);
  if (row == IdMap::kEmpty) throw std::invalid_argument(std::string(operation) + ": unknown id " + std::to_string(id));
  return row;
}

void DocumentIndex::check_room_for(const int64_t* ids, int64_t n) const {
  // Rows are uint32 (IdMap::kEmpty excluded); counted exactly only when n could cross the limit.
  const int64_t rows = static_cast<int64_t>(row_ids_.size());
  if (rows + n < kMaxRows) return;
  std::vector<int64_t> fresh;
  for (int64_t i = 0; i < n; ++i)
    if (map_.find(ids[i]) == IdMap::kEmpty) fresh.push_back(ids[i]);
  std::sort(fresh.begin(), fresh.end());
  const int64_t added = std::unique(fresh.begin(), fresh.end()) - fresh.begin();
  if (rows + added > kMaxRows)
    throw std::length_error("the index would exceed " + std::to_string(kMaxRows) + " documents");
}

int64_t DocumentIndex::size() const {
  std::shared_lock lock(mutex_);
  return static_cast<int64_t>(row_ids_.size());
}

void DocumentIndex::reserve(int64_t rows) {
  rows = std::clamp<int64_t>(rows, 0, kMaxRows);  // a larger index is refused when its rows come
  std::unique_lock lock(mutex_);
  map_.reserve(static_cast<size_t>(rows));
  row_ids_.reserve(static_cast<size_t>(rows));
  steps_.reserve(static_cast<size_t>(rows));
  retrieved_.reserve(static_cast<size_t>(rows));
}

void DocumentIndex::ensure_capacity(int64_t rows) {
  while (static_cast<int64_t>(blocks_.size()) * kBlockRows < rows) {
    owned_.emplace_back(new char[static_cast<size_t>(kBlockRows) * row_bytes_]);
    blocks_.push_back(owned_.back().get());
    mapped_rows_.push_back(0);
  }
  // Metadata grows by 1/8 at a time rather than doubling: it is 16 bytes a document.
  const size_t wanted = static_cast<size_t>(rows);
  if (row_ids_.capacity() < wanted) {
    const size_t capacity = std::max(wanted, row_ids_.capacity() + row_ids_.capacity() / 8);
    row_ids_.reserve(capacity);
    steps_.reserve(capacity);
    retrieved_.reserve(capacity);
  }
}

void DocumentIndex::own_block(size_t block) {
  if (owned_[block]) return;
  owned_[block].reset(new char[static_cast<size_t>(kBlockRows) * row_bytes_]);
  // Only the rows the mapping holds: a file's last block may end mid-block.
  std::memcpy(owned_[block].get(), blocks_[block], static_cast<size_t>(mapped_rows_[block]) * row_bytes_);
  blocks_[block] = owned_[block].get();
  mapped_rows_[block] = 0;
}

void DocumentIndex::own_blocks_of(const std::vector<int64_t>& rows) {
  for (int64_t row : rows) own_block(static_cast<size_t>(row / kBlockRows));
}

namespace {

// The largest magnitude of n floats, as bits (NaN above inf): compared with first_unstorable_bits, it says
// whether the storage type can hold them all. Serial (one tile of a parallel loop).
uint32_t max_magnitude_bits(const float* values, int64_t n) {
  uint32_t largest = 0;
#pragma omp simd reduction(max : largest)
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, sizeof bits);
    largest = std::max(largest, bits & 0x7fffffffu);
  }
  return largest;
}

// Refuses (before anything changes) values the storage type would turn into inf or NaN.
void check_storable(StorageType type, const char* what, const float* values, int64_t n, int threads) {
  uint32_t largest = 0;
#ifdef _OPENMP
#pragma omp parallel for simd reduction(max : largest) num_threads(threads) schedule(static)
#endif
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, values + i, sizeof bits);
    largest = std::max(largest, bits & 0x7fffffffu);
  }
  if (largest >= 0x7f800000u) throw std::invalid_argument(std::string(what) + " contains NaN or infinite values");
  if (largest >= first_unstorable_bits(type)) {
    throw std::invalid_argument(std::string(what) + " holds values beyond " + storage_name(type) +
                                "'s range (they would be stored as infinite): scale them down or store float32");
  }
}

float cosine(const float* a, const float* b, int64_t n) {
  float dot = 0.f, norm_a = 0.f, norm_b = 0.f;
#pragma omp simd reduction(+ : dot, norm_a, norm_b)
  for (int64_t j = 0; j < n; ++j) {
    dot += a[j] * b[j];
    norm_a += a[j] * a[j];
    norm_b += b[j] * b[j];
  }
  return (norm_a > 0.f && norm_b > 0.f) ? dot / std::sqrt(norm_a * norm_b) : 1.f;
}

}  // namespace

void DocumentIndex::upsert(const int64_t* ids, const float* vectors, int64_t n, int32_t step, int n_threads) {
  const int threads = resolve_threads(n_threads);
  // Refused before anything changes.
  check_storable(type_, "vectors", vectors, n * dim_, threads);
  std::unique_lock lock(mutex_);
  check_room_for(ids, n);  // refused before anything changes
  const int64_t rows_before = static_cast<int64_t>(row_ids_.size());
  // 1. Serial: the row of every input (new ids appended), metadata updated.
  std::vector<std::pair<uint32_t, int64_t>> writes(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    uint32_t row = map_.find(ids[i]);
    if (row == IdMap::kEmpty) {
      row = static_cast<uint32_t>(row_ids_.size());
      ensure_capacity(row + 1);
      row_ids_.push_back(ids[i]);
      steps_.push_back(step);
      retrieved_.push_back(0);
      map_.insert(ids[i], row);
    } else {
      steps_[row] = step;
      retrieved_[row] = 0;
    }
    writes[i] = {row, i};
  }
  // 2. Duplicate ids in one call: only the last occurrence writes its row (sorted by row, then input order).
  std::sort(writes.begin(), writes.end());
  size_t kept = 0;
  for (size_t w = 0; w < writes.size(); ++w)
    if (w + 1 == writes.size() || writes[w + 1].first != writes[w].first) writes[kept++] = writes[w];
  writes.resize(kept);
  // Rows in mapped memory are copied into the index's own first (serially: the parallel writes may share blocks).
  {
    std::vector<int64_t> rows(writes.size());
    for (size_t w = 0; w < writes.size(); ++w) rows[w] = writes[w].first;
    own_blocks_of(rows);
  }
  // 3. Parallel: drift of overwritten rows, then the row itself.
  double drift_sum = 0.0;
  int64_t drift_count = 0;
  const int64_t n_writes = static_cast<int64_t>(writes.size());
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : drift_sum, drift_count)
#endif
  {
    std::vector<float> old_vector(static_cast<size_t>(dim_));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t w = 0; w < n_writes; ++w) {
      const uint32_t row = writes[w].first;
      const float* vector = vectors + writes[w].second * dim_;
      if (static_cast<int64_t>(row) < rows_before) {
        convert_to_float(type_, row_ptr(row), old_vector.data(), dim_);
        drift_sum += cosine(old_vector.data(), vector, dim_);
        ++drift_count;
      }
      convert_from_float(type_, vector, row_ptr(row), dim_);
    }
  }
  drift_sum_ += drift_sum;
  drift_count_ += drift_count;
}

void DocumentIndex::remove(const int64_t* ids, int64_t n) {
  std::unique_lock lock(mutex_);
  // Every id is checked before the first row moves: an error leaves the index as it was.
  for (int64_t i = 0; i < n; ++i) row_of_present(ids[i], "remove");
  std::vector<int64_t> sorted(ids, ids + n);
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
    throw std::invalid_argument("remove: ids must be distinct");
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t row = map_.find(ids[i]);
    const uint32_t last = static_cast<uint32_t>(row_ids_.size() - 1);
    map_.erase(ids[i]);
    if (row != last) {  // move the last row into the hole
      own_block(row / kBlockRows);
      std::memcpy(row_ptr(row), row_ptr(last), row_bytes_);
      row_ids_[row] = row_ids_[last];
      steps_[row] = steps_[last];
      retrieved_[row] = retrieved_[last];
      map_.update(row_ids_[row], row);
    }
    row_ids_.pop_back();
    steps_.pop_back();
    retrieved_.pop_back();
  }
  // Give back whole blocks that are no longer used.
  const size_t needed = (row_ids_.size() + kBlockRows - 1) / kBlockRows;
  if (blocks_.size() > needed + 1) {
    blocks_.resize(needed + 1);
    owned_.resize(needed + 1);
    mapped_rows_.resize(needed + 1);
  }
}

void DocumentIndex::rows_of(const int64_t* ids, int64_t n, int64_t* rows) const {
  std::shared_lock lock(mutex_);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t row = map_.find(ids[i]);
    rows[i] = row == IdMap::kEmpty ? -1 : static_cast<int64_t>(row);
  }
}

void DocumentIndex::get(const int64_t* ids, int64_t n, float* out) const {
  std::shared_lock lock(mutex_);
  for (int64_t i = 0; i < n; ++i) convert_to_float(type_, row_ptr(row_of_present(ids[i], "get")), out + i * dim_, dim_);
}

std::vector<int64_t> DocumentIndex::ids() const {
  std::shared_lock lock(mutex_);
  return row_ids_;
}

void DocumentIndex::search_range(const QueryPanel& panel, int64_t first_query, int64_t n_queries, int64_t begin,
                                 int64_t end, TopK* selectors) const {
  std::vector<float> tile_scores(static_cast<size_t>(kQueryGroup * kTileRows));
  // Each tile is read from memory once and scored against every query of the range, a group at a time.
  for (int64_t tile = begin; tile < end;) {
    // A tile never crosses a block boundary: its rows are contiguous.
    const int64_t block_end = (tile / kBlockRows + 1) * kBlockRows;
    const int64_t tile_rows = std::min({kTileRows, end - tile, block_end - tile});
    const int64_t next_tile = tile + tile_rows;
    const int64_t next_rows = std::min({kTileRows, end - next_tile, (next_tile / kBlockRows + 1) * kBlockRows - next_tile});
    NextRows next;
    if (next_rows > 0) next = {row_ptr(next_tile), next_rows * static_cast<int64_t>(row_bytes_)};
    for (int64_t group = 0; group < n_queries; group += kQueryGroup) {
      const int64_t group_size = std::min(kQueryGroup, n_queries - group);
      // The first group of the tile streams the next tile in behind its arithmetic.
      score_tile(panel, first_query + group, group_size, row_ptr(tile), tile_rows, tile_scores.data(), kTileRows,
                 group == 0 ? next : NextRows{});
      for (int64_t q = 0; q < group_size; ++q)
        push_candidates(tile_scores.data() + q * kTileRows, row_ids_.data() + tile, tile_rows, selectors[group + q]);
    }
    tile += tile_rows;
  }
}

void DocumentIndex::search(const float* queries, int64_t n_queries, int64_t k, int n_threads, float* scores,
                           int64_t* ids) const {
  std::shared_lock lock(mutex_);
  const int64_t n_rows = static_cast<int64_t>(row_ids_.size());
  const int threads = std::max<int>(1, std::min<int64_t>(resolve_threads(n_threads), std::max<int64_t>(1, n_rows / kTileRows)));
  const QueryPanel panel(type_, queries, n_queries, dim_);
  std::vector<TopK> selectors(static_cast<size_t>(n_queries), TopK(k));
  if (n_queries >= static_cast<int64_t>(threads) * kQueryGroup || threads == 1) {
    // Many queries: each thread takes a contiguous share of them (a multiple of 16, score_tile's query vector)
    // and streams the whole database once.
    const int64_t share = (n_queries + threads - 1) / threads;
    const int64_t per_thread = (share + 15) / 16 * 16;
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(threads)
#endif
    for (int thread = 0; thread < threads; ++thread) {
      const int64_t first = std::min(n_queries, thread * per_thread);
      const int64_t count = std::min(n_queries, first + per_thread) - first;
      if (count > 0) search_range(panel, first, count, 0, n_rows, selectors.data() + first);
    }
  } else {
    // Few queries: threads split the database; their selectors are merged per query.
    std::vector<std::vector<TopK>> partial(static_cast<size_t>(threads),
                                           std::vector<TopK>(static_cast<size_t>(n_queries), TopK(k)));
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
#ifdef _OPENMP
      const int thread = omp_get_thread_num();
#else
      const int thread = 0;
#endif
      const int64_t per_thread = (n_rows + threads - 1) / threads;
      const int64_t begin = std::min(n_rows, thread * per_thread);
      const int64_t end = std::min(n_rows, begin + per_thread);
      search_range(panel, 0, n_queries, begin, end, partial[thread].data());
    }
    for (int64_t q = 0; q < n_queries; ++q)
      for (int t = 0; t < threads; ++t) selectors[q].absorb(partial[t][q]);
  }
  for (int64_t q = 0; q < n_queries; ++q) selectors[q].finish(scores + q * k, ids + q * k);
}

void DocumentIndex::steps_of(const int64_t* ids, int64_t n, int32_t* steps) const {
  std::shared_lock lock(mutex_);
  for (int64_t i = 0; i < n; ++i) steps[i] = steps_[row_of_present(ids[i], "steps_of")];
}

void DocumentIndex::record_retrieved(const int64_t* ids, int64_t n) {
  std::unique_lock lock(mutex_);
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0) continue;
    const uint32_t row = map_.find(ids[i]);
    if (row != IdMap::kEmpty && retrieved_[row] != UINT32_MAX) ++retrieved_[row];
  }
}

std::vector<int64_t> DocumentIndex::stale_ids(int64_t budget, const std::string& policy) const {
  std::shared_lock lock(mutex_);
  const bool hot = policy == "hot";
  if (!hot && policy != "oldest") throw std::invalid_argument("policy must be 'oldest' or 'hot'");
  std::vector<uint32_t> rows(row_ids_.size());
  std::iota(rows.begin(), rows.end(), 0u);
  auto before = [&](uint32_t a, uint32_t b) {
    if (hot && retrieved_[a] != retrieved_[b]) return retrieved_[a] > retrieved_[b];
    if (steps_[a] != steps_[b]) return steps_[a] < steps_[b];
    return row_ids_[a] < row_ids_[b];
  };
  const int64_t taken = std::min<int64_t>(budget, static_cast<int64_t>(rows.size()));
  std::partial_sort(rows.begin(), rows.begin() + taken, rows.end(), before);
  std::vector<int64_t> out(static_cast<size_t>(taken));
  for (int64_t i = 0; i < taken; ++i) out[i] = row_ids_[rows[i]];
  return out;
}

std::pair<double, int64_t> DocumentIndex::drift(bool reset) {
  std::unique_lock lock(mutex_);
  const std::pair<double, int64_t> result(drift_count_ ? drift_sum_ / drift_count_ : 0.0, drift_count_);
  if (reset) {
    drift_sum_ = 0.0;
    drift_count_ = 0;
  }
  return result;
}

int64_t DocumentIndex::transform(const float* matrix, int32_t older_than, bool normalize, int n_threads) {
  std::unique_lock lock(mutex_);
  std::vector<int64_t> rows;  // the rows of older versions, in storage order
  for (int64_t row = 0; row < static_cast<int64_t>(row_ids_.size()); ++row) {
    if (steps_[row] < older_than) rows.push_back(row);
  }
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  // What the rows may hold after the map: unit rows when normalising (the fp32 product must stay finite),
  // otherwise values the storage type holds (int8: its fp32 scale must stay finite).
  const uint32_t limit = normalize ? 0x7f800000u : first_unstorable_bits(type_);
  // |(v M)_j| <= max|v| * max_j sum_i |M_ij|: under the limit, no row can overflow and one writing pass does.
  // Otherwise a first pass computes every row without writing, and a row that overflows refuses the whole
  // call, leaving the index as it was: no path stores a non-finite row.
  double column_sum_max = 0.0;
  for (int64_t j = 0; j < dim_; ++j) {
    double sum = 0.0;
    for (int64_t i = 0; i < dim_; ++i) sum += std::fabs(static_cast<double>(matrix[i * dim_ + j]));
    column_sum_max = std::max(column_sum_max, sum);
  }
  float row_max = 0.f;
  {
    std::vector<float> row(static_cast<size_t>(dim_));
    for (int64_t r = 0; r < n_rows; ++r) {
      convert_to_float(type_, row_ptr(rows[r]), row.data(), dim_);
      for (int64_t j = 0; j < dim_; ++j) row_max = std::max(row_max, std::fabs(row[j]));
    }
  }
  const uint32_t largest_storable = limit - 1;  // limit is inf's bits for fp32: the bound needs a finite value
  float limit_value;
  std::memcpy(&limit_value, &largest_storable, sizeof limit_value);
  // The bound is exact arithmetic; fp32 accumulation rounds, hence the margin.
  const bool may_overflow = static_cast<double>(row_max) * column_sum_max >= 0.99 * static_cast<double>(limit_value);
  if (may_overflow && map_rows(rows, matrix, normalize, limit, false, n_threads)) {
    throw std::invalid_argument(std::string("transform: the matrix maps some rows beyond ") +
                                (normalize || type_ == StorageType::kInt8 ? "float32" : storage_name(type_)) +
                                "'s range (they would be stored as infinite or NaN); the index is unchanged");
  }
  own_blocks_of(rows);
  map_rows(rows, matrix, normalize, limit, true, n_threads);
  return n_rows;
}

bool DocumentIndex::map_rows(const std::vector<int64_t>& rows, const float* matrix, bool normalize, uint32_t limit,
                             bool write, int n_threads) {
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  int overflow = 0;
  // Tiles of rows x output columns: each slice M[i, j0:j0+256] is loaded once for 16 rows (not once per row),
  // and the 16 x 256 accumulators stay in L1. Per row the matrix would stream d² floats from L2/L3.
  constexpr int64_t kRowsPerTile = 16, kColumnsPerTile = 256;
#ifdef _OPENMP
#pragma omp parallel num_threads(resolve_threads(n_threads)) reduction(| : overflow)
#endif
  {
    std::vector<float> old_rows(static_cast<size_t>(kRowsPerTile * dim_));
    std::vector<float> new_rows(static_cast<size_t>(kRowsPerTile * dim_));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t first = 0; first < n_rows; first += kRowsPerTile) {
      const int64_t count = std::min(kRowsPerTile, n_rows - first);
      for (int64_t r = 0; r < count; ++r) convert_to_float(type_, row_ptr(rows[first + r]), &old_rows[r * dim_], dim_);
      std::fill(new_rows.begin(), new_rows.begin() + count * dim_, 0.f);
      for (int64_t column = 0; column < dim_; column += kColumnsPerTile) {
        const int64_t width = std::min(kColumnsPerTile, dim_ - column);
        for (int64_t i = 0; i < dim_; ++i) {  // new[r] += old[r][i] * M[i, :]: a vectorised axpy per row
          const float* matrix_slice = matrix + i * dim_ + column;
          for (int64_t r = 0; r < count; ++r) {
            const float weight = old_rows[r * dim_ + i];
            float* out = &new_rows[r * dim_ + column];
#pragma omp simd
            for (int64_t j = 0; j < width; ++j) out[j] += weight * matrix_slice[j];
          }
        }
      }
      overflow |= max_magnitude_bits(new_rows.data(), count * dim_) >= limit;
      if (!write) continue;
      for (int64_t r = 0; r < count; ++r) {
        float* vector = &new_rows[r * dim_];
        if (normalize) {  // back onto the unit sphere of a cosine index (a zero row stays zero)
          // In double throughout: the squares of large rows overflow fp32, and the inverse norm of a row of
          // subnormals does too.
          double squares = 0.0;
          for (int64_t j = 0; j < dim_; ++j) squares += static_cast<double>(vector[j]) * vector[j];
          if (squares > 0.0) {
            const double inverse = 1.0 / std::sqrt(squares);
            for (int64_t j = 0; j < dim_; ++j) vector[j] = static_cast<float>(vector[j] * inverse);
          }
        }
        convert_from_float(type_, vector, row_ptr(rows[first + r]), dim_);
      }
    }
  }
  return overflow != 0;
}

void DocumentIndex::export_rows(int64_t start, int64_t count, int64_t* ids, int32_t* steps, uint32_t* retrieved,
                                void* raw_vectors) const {
  std::shared_lock lock(mutex_);
  if (start < 0 || count < 0 || start + count > static_cast<int64_t>(row_ids_.size()))
    throw std::out_of_range("export_rows: range outside the index");
  char* out = static_cast<char*>(raw_vectors);
  for (int64_t i = 0; i < count; ++i) {
    ids[i] = row_ids_[start + i];
    steps[i] = steps_[start + i];
    retrieved[i] = retrieved_[start + i];
    std::memcpy(out + i * row_bytes_, row_ptr(start + i), row_bytes_);
  }
}

void DocumentIndex::append_raw(const int64_t* ids, const int32_t* steps, const uint32_t* retrieved,
                               const void* raw_vectors, int64_t n) {
  std::unique_lock lock(mutex_);
  check_room_for(ids, n);
  const char* in = static_cast<const char*>(raw_vectors);
  const int64_t start = static_cast<int64_t>(row_ids_.size());
  ensure_capacity(start + n);
  if (n > 0 && start % kBlockRows != 0) own_block(static_cast<size_t>(start / kBlockRows));  // a mapped tail block
  map_.reserve(static_cast<size_t>(start + n));
  for (int64_t i = 0; i < n; ++i) {
    if (i + kInsertAhead < n) map_.prefetch(ids[i + kInsertAhead]);
    const uint32_t row = static_cast<uint32_t>(start + i);
    std::memcpy(row_ptr(row), in + i * row_bytes_, row_bytes_);
    row_ids_.push_back(ids[i]);
    steps_.push_back(steps[i]);
    retrieved_.push_back(retrieved[i]);
    map_.insert(ids[i], row);
  }
}

void DocumentIndex::attach_mapped(const int64_t* ids, const int32_t* steps, const uint32_t* retrieved,
                                  const void* raw_vectors, int64_t n) {
  std::unique_lock lock(mutex_);
  check_room_for(ids, n);
  const int64_t start = static_cast<int64_t>(row_ids_.size());
  if (start % kBlockRows != 0 || static_cast<int64_t>(blocks_.size()) * kBlockRows != start)
    throw std::invalid_argument("attach_mapped: the index must end at a block boundary");
  const char* in = static_cast<const char*>(raw_vectors);
  for (int64_t first = 0; first < n; first += kBlockRows) {
    // Read-only memory: row_ptr's writes go through own_block first, which copies it.
    blocks_.push_back(const_cast<char*>(in + first * row_bytes_));
    owned_.emplace_back(nullptr);
    mapped_rows_.push_back(std::min(kBlockRows, n - first));
  }
  map_.reserve(static_cast<size_t>(start + n));
  row_ids_.insert(row_ids_.end(), ids, ids + n);
  steps_.insert(steps_.end(), steps, steps + n);
  retrieved_.insert(retrieved_.end(), retrieved, retrieved + n);
  for (int64_t i = 0; i < n; ++i) {
    if (i + kInsertAhead < n) map_.prefetch(ids[i + kInsertAhead]);
    if (map_.find(ids[i]) != IdMap::kEmpty) {  // an id twice: undo this call, so that nothing changed
      for (int64_t j = 0; j < i; ++j) map_.erase(ids[j]);
      row_ids_.resize(start);
      steps_.resize(start);
      retrieved_.resize(start);
      const size_t blocks = static_cast<size_t>(start / kBlockRows);
      blocks_.resize(blocks);
      owned_.resize(blocks);
      mapped_rows_.resize(blocks);
      throw std::invalid_argument("attach_mapped: duplicate id " + std::to_string(ids[i]));
    }
    map_.insert(ids[i], static_cast<uint32_t>(start + i));
  }
}

size_t DocumentIndex::memory_bytes() const {
  std::shared_lock lock(mutex_);
  size_t owned = 0;
  for (const auto& block : owned_) owned += block ? static_cast<size_t>(kBlockRows) * row_bytes_ : 0;
  return owned + row_ids_.capacity() * sizeof(int64_t) + steps_.capacity() * sizeof(int32_t) +
         retrieved_.capacity() * sizeof(uint32_t) + map_.memory_bytes();
}

size_t DocumentIndex::mapped_bytes() const {
  std::shared_lock lock(mutex_);
  size_t mapped = 0;
  for (int64_t rows : mapped_rows_) mapped += static_cast<size_t>(rows) * row_bytes_;
  return mapped;
}

}  // namespace atlas_fast
