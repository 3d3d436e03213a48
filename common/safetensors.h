// Safetensors checkpoints, read through mmap and checked strictly, and written by the tools.
//
// File layout: u64 little-endian header length N, N bytes of JSON
//   {"__metadata__": {str: str}, "<tensor>": {"dtype": D, "shape": [..], "data_offsets": [b, e]}}
// then the data section; offsets are relative to the data section's start.
// A sharded checkpoint is a directory with model.safetensors.index.json
//   {"metadata": {"total_size": bytes}, "weight_map": {"<tensor>": "<shard file>"}}.
//
// Every malformed input (truncated file, header past the end, bad JSON, unknown dtype,
// out-of-range or overlapping offsets, shape/byte mismatch, duplicate names, missing shard,
// index/shard disagreement) throws moerun::Error naming the file and, where there is one, the
// tensor. Parsing never reads past the buffers it is given.
//
// Thread safety: a loaded SafetensorsFile / Checkpoint is immutable; concurrent readers are fine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moerun {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kF16,
  kBF16,
  kF32,
  kF64,
  kF8_E4M3,
  kF8_E5M2,
  kF8_E8M0,
};

// Safetensors spelling: "BOOL", "U8", "I8", ..., "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0".
std::string_view dtype_name(DType dtype);
std::optional<DType> parse_dtype(std::string_view name);
size_t dtype_size(DType dtype);  // bytes per element

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the data section, end exclusive
  uint64_t end = 0;

  int64_t numel() const;  // product of shape (1 for a scalar)
  uint64_t nbytes() const { return end - begin; }
};

// Header of one safetensors file, parsed and validated against the size of its data section.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in data-offset order
  std::map<std::string, std::string> metadata;
  uint64_t header_bytes = 0;  // N: JSON length (not counting the 8-byte prefix)
};

// Parses the JSON header text. `data_size` is the size of the data section that follows;
// `label` names the file in error messages. Checks: valid JSON object; "__metadata__" (if any)
// maps strings to strings; every other key is a tensor with exactly dtype / shape /
// data_offsets; known dtype; non-negative shape; begin ≤ end ≤ data_size; end − begin =
// numel · dtype size (with overflow checks); no duplicate names; no two tensors overlap.
// Gaps between tensors are allowed (the format does not forbid them).
SafetensorsHeader parse_safetensors_header(std::string_view json, uint64_t data_size,
                                           std::string_view label);

// Parses a whole safetensors file held in memory (length prefix, header, data section) with
// the checks of SafetensorsFile::open, which calls it on its mapping; the fuzzer calls it on
// its input.
SafetensorsHeader parse_safetensors_file(std::span<const std::byte> file, std::string_view label);

// model.safetensors.index.json of a sharded checkpoint, parsed and checked: an object with
// "weight_map" (tensor → shard file name, each tensor once, shard names plain file names
// without '/' or '..') and optional "metadata" (its "total_size", if present, an unsigned
// integer). Checkpoint::open calls it; the fuzzer calls it on its input.
struct SafetensorsIndex {
  std::optional<uint64_t> total_size;
  std::vector<std::pair<std::string, std::string>> weight_map;  // sorted by tensor name
};
SafetensorsIndex parse_safetensors_index(std::string_view json, std::string_view label);

// One memory-mapped .safetensors file. Data pages are only touched when a tensor's bytes
// are read, so opening a 4 GB shard (or a sparse skeleton) costs only its header.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::filesystem::path& path);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  // nullptr when absent.
  const TensorInfo* find(std::string_view name) const;
  // The tensor's bytes inside the mapping (valid while this object lives).
  std::span<const std::byte> data(const TensorInfo& info) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  uint64_t file_size_ = 0;
  const std::byte* map_ = nullptr;  // whole file, PROT_READ, MAP_PRIVATE
  uint64_t data_start_ = 0;         // 8 + header_bytes
  SafetensorsHeader header_;
  std::unordered_map<std::string_view, size_t> by_name_;  // views into header_.tensors
};

// A checkpoint directory: either model.safetensors.index.json plus its shards, or a single
// model.safetensors. Shards are opened (headers parsed) when the checkpoint is opened; the
// tensor data stays untouched until read.
class Checkpoint {
 public:
  struct Entry {
    const TensorInfo* info;  // owned by the shard
    size_t shard_idx;
  };

  static Checkpoint open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const std::vector<SafetensorsFile>& shards() const { return shards_; }
  size_t num_tensors() const { return entries_.size(); }
  uint64_t total_bytes() const;  // sum of tensor byte sizes
  // Sorted tensor names.
  std::vector<std::string> names() const;
  const Entry* find(std::string_view name) const;  // nullptr when absent
  // Throws moerun::Error naming the tensor and the checkpoint when absent.
  const TensorInfo& info(std::string_view name) const;
  std::span<const std::byte> data(std::string_view name) const;

 private:
  std::filesystem::path dir_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, Entry, std::less<>> entries_;
};

// Writes one safetensors file. Tensors are laid out in the order they are added; the header
// is padded with spaces to a multiple of 8 bytes. A "hole" tensor gets its header entry and
// byte range but no data: the file is extended with ftruncate so the region reads as zeros
// and takes no disk space (sparse skeletons of full-size checkpoints).
class SafetensorsWriter {
 public:
  void set_metadata(std::string key, std::string value);
  // Copies `bytes`; its size must equal numel · dtype_size.
  void add(std::string name, DType dtype, std::vector<int64_t> shape,
           std::span<const std::byte> bytes);
  void add_hole(std::string name, DType dtype, std::vector<int64_t> shape);
  uint64_t data_bytes() const { return data_bytes_; }
  size_t num_tensors() const { return tensors_.size(); }
  // Throws moerun::Error on I/O failure or a duplicate name.
  void write(const std::filesystem::path& path) const;

 private:
  struct Pending {
    TensorInfo info;
    std::vector<std::byte> bytes;  // empty for holes
    bool hole = false;
  };
  std::vector<Pending> tensors_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_bytes_ = 0;
};

// Writes model.safetensors.index.json: {"metadata": {"total_size": N}, "weight_map": {...}}.
void write_safetensors_index(const std::filesystem::path& dir,
                             const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size);

}  // namespace moerun
