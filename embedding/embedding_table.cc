#include "embedding/embedding_table.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/finite.h"

namespace t2d::embedding {

absl::StatusOr<std::unique_ptr<EmbeddingTable>> EmbeddingTable::Create(const config::TableConfig& spec) {
  if (spec.dim() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("table \"", spec.name(), "\": dim must be positive, got ", spec.dim()));
  }
  return std::unique_ptr<EmbeddingTable>(new EmbeddingTable(spec));
}

EmbeddingTable::EmbeddingTable(const config::TableConfig& spec)
    : spec_(spec),
      dim_(spec.dim()),
      init_(spec.initializer()),
      optimizer_(spec.optimizer(), spec.dim()),
      has_step_count_(spec.optimizer().kind() == config::SparseOptimizerConfig::ADAM),
      header_bytes_(sizeof(uint32_t) * (has_step_count_ ? 2 : 1)),
      record_bytes_(header_bytes_ + sizeof(float) * static_cast<size_t>(
                                                         spec.dim() + SparseOptimizer::StateFloats(spec.optimizer().kind(), spec.dim()))) {}

absl::Status EmbeddingTable::Lookup(absl::Span<const int64_t> ids, absl::Span<float> out) const {
  const size_t d = static_cast<size_t>(dim_);
  if (out.size() != ids.size() * d) {
    return absl::InvalidArgumentError(absl::StrCat("table \"", spec_.name(), "\": lookup of ", ids.size(),
                                                   " ids needs ", ids.size() * d, " floats, buffer has ", out.size()));
  }
  // Two passes over small groups: resolve slots (prefetching the index a few ids ahead) and
  // prefetch the records, then copy. Both memory misses of a row overlap with other rows'.
  constexpr size_t kGroup = 32;
  constexpr size_t kAhead = 8;
  const size_t n = ids.size();
  for (size_t i = 0; i < std::min(n, kAhead); ++i) index_.prefetch(ids[i]);
  const char* rec[kGroup];
  for (size_t g = 0; g < n; g += kGroup) {
    const size_t end = std::min(n, g + kGroup);
    for (size_t i = g; i < end; ++i) {
      if (i + kAhead < n) index_.prefetch(ids[i + kAhead]);
      auto it = index_.find(ids[i]);
      const char* r = it == index_.end() ? nullptr : Record(it->second);
      rec[i - g] = r;
      if (r != nullptr) {
        for (size_t off = 0; off < header_bytes_ + d * sizeof(float); off += 64) __builtin_prefetch(r + off);
      }
    }
    for (size_t i = g; i < end; ++i) {
      float* dst = out.data() + i * d;
      if (rec[i - g] == nullptr) {
        init_.Fill(ids[i], absl::Span<float>(dst, d));
      } else {
        std::memcpy(dst, rec[i - g] + header_bytes_, d * sizeof(float));
      }
    }
  }
  return absl::OkStatus();
}

uint32_t EmbeddingTable::AllocateSlot() {
  if (!free_slots_.empty()) {
    const uint32_t s = free_slots_.back();
    free_slots_.pop_back();
    return s;
  }
  if (used_slots_ % kBlockRows == 0 && used_slots_ / kBlockRows == blocks_.size()) {
    blocks_.emplace_back(new char[static_cast<size_t>(kBlockRows) * record_bytes_]);
  }
  return used_slots_++;
}

uint32_t EmbeddingTable::InsertNew(int64_t id) {
  const uint32_t slot = AllocateSlot();
  char* r = Record(slot);
  *LastUpdate(r) = 0;
  if (has_step_count_) *StepCount(r) = 0;
  init_.Fill(id, absl::Span<float>(Values(r), static_cast<size_t>(dim_)));
  optimizer_.InitState(Values(r) + dim_);
  index_.emplace(id, slot);
  ++counters_.admitted;
  return slot;
}

void EmbeddingTable::Remove(int64_t id, uint32_t slot) {
  index_.erase(id);
  free_slots_.push_back(slot);
  ++counters_.evicted;
}

