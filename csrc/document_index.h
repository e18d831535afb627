// DocumentIndex: exact inner-product search over document embeddings that change.
//
// Rows live in fixed-size blocks (appending never moves a row, and the memory
// overhead is at most one block), with an id -> row hash map. upsert overwrites a
// row in place or appends one; remove moves the last row into the hole (O(1) per
// id). Each row carries the training step it was embedded at and how often it was
// retrieved since, which drive the refresh policies; overwriting a row records the
// cosine between its old and new vector (the drift of the document encoder).
//
// Concurrency: searches share a reader lock; upsert, remove and bulk loads take the
// writer lock, so a search sees every row either before or after an update.
//
// Rows may also live in memory the index does not own (`attach_mapped`: a memory-mapped index
// file, read-only). Such a block is copied into the index's own memory the first time a row in it
// is written (copy on write); the mapped memory is never written.
#pragma once

#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "id_map.h"
#include "score_tiles.h"

namespace atlas_fast {

class DocumentIndex {
 public:
  static constexpr int64_t kBlockRows = 4096;
  // Rows are uint32 in the id map, whose all-ones value marks an empty slot.
  static constexpr int64_t kMaxRows = static_cast<int64_t>(IdMap::kEmpty);

  DocumentIndex(int64_t dim, StorageType type);
  // The index owns its rows and a mutex, and the id map points into its row -> id array: never copied or moved.
  DocumentIndex(const DocumentIndex&) = delete;
  DocumentIndex& operator=(const DocumentIndex&) = delete;
  DocumentIndex(DocumentIndex&&) = delete;
  DocumentIndex& operator=(DocumentIndex&&) = delete;

  int64_t dim() const { return dim_; }
  StorageType type() const { return type_; }
  int64_t size() const;

  // vectors: n x dim fp32, all finite (else invalid_argument, nothing changed; length_error, nothing changed,
  // past kMaxRows documents). Later duplicates of an id win. Resets the retrieved count. Rows are written by
  // n_threads threads.
  void upsert(const int64_t* ids, const float* vectors, int64_t n, int32_t step, int n_threads);
  // Every id must be present and distinct (invalid_argument otherwise, checked before anything changes).
  void remove(const int64_t* ids, int64_t n);
  // rows[i] = row of ids[i], or -1.
  void rows_of(const int64_t* ids, int64_t n, int64_t* rows) const;
  // out: n x dim fp32 of present ids (invalid_argument naming an absent one).
  void get(const int64_t* ids, int64_t n, float* out) const;
  std::vector<int64_t> ids() const;

  // scores, ids: n_queries x k, sorted by score then id; -inf / -1 pad.
  void search(const float* queries, int64_t n_queries, int64_t k, int n_threads, float* scores, int64_t* ids) const;

  void steps_of(const int64_t* ids, int64_t n, int32_t* steps) const;
  void record_retrieved(const int64_t* ids, int64_t n);
  // Up to `budget` ids to re-embed next. policy "oldest": smallest step first;
  // "hot": most retrieved first, then oldest; ties by smaller id.
  std::vector<int64_t> stale_ids(int64_t budget, const std::string& policy) const;
  // Mean cosine(old, new) over rows overwritten since the last reset, and their count.
  std::pair<double, int64_t> drift(bool reset);
  // v <- v M (matrix: dim x dim fp32, row-major) for every row embedded before step `older_than`, in place
  // (rounded back to the storage type), then, with `normalize`, rescaled to unit norm; steps and retrieval
  // counts stay. Returns the rows transformed. invalid_argument, the index unchanged, when a mapped row would not
  // be finite in the storage type.
  int64_t transform(const float* matrix, int32_t older_than, bool normalize, int n_threads);

  // Bulk state access for persistence: rows [start, start + count).
  void export_rows(int64_t start, int64_t count, int64_t* ids, int32_t* steps, uint32_t* retrieved,
                   void* raw_vectors) const;
  // Appends rows whose ids are all new (the wrapper checks), raw vectors in the storage type; length_error,
  // nothing changed, past kMaxRows documents.
  void append_raw(const int64_t* ids, const int32_t* steps, const uint32_t* retrieved, const void* raw_vectors,
                  int64_t n);
  // As append_raw, but the rows stay where raw_vectors points (n contiguous rows, read-only, outliving the
  // index): nothing is copied. The index must hold a multiple of kBlockRows rows, and the ids must be new and
  // distinct (invalid_argument otherwise, nothing changed).
  void attach_mapped(const int64_t* ids, const int32_t* steps, const uint32_t* retrieved, const void* raw_vectors,
                     int64_t n);
  // Makes room in the id map and the per-document metadata for `rows` documents in all, so that a file read in
  // chunks (load, map) grows them once rather than by doubling.
  void reserve(int64_t rows);
  // Bytes the index owns (vector blocks, per-document metadata, id map): mapped rows are not counted.
  size_t memory_bytes() const;
  // Bytes of rows served from mapped memory.
  size_t mapped_bytes() const;

 private:
  // Writable only once `own_blocks_of` has run for the row (under the writer lock, before any parallel write).
  char* row_ptr(int64_t row) { return blocks_[row / kBlockRows] + (row % kBlockRows) * row_bytes_; }
  const char* row_ptr(int64_t row) const { return blocks_[row / kBlockRows] + (row % kBlockRows) * row_bytes_; }
  // Copies every mapped block holding one of `rows` (rows up to the index's size) into owned memory.
  void own_blocks_of(const std::vector<int64_t>& rows);
  void own_block(size_t block);
  // The row of `id`; invalid_argument "<operation>: unknown id <id>" when it is absent.
  uint32_t row_of_present(int64_t id, const char* operation) const;
  // length_error when appending the new ones among `ids` would pass kMaxRows rows.
  void check_room_for(const int64_t* ids, int64_t n) const;
  void ensure_capacity(int64_t rows);
  // transform's work: rows <- rows M (then unit norm); writes them only with `write`. Returns whether a mapped
  // row, before normalising, reaches `limit` (magnitude bits: inf, or beyond the storage type's range).
  bool map_rows(const std::vector<int64_t>& rows, const float* matrix, bool normalize, uint32_t limit, bool write,
                int n_threads);
  // Offers selectors[q] the rows [begin, end) scored against query first_query + q, q < n_queries.
  void search_range(const QueryPanel& panel, int64_t first_query, int64_t n_queries, int64_t begin, int64_t end,
                    TopK* selectors) const;

  int64_t dim_;
  StorageType type_;
  size_t row_bytes_;
  std::vector<char*> blocks_;                      // every block's rows: owned_[b].get(), or mapped memory
  std::vector<std::unique_ptr<char[]>> owned_;     // null for a mapped block
  std::vector<int64_t> mapped_rows_;               // rows a mapped block holds (its mapping may end there)
  std::vector<int64_t> row_ids_;
  std::vector<int32_t> steps_;
  std::vector<uint32_t> retrieved_;
  IdMap map_;
  double drift_sum_ = 0.0;
  int64_t drift_count_ = 0;
  mutable std::shared_mutex mutex_;
};

}  // namespace atlas_fast
