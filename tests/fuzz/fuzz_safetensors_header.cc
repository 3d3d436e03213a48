// Fuzz target for the safetensors reader: any input must either parse into a header whose
// invariants hold or throw moerun::Error; any other exception, crash or sanitizer report is
// a bug.
//
// Each input is read three ways: as a whole file (u64 length, JSON, data section: the path of
// SafetensorsFile::open), as bare header JSON against a fixed data-section size, so that
// mutations of the JSON reach the schema checks without having to keep the length prefix
// in step, and as a model.safetensors.index.json.
//
// Built as a libFuzzer target when MOERUN_FUZZ is on; built with MOERUN_FUZZ_REPLAY_MAIN
// always, as a replay of the corpus run by ctest.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/safetensors.h"

namespace {

// Data-section size assumed for the bare-JSON reading.
constexpr uint64_t kBareDataSize = 1 << 16;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_safetensors_header: invariant violated: %s\n", what);
    std::abort();
  }
}

// What a successful parse promises (safetensors.h).
void check_header(const moerun::SafetensorsHeader& h, uint64_t data_size, size_t json_size) {
  check(h.header_bytes == json_size, "header_bytes is the JSON length");
  const moerun::TensorInfo* prev = nullptr;
  for (const moerun::TensorInfo& t : h.tensors) {
    check(!t.name.empty(), "tensor names are non-empty");
    check(t.begin <= t.end && t.end <= data_size, "offsets inside the data section");
    uint64_t bytes = static_cast<uint64_t>(t.numel()) * moerun::dtype_size(t.dtype);
    for (int64_t dim : t.shape) check(dim >= 0, "shape entries are non-negative");
    check(t.numel() >= 0 && t.nbytes() == bytes, "nbytes = numel * dtype size");
    if (&t != &h.tensors.front()) check((&t - 1)->begin <= t.begin, "tensors sorted by begin");
    if (t.begin == t.end) continue;  // empty ranges overlap nothing
    if (prev != nullptr) check(t.begin >= prev->end, "no overlap");
    prev = &t;
  }
  if (h.tensors.size() <= 64) {  // quadratic, kept cheap
    for (size_t i = 0; i < h.tensors.size(); ++i) {
      for (size_t j = 0; j < i; ++j) check(h.tensors[i].name != h.tensors[j].name, "names unique");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const moerun::SafetensorsHeader h = moerun::parse_safetensors_file(file, "fuzz-input");
    check(size >= 8 + h.header_bytes, "header inside the file");
    check_header(h, size - 8 - h.header_bytes, h.header_bytes);
  } catch (const moerun::Error&) {
  }
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  try {
    check_header(moerun::parse_safetensors_header(json, kBareDataSize, "fuzz-input"), kBareDataSize,
                 size);
  } catch (const moerun::Error&) {
  }
  // The same bytes as a model.safetensors.index.json.
  try {
    const moerun::SafetensorsIndex index = moerun::parse_safetensors_index(json, "fuzz-index");
    for (size_t i = 0; i < index.weight_map.size(); ++i) {
      const auto& [tensor, shard] = index.weight_map[i];
      if (i > 0) check(index.weight_map[i - 1].first < tensor, "weight_map sorted and unique");
      check(!shard.empty() && shard.find('/') == std::string::npos &&
                shard.find("..") == std::string::npos,
            "shard names are plain file names");
    }
  } catch (const moerun::Error&) {
  }
  return 0;
}

#include "tests/fuzz/replay_main.h"