absl::Status EmbeddingTable::ApplyGradients(absl::Span<const int64_t> ids, absl::Span<const float> grads) {
  const size_t d = static_cast<size_t>(dim_);
  if (grads.size() != ids.size() * d) {
    return absl::InvalidArgumentError(absl::StrCat("table \"", spec_.name(), "\": ", ids.size(), " ids need ",
                                                   ids.size() * d, " gradient floats, got ", grads.size()));
  }
  if (const size_t i = FirstNonFinite(grads); i < grads.size()) {
    return absl::InvalidArgumentError(absl::StrCat("table \"", spec_.name(), "\": gradient of id ", ids[i / d],
                                                   " is not finite (", grads[i], "); nothing applied"));
  }
  // Sum the gradients of repeated ids in input order, so the result does not depend on hashing.
  dedup_.clear();
  unique_ids_.clear();
  summed_.resize(grads.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    auto [it, inserted] = dedup_.try_emplace(ids[i], static_cast<uint32_t>(unique_ids_.size()));
    float* dst = summed_.data() + static_cast<size_t>(it->second) * d;
    const float* src = grads.data() + i * d;
    if (inserted) {
      unique_ids_.push_back(ids[i]);
      std::memcpy(dst, src, d * sizeof(float));
    } else {
      for (size_t j = 0; j < d; ++j) dst[j] += src[j];
    }
  }

  ++step_;
  const auto now = static_cast<uint32_t>(step_);
  const int min_count = spec_.admission_min_count();
  // As in Lookup: resolve (or admit) a group of rows while prefetching their records, then
  // update the group, so the memory misses of different rows overlap.
  constexpr size_t kGroup = 32;
  constexpr size_t kAhead = 8;
  const size_t n = unique_ids_.size();
  for (size_t i = 0; i < std::min(n, kAhead); ++i) index_.prefetch(unique_ids_[i]);
  char* rec[kGroup];
  for (size_t g = 0; g < n; g += kGroup) {
    const size_t end = std::min(n, g + kGroup);
    for (size_t i = g; i < end; ++i) {
      if (i + kAhead < n) index_.prefetch(unique_ids_[i + kAhead]);
      const int64_t id = unique_ids_[i];
      rec[i - g] = nullptr;
      uint32_t slot;
      auto it = index_.find(id);
      if (it != index_.end()) {
        slot = it->second;
      } else {
        if (min_count > 1) {
          auto p = pending_.try_emplace(id, 0u).first;
          if (++p->second < static_cast<uint32_t>(min_count)) {
            ++counters_.rejected;
            continue;
          }
          pending_.erase(p);
        }
        slot = InsertNew(id);
      }
      char* r = Record(slot);
      for (size_t off = 0; off < record_bytes_; off += 64) __builtin_prefetch(r + off, 1);
      rec[i - g] = r;
    }
    for (size_t i = g; i < end; ++i) {
      char* r = rec[i - g];
      if (r == nullptr) continue;
      *LastUpdate(r) = now;
      float* w = Values(r);
      optimizer_.Apply(w, w + dim_, StepCount(r), summed_.data() + i * d);
    }
  }

  const int64_t ttl = spec_.eviction_ttl_steps();
  if (ttl > 0 && step_ % std::max<int64_t>(1, ttl / 8) == 0) EvictExpired();
  const int64_t cap = spec_.capacity_rows();
  if (cap > 0 && size() > cap) EvictToCapacity();
  return absl::OkStatus();
}

void EmbeddingTable::EvictExpired() {
  const int64_t ttl = spec_.eviction_ttl_steps();
  std::vector<std::pair<int64_t, uint32_t>> doomed;
  for (const auto& [id, slot] : index_) {
    if (step_ - static_cast<int64_t>(*LastUpdate(Record(slot))) > ttl) doomed.emplace_back(id, slot);
  }
  for (const auto& [id, slot] : doomed) Remove(id, slot);
}

void EmbeddingTable::EvictToCapacity() {
  const int64_t cap = spec_.capacity_rows();
  const int64_t target = cap - cap / 16;
  const size_t excess = static_cast<size_t>(size() - target);
  struct Age {
    uint32_t last_update;
    int64_t id;
    uint32_t slot;
  };
  std::vector<Age> ages;
  ages.reserve(index_.size());
  for (const auto& [id, slot] : index_) {
    ages.push_back({*LastUpdate(Record(slot)), id, slot});
  }
  auto older = [](const Age& a, const Age& b) {
    return a.last_update != b.last_update ? a.last_update < b.last_update : a.id < b.id;
  };
  std::nth_element(ages.begin(), ages.begin() + static_cast<std::ptrdiff_t>(excess), ages.end(), older);
  for (size_t i = 0; i < excess; ++i) Remove(ages[i].id, ages[i].slot);
}

size_t EmbeddingTable::MemoryBytes() const {
  auto map_bytes = [](const auto& m) {
    return m.bucket_count() * (sizeof(typename std::decay_t<decltype(m)>::value_type) + 1);
  };
  return blocks_.size() * static_cast<size_t>(kBlockRows) * record_bytes_ + map_bytes(index_) + map_bytes(pending_) +
         free_slots_.capacity() * sizeof(uint32_t) + blocks_.capacity() * sizeof(void*);
}

void EmbeddingTable::ForEachRow(const std::function<void(const RowView&)>& fn) const {
  std::vector<std::pair<int64_t, uint32_t>> order(index_.begin(), index_.end());
  std::sort(order.begin(), order.end());
  for (const auto& [id, slot] : order) {
    char* r = Record(slot);
    fn(RowView{id, *LastUpdate(r), has_step_count_ ? *StepCount(r) : 0u, Values(r)});
  }
}

void EmbeddingTable::ForEachPending(const std::function<void(int64_t, uint32_t)>& fn) const {
  std::vector<std::pair<int64_t, uint32_t>> order(pending_.begin(), pending_.end());
  std::sort(order.begin(), order.end());
  for (const auto& [id, count] : order) fn(id, count);
}

void EmbeddingTable::PutRow(int64_t id, uint32_t last_update, uint32_t aux, absl::Span<const float> values) {
  auto it = index_.find(id);
  uint32_t slot;
  if (it != index_.end()) {
    slot = it->second;
  } else {
    slot = AllocateSlot();
    index_.emplace(id, slot);
  }
  char* r = Record(slot);
  *LastUpdate(r) = last_update;
  if (has_step_count_) *StepCount(r) = aux;
  std::memcpy(Values(r), values.data(), values.size() * sizeof(float));
}

}  // namespace t2d::embedding
