// Bounded top-k selection of (score, id) candidates, shared by search and merge.
//
// Order: higher score first, ties broken by the smaller id, so results never
// depend on the order candidates arrive in (shards, threads, tiles). Candidates
// are appended to a buffer of 2k while they beat the current k-th best; a full
// buffer is cut back to k with nth_element, which moves the threshold up. Most
// candidates of a long scan are rejected by one comparison.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace atlas_fast {

using Candidate = std::pair<float, int64_t>;

inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

class TopK {
 public:
  explicit TopK(int64_t k = 1) { reset(k); }

  void reset(int64_t k) {
    k_ = k;
    buffer_.clear();
    buffer_.reserve(static_cast<size_t>(2 * k));
    has_threshold_ = false;
  }

  void push(float score, int64_t id) {
    const Candidate candidate(score, id);
    if (has_threshold_ && !ranks_before(candidate, threshold_)) return;
    buffer_.push_back(candidate);
    if (static_cast<int64_t>(buffer_.size()) >= 2 * k_) shrink();
  }

  // Cheap pre-test for hot loops: false means `score` cannot enter.
  bool may_enter(float score) const { return !has_threshold_ || score >= threshold_.first; }
  // The lowest score that may enter (-inf until the selector holds k).
  float threshold() const { return has_threshold_ ? threshold_.first : -std::numeric_limits<float>::infinity(); }

  void absorb(const TopK& other) {
    for (const Candidate& candidate : other.buffer_) push(candidate.first, candidate.second);
  }

  // Writes the k best, sorted; pads with (-inf, -1).
  void finish(float* scores, int64_t* ids) {
    if (static_cast<int64_t>(buffer_.size()) > k_) shrink();
    std::sort(buffer_.begin(), buffer_.end(), ranks_before);
    const int64_t kept = static_cast<int64_t>(buffer_.size());
    for (int64_t i = 0; i < kept; ++i) {
      scores[i] = buffer_[i].first;
      ids[i] = buffer_[i].second;
    }
    for (int64_t i = kept; i < k_; ++i) {
      scores[i] = -std::numeric_limits<float>::infinity();
      ids[i] = -1;
    }
  }

 private:
  void shrink() {
    std::nth_element(buffer_.begin(), buffer_.begin() + (k_ - 1), buffer_.end(), ranks_before);
    buffer_.resize(static_cast<size_t>(k_));
    threshold_ = buffer_[k_ - 1];
    for (const Candidate& candidate : buffer_)
      if (ranks_before(threshold_, candidate)) threshold_ = candidate;
    has_threshold_ = true;
  }

  int64_t k_ = 1;
  std::vector<Candidate> buffer_;
  Candidate threshold_{0.f, 0};
  bool has_threshold_ = false;
};

}  // namespace atlas_fast
