// Byte buffers for the messages between worker ranks (commands, results, observations):
// trivially copyable values and arrays appended in order and read back with bounds checks.
// Both ends run the same build on the same kind of machine (one mpirun job), so values travel
// in host byte order.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include "common/error.h"

namespace moerun::engine {

class ByteWriter {
 public:
  template <class T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>, "only trivially copyable values travel");
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    buf_.insert(buf_.end(), p, p + sizeof(T));
  }
  // A count followed by the elements.
  template <class T>
  void put_array(std::span<const T> v) {
    static_assert(std::is_trivially_copyable_v<T>, "only trivially copyable values travel");
    put<int64_t>(static_cast<int64_t>(v.size()));
    const auto* p = reinterpret_cast<const uint8_t*>(v.data());
    buf_.insert(buf_.end(), p, p + v.size_bytes());
  }
  template <class T>
  void put_array(const std::vector<T>& v) {
    put_array(std::span<const T>(v));
  }
  std::vector<uint8_t>& bytes() { return buf_; }
  size_t size() const { return buf_.size(); }

 private:
  std::vector<uint8_t> buf_;
};

class ByteReader {
 public:
  explicit ByteReader(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  template <class T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>, "only trivially copyable values travel");
    MOERUN_CHECK(pos_ + sizeof(T) <= bytes_.size(),
                 "message truncated: reading {} bytes at offset {} of {}", sizeof(T), pos_,
                 bytes_.size());
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  template <class T>
  std::vector<T> get_array() {
    const int64_t n = get<int64_t>();
    MOERUN_CHECK(n >= 0 && static_cast<size_t>(n) <= (bytes_.size() - pos_) / sizeof(T),
                 "message truncated: array of {} elements at offset {} of {}", n, pos_,
                 bytes_.size());
    std::vector<T> v(static_cast<size_t>(n));
    if (n > 0) std::memcpy(v.data(), bytes_.data() + pos_, v.size() * sizeof(T));
    pos_ += v.size() * sizeof(T);
    return v;
  }
  bool done() const { return pos_ == bytes_.size(); }
  size_t remaining() const { return bytes_.size() - pos_; }

 private:
  std::span<const uint8_t> bytes_;
  size_t pos_ = 0;
};

}  // namespace moerun::engine
