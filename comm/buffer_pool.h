#pragma once
// BufferPool: message buffers kept for reuse, so that a transport sending and receiving
// messages of the same few sizes (a pull's pieces: 256 KiB each) neither allocates nor
// zero-fills a fresh std::string for every one. A std::string can only grow its size() by
// filling the new bytes, and that fill of a pull reply cost a shard server three quarters of
// what looking up its rows did; a reused buffer's size() only shrinks or grows by a little.
//
// Take(n) returns a string of size() n whose contents are unspecified (stale bytes of an
// earlier message, zeros where it had to grow): the caller overwrites every byte it sends.
// It picks the pooled buffer whose capacity is at least n and at most 2n + 64 KiB (so that a
// small message never keeps a large buffer), preferring the largest size() (the least to
// fill), and otherwise allocates. Put keeps at most kMaxBuffers buffers and kMaxBytes of
// capacity, dropping the oldest first.
//
// Thread-safety: none; one per transport, used by its one thread.

#include <algorithm>
#include <cstddef>
#include <deque>
#include <string>

namespace t2d::comm {

class BufferPool {
 public:
  static constexpr size_t kMaxBuffers = 16;
  static constexpr size_t kMaxBytes = size_t{64} << 20;

  std::string Take(size_t n) {
    auto best = buffers_.end();
    for (auto it = buffers_.begin(); it != buffers_.end(); ++it) {
      const size_t cap = it->capacity();
      if (cap < n || cap > 2 * n + (size_t{64} << 10)) continue;
      if (best == buffers_.end() || it->size() > best->size()) best = it;
    }
    std::string s;
    if (best != buffers_.end()) {
      s = std::move(*best);
      bytes_ -= s.capacity();
      buffers_.erase(best);
    }
    s.resize(n);
    return s;
  }

  void Put(std::string s) {
    if (s.capacity() < kMinBytes || s.capacity() > kMaxBytes) return;
    bytes_ += s.capacity();
    buffers_.push_back(std::move(s));
    while (buffers_.size() > kMaxBuffers || bytes_ > kMaxBytes) {
      bytes_ -= buffers_.front().capacity();
      buffers_.pop_front();
    }
  }

  size_t size() const { return buffers_.size(); }
  size_t bytes() const { return bytes_; }  // the pooled buffers' total capacity

 private:
  // Below this a fresh allocation costs about what the search does.
  static constexpr size_t kMinBytes = 4096;
  std::deque<std::string> buffers_;
  size_t bytes_ = 0;  // total capacity held
};

}  // namespace t2d::comm
