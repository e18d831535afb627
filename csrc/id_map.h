// Open-addressing hash map from document id (int64) to row (uint32).
//
// Linear probing, removal by backward shift (no tombstones), kept at most half
// full. A slot is 4 bytes: it stores only the row; the id is read back from the
// index's row -> id array, so the map costs ~8 bytes per document.
#pragma once

#include <cstdint>
#include <vector>

namespace atlas_fast {

class IdMap {
 public:
  static constexpr uint32_t kEmpty = 0xffffffffu;

  // row_ids: the owner's row -> id array, read (never written) by the map.
  explicit IdMap(const std::vector<int64_t>* row_ids) : row_ids_(row_ids) { slots_.assign(16, kEmpty); }

  // The row of `id`, or kEmpty.
  uint32_t find(int64_t id) const {
    for (size_t slot = home(id);; slot = next(slot)) {
      const uint32_t row = slots_[slot];
      if (row == kEmpty || (*row_ids_)[row] == id) return row;
    }
  }

  // Adds id -> row; `id` must be absent and (*row_ids)[row] == id already.
  void insert(int64_t id, uint32_t row) {
    if (2 * (size_ + 1) > slots_.size()) rehash(slots_.size() * 2);
    size_t slot = home(id);
    while (slots_[slot] != kEmpty) slot = next(slot);
    slots_[slot] = row;
    ++size_;
  }

  // Points `id` (present) at `row`: used when a row moves during swap-with-last removal.
  void update(int64_t id, uint32_t row) {
    size_t slot = home(id);
    while ((*row_ids_)[slots_[slot]] != id) slot = next(slot);
    slots_[slot] = row;
  }

  // Removes `id` (present) while (*row_ids)[its row] still holds it.
  void erase(int64_t id) {
    size_t hole = home(id);
    while ((*row_ids_)[slots_[hole]] != id) hole = next(hole);
    // Backward shift: pull later entries of the probe run into the hole when their home allows it.
    for (size_t slot = next(hole);; slot = next(slot)) {
      const uint32_t row = slots_[slot];
      if (row == kEmpty) break;
      const size_t wanted = home((*row_ids_)[row]);
      const bool movable = (hole <= slot) ? (wanted <= hole || wanted > slot) : (wanted <= hole && wanted > slot);
      if (movable) {
        slots_[hole] = row;
        hole = slot;
      }
    }
    slots_[hole] = kEmpty;
    --size_;
  }

  // Starts loading the slot id's search begins at: a loop inserting many ids calls it some ids ahead, so that
  // its slots' cache misses overlap instead of following one another.
  void prefetch(int64_t id) const { __builtin_prefetch(slots_.data() + home(id)); }

  void reserve(size_t n) {
    size_t capacity = slots_.size();
    while (capacity < 2 * n) capacity *= 2;
    if (capacity != slots_.size()) rehash(capacity);
  }

  size_t memory_bytes() const { return slots_.capacity() * sizeof(uint32_t); }

 private:
  size_t home(int64_t id) const {
    uint64_t x = static_cast<uint64_t>(id) + 0x9e3779b97f4a7c15ull;  // splitmix64 finaliser
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    return static_cast<size_t>(x) & (slots_.size() - 1);
  }
  size_t next(size_t slot) const { return (slot + 1) & (slots_.size() - 1); }

  void rehash(size_t capacity) {
    std::vector<uint32_t> old;
    old.swap(slots_);
    slots_.assign(capacity, kEmpty);
    for (uint32_t row : old) {
      if (row == kEmpty) continue;
      size_t slot = home((*row_ids_)[row]);
      while (slots_[slot] != kEmpty) slot = next(slot);
      slots_[slot] = row;
    }
  }

  const std::vector<int64_t>* row_ids_;
  std::vector<uint32_t> slots_;
  size_t size_ = 0;
};

}  // namespace atlas_fast
