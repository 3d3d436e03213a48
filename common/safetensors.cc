// Safetensors reading (strict header parser, mmap-backed files, sharded checkpoints) and
// writing (atomic, with sparse holes). See safetensors.h for the format and the checks.
//
// The header parser is a nlohmann SAX handler rather than a DOM walk: the DOM silently keeps
// the last of two equal keys, and building it takes ~1.6x the time of the SAX pass on the
// ~1,500-tensor headers of the release (bench/bench_safetensors.cc).
#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <limits>
#include <system_error>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace moerun {
namespace {

static_assert(sizeof(size_t) == 8, "safetensors I/O assumes a 64-bit address space");

// The length prefix of a file.
constexpr uint64_t kLengthPrefixBytes = 8;
// Largest header accepted, as in the reference safetensors implementation. The release's
// headers are ~150 KB; a 69k-tensor single file would be ~7 MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Longest string quoted verbatim in an error message (fuzzed or corrupt inputs can hold
// megabyte-long names).
constexpr size_t kMaxQuotedChars = 160;

constexpr std::string_view kSafetensorsIndexName = "model.safetensors.index.json";
constexpr std::string_view kSingleFileName = "model.safetensors";
constexpr std::string_view kMetadataKey = "__metadata__";

struct DTypeSpec {
  DType dtype;
  std::string_view name;
  size_t size;
};
// In enum order.
constexpr std::array<DTypeSpec, 16> kDTypes = {{
    {DType::kBool, "BOOL", 1},
    {DType::kU8, "U8", 1},
    {DType::kI8, "I8", 1},
    {DType::kI16, "I16", 2},
    {DType::kU16, "U16", 2},
    {DType::kI32, "I32", 4},
    {DType::kU32, "U32", 4},
    {DType::kI64, "I64", 8},
    {DType::kU64, "U64", 8},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},
    {DType::kF8_E4M3, "F8_E4M3", 1},
    {DType::kF8_E5M2, "F8_E5M2", 1},
    {DType::kF8_E8M0, "F8_E8M0", 1},
}};

std::string dtype_list() {
  std::string out;
  for (const DTypeSpec& spec : kDTypes) {
    if (!out.empty()) out += ", ";
    out += spec.name;
  }
  return out;
}

// `s` in double quotes for an error message, cut to kMaxQuotedChars.
std::string quote_for_error(std::string_view s) {
  if (s.size() <= kMaxQuotedChars) return fmt::format("\"{}\"", s);
  return fmt::format("\"{}...\" ({} bytes)", s.substr(0, kMaxQuotedChars), s.size());
}

// A tensor name inside 'single quotes', cut like quote_for_error().
std::string name_for_error(std::string_view s) {
  if (s.size() <= kMaxQuotedChars) return std::string(s);
  return fmt::format("{}...", s.substr(0, kMaxQuotedChars));
}

// Element count of `shape`, or nullopt when it does not fit in int64. A zero dimension makes
// the count 0 whatever the others are.
std::optional<uint64_t> checked_numel(std::span<const int64_t> shape) {
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  uint64_t numel = 1;
  for (int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel)) {
      return std::nullopt;
    }
  }
  if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return numel;
}

// Byte size of a tensor, or nullopt on overflow.
std::optional<uint64_t> checked_nbytes(DType dtype, std::span<const int64_t> shape) {
  const std::optional<uint64_t> numel = checked_numel(shape);
  uint64_t nbytes = 0;
  if (!numel || __builtin_mul_overflow(*numel, dtype_size(dtype), &nbytes)) return std::nullopt;
  return nbytes;
}

// ---- header parser ----------------------------------------------------------------------

// SAX handler for one header. Accepts exactly
//   {"__metadata__"?: {str: str}, name: {"dtype": str, "shape": [uint...],
//                                         "data_offsets": [uint, uint]}, ...}
// and throws moerun::Error at the first deviation, so nothing outside the schema (deep
// nesting, huge arrays) is ever accumulated.
class HeaderSax {
 public:
  using json = nlohmann::json;

  HeaderSax(std::string_view label, uint64_t data_size, SafetensorsHeader* out)
      : label_(label), data_size_(data_size), out_(out) {}

  bool done() const { return state_ == State::kDone; }

  bool null() { fail_value("null"); }
  bool boolean(bool value) { fail_value(value ? "true" : "false"); }
  bool number_float(json::number_float_t, const json::string_t& text) { fail_value(text); }
  bool binary(json::binary_t&) { fail_value("binary data"); }

  bool number_integer(json::number_integer_t value) {
    if (value >= 0) return number_unsigned(static_cast<uint64_t>(value));
    fail_value(fmt::to_string(value));
  }

  bool number_unsigned(json::number_unsigned_t value) {
    switch (state_) {
      case State::kShapeEntries:
        if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          fail_tensor("shape entry too large", fmt::to_string(value), "at most 2^63 - 1");
        }
        tensor().shape.push_back(static_cast<int64_t>(value));
        return true;
      case State::kOffsetEntries:
        if (num_offsets_ == 2) {
          fail_tensor("data_offsets has more than 2 entries", fmt::to_string(value),
                      "[begin, end]");
        }
        offsets_[num_offsets_++] = value;
        return true;
      default:
        fail_value(fmt::to_string(value));
    }
  }

  bool string(json::string_t& value) {
    switch (state_) {
      case State::kMetaValue: {
        out_->metadata.emplace(std::move(meta_key_), std::move(value));
        state_ = State::kMetaKeys;
        return true;
      }
      case State::kDtype: {
        const std::optional<DType> dtype = parse_dtype(value);
        if (!dtype) fail_tensor("unknown dtype", quote_for_error(value), "one of " + dtype_list());
        tensor().dtype = *dtype;
        state_ = State::kTensorKeys;
        return true;
      }
      default:
        fail_value(quote_for_error(value));
    }
  }

  bool start_object(size_t) {
    switch (state_) {
      case State::kRoot:
        state_ = State::kRootKeys;
        return true;
      case State::kMetaObject:
        state_ = State::kMetaKeys;
        return true;
      case State::kTensorObject:
        fields_seen_ = 0;
        num_offsets_ = 0;
        state_ = State::kTensorKeys;
        return true;
      default:
        fail_value("an object");
    }
  }

  bool key(json::string_t& key) {
    switch (state_) {
      case State::kRootKeys:
        if (key == kMetadataKey) {
          if (seen_metadata_) fail_plain(fmt::format("duplicate key \"{}\"", kMetadataKey));
          seen_metadata_ = true;
          state_ = State::kMetaObject;
        } else {
          if (key.empty()) fail_plain("tensor name is empty, expected a non-empty name");
          out_->tensors.emplace_back().name = std::move(key);
          state_ = State::kTensorObject;
        }
        return true;
      case State::kMetaKeys:
        if (out_->metadata.contains(key)) {
          fail_plain(fmt::format("{}: duplicate key {}", kMetadataKey, quote_for_error(key)));
        }
        meta_key_ = std::move(key);
        state_ = State::kMetaValue;
        return true;
      case State::kTensorKeys: {
        const int field = key == "dtype"          ? kFieldDtype
                          : key == "shape"        ? kFieldShape
                          : key == "data_offsets" ? kFieldOffsets
                                                  : 0;
        if (field == 0) {
          fail_tensor("unknown field", quote_for_error(key), "only dtype, shape and data_offsets");
        }
        if (fields_seen_ & field)
          fail_tensor("duplicate field", quote_for_error(key), "each field once");
        fields_seen_ |= field;
        state_ = field == kFieldDtype   ? State::kDtype
                 : field == kFieldShape ? State::kShapeArray
                                        : State::kOffsetArray;
        return true;
      }
      default:
        fail_plain("internal: key in unexpected parser state");
    }
  }

  bool end_object() {
    switch (state_) {
      case State::kRootKeys:
        state_ = State::kDone;
        return true;
      case State::kMetaKeys:
        state_ = State::kRootKeys;
        return true;
      case State::kTensorKeys:
        finish_tensor();
        state_ = State::kRootKeys;
        return true;
      default:
        fail_plain("internal: end of object in unexpected parser state");
    }
  }

  bool start_array(size_t) {
    switch (state_) {
      case State::kShapeArray:
        state_ = State::kShapeEntries;
        return true;
      case State::kOffsetArray:
        state_ = State::kOffsetEntries;
        return true;
      default:
        fail_value("an array");
    }
  }

  bool end_array() {
    switch (state_) {
      case State::kShapeEntries:
        state_ = State::kTensorKeys;
        return true;
      case State::kOffsetEntries:
        if (num_offsets_ != 2) {
          fail_tensor("data_offsets has the wrong number of entries",
                      fmt::format("{} entries", num_offsets_), "2 ([begin, end])");
        }
        state_ = State::kTensorKeys;
        return true;
      default:
        fail_plain("internal: end of array in unexpected parser state");
    }
  }

  bool parse_error(size_t position, const std::string&, const json::exception& ex) {
    std::string_view what = ex.what();
    if (what.size() > 2 * kMaxQuotedChars) what = what.substr(0, 2 * kMaxQuotedChars);
    MOERUN_THROW("{}: header is not valid JSON (at byte {} of {}): {}", label_, position,
                 header_size_for_error_, what);
  }

  void set_header_size(size_t size) { header_size_for_error_ = size; }

 private:
  enum class State {
    kRoot,
    kRootKeys,
    kMetaObject,
    kMetaKeys,
    kMetaValue,
    kTensorObject,
    kTensorKeys,
    kDtype,
    kShapeArray,
    kShapeEntries,
    kOffsetArray,
    kOffsetEntries,
    kDone
  };
  static constexpr int kFieldDtype = 1, kFieldShape = 2, kFieldOffsets = 4;

  TensorInfo& tensor() { return out_->tensors.back(); }

  [[noreturn]] void fail_plain(std::string_view what) { MOERUN_THROW("{}: {}", label_, what); }

  [[noreturn]] void fail_tensor(std::string_view what, std::string_view got,
                                std::string_view expected) {
    MOERUN_THROW("{}: tensor '{}': {}, got {}, expected {}", label_, name_for_error(tensor().name),
                 what, got, expected);
  }

  // A value of the wrong kind (`got` describes it) where the state expects something else.
  [[noreturn]] void fail_value(std::string_view got) {
    switch (state_) {
      case State::kRoot:
        MOERUN_THROW("{}: header is not a JSON object, got {}, expected an object", label_, got);
      case State::kMetaObject:
        MOERUN_THROW("{}: {} is not an object, got {}, expected an object of strings", label_,
                     kMetadataKey, got);
      case State::kMetaValue:
        MOERUN_THROW("{}: {} entry {} is not a string, got {}, expected a string", label_,
                     kMetadataKey, quote_for_error(meta_key_), got);
      case State::kTensorObject:
        fail_tensor("entry is not an object", got, "{dtype, shape, data_offsets}");
      case State::kDtype:
        fail_tensor("dtype is not a string", got, "one of " + dtype_list());
      case State::kShapeArray:
        fail_tensor("shape is not an array", got, "an array of non-negative integers");
      case State::kShapeEntries:
        fail_tensor("shape entry is not a non-negative integer", got, "an integer >= 0");
      case State::kOffsetArray:
        fail_tensor("data_offsets is not an array", got, "[begin, end]");
      case State::kOffsetEntries:
        fail_tensor("data_offsets entry is not a non-negative integer", got, "an integer >= 0");
      default:
        MOERUN_THROW("{}: unexpected value {} in the header", label_, got);
    }
  }

  void finish_tensor() {
    TensorInfo& t = tensor();
    for (auto [field, name] : {std::pair{kFieldDtype, "dtype"}, std::pair{kFieldShape, "shape"},
                               std::pair{kFieldOffsets, "data_offsets"}}) {
      if (!(fields_seen_ & field)) {
        fail_tensor(fmt::format("missing field '{}'", name), "an entry without it",
                    "dtype, shape and data_offsets");
      }
    }
    t.begin = offsets_[0];
    t.end = offsets_[1];
    const std::optional<uint64_t> nbytes = checked_nbytes(t.dtype, t.shape);
    if (!nbytes) {
      fail_tensor("size overflows 64 bits",
                  fmt::format("{} [{}]", dtype_name(t.dtype), fmt::join(t.shape, ", ")),
                  "at most 2^63 - 1 elements and 2^64 - 1 bytes");
    }
    if (t.begin > t.end) {
      fail_tensor("data_offsets begin > end", fmt::format("[{}, {}]", t.begin, t.end),
                  "begin <= end");
    }
    if (t.end > data_size_) {
      fail_tensor("data_offsets past the end of the data section",
                  fmt::format("[{}, {}]", t.begin, t.end),
                  fmt::format("end <= {} (data section bytes)", data_size_));
    }
    if (t.end - t.begin != *nbytes) {
      fail_tensor("byte size does not match dtype and shape",
                  fmt::format("{} bytes (data_offsets [{}, {}])", t.end - t.begin, t.begin, t.end),
                  fmt::format("{} bytes for {} [{}]", *nbytes, dtype_name(t.dtype),
                              fmt::join(t.shape, ", ")));
    }
  }

  std::string_view label_;
  uint64_t data_size_;
  SafetensorsHeader* out_;
  size_t header_size_for_error_ = 0;
  State state_ = State::kRoot;
  bool seen_metadata_ = false;
  std::string meta_key_;
  int fields_seen_ = 0;
  std::array<uint64_t, 2> offsets_ = {};
  size_t num_offsets_ = 0;
};

// Throws naming the first name that appears twice. `names` may be reordered.
void check_unique(std::vector<std::string_view>& names, std::string_view label,
                  std::string_view what) {
  std::sort(names.begin(), names.end());
  const auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) {
    MOERUN_THROW("{}: tensor '{}': duplicate {}, got it twice, expected each name once", label,
                 name_for_error(*dup), what);
  }
}

// ---- files ------------------------------------------------------------------------------

// MOERUN_CHECK_SYS, with the error also naming the file the call was about.
template <typename Fn>
auto call_on_file(const std::filesystem::path& path, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error& e) {
    MOERUN_THROW("{}: {}", path.string(), e.what());
  }
}

// A read-only, private mapping of a whole regular file (none for an empty file).
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path) {
    const int fd = call_on_file(
        path, [&] { return MOERUN_CHECK_SYS(::open(path.c_str(), O_RDONLY | O_CLOEXEC)); });
    try {
      struct stat st = {};
      call_on_file(path, [&] { return MOERUN_CHECK_SYS(::fstat(fd, &st)); });
      if (!S_ISREG(st.st_mode)) MOERUN_THROW("{}: not a regular file", path.string());
      size_ = static_cast<uint64_t>(st.st_size);
      if (size_ > 0) {
        void* map = MAP_FAILED;
        call_on_file(path, [&] {
          return MOERUN_CHECK_SYS(
              (map = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED ? -1 : 0);
        });
        data_ = static_cast<const std::byte*>(map);
      }
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  }

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  // Hands the mapping to the caller, who must munmap(data, size).
  const std::byte* release() { return std::exchange(data_, nullptr); }

 private:
  const std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace

// ---- dtypes and tensor info -------------------------------------------------------------

std::string_view dtype_name(DType dtype) {
  const auto idx = static_cast<size_t>(dtype);
  return idx < kDTypes.size() ? kDTypes[idx].name : std::string_view("?");
}

std::optional<DType> parse_dtype(std::string_view name) {
  for (const DTypeSpec& spec : kDTypes) {
    if (spec.name == name) return spec.dtype;
  }
  return std::nullopt;
}

size_t dtype_size(DType dtype) {
  const auto idx = static_cast<size_t>(dtype);
  MOERUN_CHECK(idx < kDTypes.size(), "invalid DType value {}", idx);
  return kDTypes[idx].size;
}

int64_t TensorInfo::numel() const {
  uint64_t numel = 1;  // unsigned: wraps instead of overflowing for unchecked shapes
  for (int64_t dim : shape) numel *= static_cast<uint64_t>(dim);
  return static_cast<int64_t>(numel);
}

// ---- header parsing ---------------------------------------------------------------------

SafetensorsHeader parse_safetensors_header(std::string_view json, uint64_t data_size,
                                           std::string_view label) {
  SafetensorsHeader header;
  header.header_bytes = json.size();
  HeaderSax sax(label, data_size, &header);
  sax.set_header_size(json.size());
  const char* begin = json.data();
  const bool ok = nlohmann::json::sax_parse(begin, begin + json.size(), &sax);
  // The handler throws on every error, so a false return here would be a handler bug.
  MOERUN_CHECK(ok && sax.done(), "{}: header parse stopped early", label);

  std::vector<std::string_view> names;
  names.reserve(header.tensors.size());
  for (const TensorInfo& t : header.tensors) names.push_back(t.name);
  check_unique(names, label, "tensor name");

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              if (a.begin != b.begin) return a.begin < b.begin;
              if (a.end != b.end) return a.end < b.end;
              return a.name < b.name;
            });
  // Empty ranges overlap nothing; among the others, sorted by begin, each must start at or
  // after the end of the previous one.
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : header.tensors) {
    if (t.begin == t.end) continue;
    if (prev != nullptr && t.begin < prev->end) {
      MOERUN_THROW(
          "{}: tensor '{}': data_offsets overlap tensor '{}', got [{}, {}], expected "
          "begin >= {}",
          label, name_for_error(t.name), name_for_error(prev->name), t.begin, t.end, prev->end);
    }
    prev = &t;
  }
  return header;
}

SafetensorsHeader parse_safetensors_file(std::span<const std::byte> file, std::string_view label) {
  if (file.size() < kLengthPrefixBytes) {
    MOERUN_THROW("{}: file too short, got {} bytes, expected at least {} (the header length)",
                 label, file.size(), kLengthPrefixBytes);
  }
  uint64_t header_bytes = 0;  // little-endian on disk, whatever the host
  for (size_t i = 0; i < kLengthPrefixBytes; ++i) {
    header_bytes |= static_cast<uint64_t>(file[i]) << (8 * i);
  }
  const uint64_t room = file.size() - kLengthPrefixBytes;
  if (header_bytes > room) {
    MOERUN_THROW(
        "{}: header length runs past the end of the file, got {}, expected at most {} "
        "(file size {} - 8)",
        label, header_bytes, room, file.size());
  }
  if (header_bytes > kMaxHeaderBytes) {
    MOERUN_THROW("{}: header too large, got {} bytes, expected at most {}", label, header_bytes,
                 kMaxHeaderBytes);
  }
  const std::string_view json(reinterpret_cast<const char*>(file.data()) + kLengthPrefixBytes,
                              header_bytes);
  return parse_safetensors_header(json, room - header_bytes, label);
}

// ---- SafetensorsFile --------------------------------------------------------------------

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  MappedFile mapped(path);
  SafetensorsFile file;
  file.path_ = path;
  file.file_size_ = mapped.bytes().size();
  file.header_ = parse_safetensors_file(mapped.bytes(), path.string());
  file.data_start_ = kLengthPrefixBytes + file.header_.header_bytes;
  file.by_name_.reserve(file.header_.tensors.size());
  for (size_t i = 0; i < file.header_.tensors.size(); ++i) {
    file.by_name_.emplace(file.header_.tensors[i].name, i);
  }
  file.map_ = mapped.release();
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      file_size_(std::exchange(other.file_size_, 0)),
      map_(std::exchange(other.map_, nullptr)),
      data_start_(std::exchange(other.data_start_, 0)),
      header_(std::move(other.header_)),
      by_name_(std::move(other.by_name_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), file_size_);
    path_ = std::move(other.path_);
    file_size_ = std::exchange(other.file_size_, 0);
    map_ = std::exchange(other.map_, nullptr);
    data_start_ = std::exchange(other.data_start_, 0);
    header_ = std::move(other.header_);
    by_name_ = std::move(other.by_name_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<std::byte*>(map_), file_size_);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

std::span<const std::byte> SafetensorsFile::data(const TensorInfo& info) const {
  MOERUN_CHECK(
      info.begin <= info.end && info.end <= file_size_ - data_start_,
      "{}: tensor '{}': byte range [{}, {}] is outside this file's data section ({} bytes)",
      path_.string(), info.name, info.begin, info.end, file_size_ - data_start_);
  return {map_ + data_start_ + info.begin, info.end - info.begin};
}

// ---- Checkpoint -------------------------------------------------------------------------

namespace {

// SAX handler for model.safetensors.index.json:
//   {"metadata": {"total_size": uint, other keys: anything}, "weight_map": {str: str}}
// with "metadata" optional. Throws at the first deviation.
class IndexSax {
 public:
  using json = nlohmann::json;

  IndexSax(std::string_view label, SafetensorsIndex* out) : label_(label), out_(out) {}
  bool done() const { return state_ == State::kDone; }

  bool null() { return value("null"); }
  bool boolean(bool v) { return value(v ? "true" : "false"); }
  bool number_integer(json::number_integer_t v) {
    if (v >= 0) return number_unsigned(static_cast<uint64_t>(v));
    return value(fmt::to_string(v));
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (state_ == State::kTotalSize) {
      out_->total_size = v;
      state_ = State::kMetaKeys;
      return true;
    }
    return value(fmt::to_string(v));
  }
  bool number_float(json::number_float_t, const json::string_t& text) { return value(text); }
  bool binary(json::binary_t&) { return value("binary data"); }

  bool string(json::string_t& v) {
    if (state_ == State::kMapValue) {
      out_->weight_map.emplace_back(std::move(map_key_), std::move(v));
      state_ = State::kMapKeys;
      return true;
    }
    return value(quote_for_error(v));
  }

  bool start_object(size_t) {
    switch (state_) {
      case State::kRoot:
        state_ = State::kRootKeys;
        return true;
      case State::kMetaObject:
        state_ = State::kMetaKeys;
        return true;
      case State::kMapObject:
        state_ = State::kMapKeys;
        return true;
      case State::kSkip:
        ++skip_depth_;
        return true;
      case State::kMetaSkipValue:
        state_ = State::kSkip;
        skip_depth_ = 1;
        return true;
      default:
        return value("an object");
    }
  }
  bool start_array(size_t) {
    if (state_ == State::kSkip) {
      ++skip_depth_;
      return true;
    }
    if (state_ == State::kMetaSkipValue) {
      state_ = State::kSkip;
      skip_depth_ = 1;
      return true;
    }
    return value("an array");
  }
  bool end_array() { return end_container(); }
  bool end_object() { return end_container(); }

  bool key(json::string_t& k) {
    switch (state_) {
      case State::kRootKeys:
        if (k == "metadata" || k == "weight_map") {
          bool& seen = k == "metadata" ? seen_metadata_ : seen_weight_map_;
          if (seen) MOERUN_THROW("{}: duplicate key \"{}\"", label_, k);
          seen = true;
          state_ = k == "metadata" ? State::kMetaObject : State::kMapObject;
          return true;
        }
        MOERUN_THROW("{}: unknown top-level key, got {}, expected \"metadata\" or \"weight_map\"",
                     label_, quote_for_error(k));
      case State::kMetaKeys:
        if (std::find(meta_keys_.begin(), meta_keys_.end(), k) != meta_keys_.end()) {
          MOERUN_THROW("{}: metadata: duplicate key {}", label_, quote_for_error(k));
        }
        meta_keys_.push_back(k);
        state_ = k == "total_size" ? State::kTotalSize : State::kMetaSkipValue;
        return true;
      case State::kMapKeys:
        map_key_ = std::move(k);
        state_ = State::kMapValue;
        return true;
      case State::kSkip:
        return true;
      default:
        MOERUN_THROW("{}: internal: key in unexpected parser state", label_);
    }
  }

  bool parse_error(size_t position, const std::string&, const json::exception& ex) {
    std::string_view what = ex.what();
    if (what.size() > 2 * kMaxQuotedChars) what = what.substr(0, 2 * kMaxQuotedChars);
    MOERUN_THROW("{}: not valid JSON (at byte {}): {}", label_, position, what);
  }

 private:
  enum class State {
    kRoot,
    kRootKeys,
    kMetaObject,
    kMetaKeys,
    kTotalSize,
    kMetaSkipValue,
    kSkip,
    kMapObject,
    kMapKeys,
    kMapValue,
    kDone
  };

  bool end_container() {
    switch (state_) {
      case State::kSkip:
        if (--skip_depth_ == 0) state_ = State::kMetaKeys;
        return true;
      case State::kMetaKeys:
      case State::kMapKeys:
        state_ = State::kRootKeys;
        return true;
      case State::kRootKeys:
        if (!seen_weight_map_) {
          MOERUN_THROW("{}: missing key \"weight_map\", expected an object of tensor -> shard",
                       label_);
        }
        state_ = State::kDone;
        return true;
      default:
        MOERUN_THROW("{}: internal: end of container in unexpected parser state", label_);
    }
  }

  // A scalar or container start of `got` in the current state.
  bool value(std::string_view got) {
    switch (state_) {
      case State::kMetaSkipValue:
        state_ = State::kMetaKeys;
        return true;
      case State::kSkip:
        return true;
      case State::kRoot:
        MOERUN_THROW("{}: not a JSON object, got {}, expected an object", label_, got);
      case State::kMetaObject:
        MOERUN_THROW("{}: metadata is not an object, got {}, expected an object", label_, got);
      case State::kTotalSize:
        MOERUN_THROW(
            "{}: metadata.total_size is not a non-negative integer, got {}, expected "
            "the total tensor bytes",
            label_, got);
      case State::kMapObject:
        MOERUN_THROW(
            "{}: weight_map is not an object, got {}, expected an object of tensor -> "
            "shard file",
            label_, got);
      case State::kMapValue:
        MOERUN_THROW(
            "{}: tensor '{}': weight_map value is not a string, got {}, expected a shard "
            "file name",
            label_, name_for_error(map_key_), got);
      default:
        MOERUN_THROW("{}: unexpected value {}", label_, got);
    }
  }

  std::string_view label_;
  SafetensorsIndex* out_;
  State state_ = State::kRoot;
  bool seen_metadata_ = false;
  bool seen_weight_map_ = false;
  std::vector<std::string> meta_keys_;
  std::string map_key_;
  int skip_depth_ = 0;
};

// A shard name must name a file inside the checkpoint directory.
bool is_plain_file_name(std::string_view name) {
  return !name.empty() && name.find('/') == std::string_view::npos &&
         name.find("..") == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

}  // namespace

SafetensorsIndex parse_safetensors_index(std::string_view json, std::string_view label) {
  SafetensorsIndex index;
  IndexSax sax(label, &index);
  const bool ok = nlohmann::json::sax_parse(json.data(), json.data() + json.size(), &sax);
  MOERUN_CHECK(ok && sax.done(), "{}: index parse stopped early", label);
  std::sort(index.weight_map.begin(), index.weight_map.end());
  for (size_t i = 1; i < index.weight_map.size(); ++i) {
    if (index.weight_map[i - 1].first == index.weight_map[i].first) {
      MOERUN_THROW(
          "{}: tensor '{}': duplicate weight_map key, got it twice, expected each "
          "tensor once",
          label, name_for_error(index.weight_map[i].first));
    }
  }
  for (const auto& [tensor, shard] : index.weight_map) {
    if (!is_plain_file_name(shard)) {
      MOERUN_THROW(
          "{}: tensor '{}': shard file name is not a plain file name, got {}, expected "
          "a name without '/' or '..' (a file beside the index)",
          label, name_for_error(tensor), quote_for_error(shard));
    }
  }
  return index;
}

Checkpoint Checkpoint::open(const std::filesystem::path& dir) {
  Checkpoint ckpt;
  ckpt.dir_ = dir;
  const std::filesystem::path index_path = dir / kSafetensorsIndexName;
  const std::filesystem::path single_path = dir / kSingleFileName;
  std::error_code ec;

  if (!std::filesystem::exists(index_path, ec)) {
    if (!std::filesystem::exists(single_path, ec)) {
      MOERUN_THROW("{}: no checkpoint, expected {} (with its shards) or {} in this directory",
                   dir.string(), kSafetensorsIndexName, kSingleFileName);
    }
    ckpt.shards_.push_back(SafetensorsFile::open(single_path));
    for (const TensorInfo& t : ckpt.shards_[0].tensors()) {
      ckpt.entries_.emplace(t.name, Entry{&t, 0});
    }
    return ckpt;
  }

  const std::string label = index_path.string();
  const MappedFile mapped(index_path);
  SafetensorsIndex index = parse_safetensors_index(
      std::string_view(reinterpret_cast<const char*>(mapped.bytes().data()), mapped.bytes().size()),
      label);

  // Distinct shards in name order, each with the first tensor the index maps to it (for the
  // error when the shard is missing).
  std::map<std::string_view, std::string_view> first_tensor_of_shard;
  for (const auto& [tensor, shard] : index.weight_map) first_tensor_of_shard.emplace(shard, tensor);
  std::unordered_map<std::string_view, size_t> shard_idx;
  ckpt.shards_.reserve(first_tensor_of_shard.size());
  for (const auto& [shard, tensor] : first_tensor_of_shard) {
    const std::filesystem::path shard_path = dir / shard;
    if (!std::filesystem::exists(shard_path, ec)) {
      MOERUN_THROW(
          "{}: shard '{}' (named in the index for tensor '{}' and others) does not "
          "exist, expected {}",
          label, shard, tensor, shard_path.string());
    }
    shard_idx.emplace(shard, ckpt.shards_.size());
    ckpt.shards_.push_back(SafetensorsFile::open(shard_path));
  }

  uint64_t total_bytes = 0;
  for (auto& [tensor, shard] : index.weight_map) {
    const size_t idx = shard_idx.at(shard);
    const TensorInfo* info = ckpt.shards_[idx].find(tensor);
    if (info == nullptr) {
      MOERUN_THROW(
          "{}: tensor '{}': not in its shard, got no such tensor in {}, expected it "
          "there as the index says",
          label, name_for_error(tensor), ckpt.shards_[idx].path().string());
    }
    total_bytes += info->nbytes();
    ckpt.entries_.emplace_hint(ckpt.entries_.end(), std::move(tensor), Entry{info, idx});
  }

  // Every index entry was found in its shard, so the shards hold no extra tensor exactly when
  // the counts agree; otherwise find one to name.
  size_t num_shard_tensors = 0;
  for (const SafetensorsFile& f : ckpt.shards_) num_shard_tensors += f.tensors().size();
  if (num_shard_tensors != ckpt.entries_.size()) {
    for (size_t idx = 0; idx < ckpt.shards_.size(); ++idx) {
      for (const TensorInfo& t : ckpt.shards_[idx].tensors()) {
        const Entry* e = ckpt.find(t.name);
        if (e == nullptr || e->shard_idx != idx) {
          MOERUN_THROW(
              "{}: tensor '{}': in the shard but not in the index, got it in {}, "
              "expected every shard tensor in {}",
              ckpt.shards_[idx].path().string(), name_for_error(t.name),
              ckpt.shards_[idx].path().string(), label);
        }
      }
    }
  }
  if (index.total_size && *index.total_size != total_bytes) {
    MOERUN_THROW(
        "{}: metadata.total_size does not match the tensors, got {}, expected {} (sum "
        "of tensor bytes)",
        label, *index.total_size, total_bytes);
  }
  return ckpt;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, entry] : entries_) total += entry.info->nbytes();
  return total;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) out.push_back(name);
  return out;
}

const Checkpoint::Entry* Checkpoint::find(std::string_view name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

const TensorInfo& Checkpoint::info(std::string_view name) const {
  const Entry* e = find(name);
  if (e == nullptr) {
    MOERUN_THROW("{}: tensor '{}': not in the checkpoint, expected one of its {} tensors",
                 dir_.string(), name, entries_.size());
  }
  return *e->info;
}

std::span<const std::byte> Checkpoint::data(std::string_view name) const {
  const TensorInfo& t = info(name);
  return shards_[find(name)->shard_idx].data(t);
}

// ---- writing ----------------------------------------------------------------------------

namespace {

// Writes all of `bytes` at `offset`.
void pwrite_all(int fd, const std::filesystem::path& path, std::span<const std::byte> bytes,
                uint64_t offset) {
  while (!bytes.empty()) {
    const ssize_t n = call_on_file(path, [&] {
      return MOERUN_CHECK_SYS(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)));
    });
    bytes = bytes.subspan(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
}

// A temporary file beside `path`, renamed over it by commit() and removed otherwise, so
// readers never see a half-written file.
class AtomicFile {
 public:
  explicit AtomicFile(const std::filesystem::path& path) : path_(path) {
    std::filesystem::path dir = path.parent_path();
    if (dir.empty()) dir = ".";
    std::string tmpl = (dir / fmt::format(".{}.tmp.XXXXXX", path.filename().string())).string();
    fd_ = call_on_file(path, [&] { return MOERUN_CHECK_SYS(::mkostemp(tmpl.data(), O_CLOEXEC)); });
    tmp_ = tmpl;
    try {
      // mkostemp creates 0600; checkpoints are meant to be shared.
      call_on_file(path, [&] { return MOERUN_CHECK_SYS(::fchmod(fd_, 0644)); });
    } catch (...) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
      throw;
    }
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  int fd() const { return fd_; }
  const std::filesystem::path& path() const { return path_; }

  void commit() {
    call_on_file(path_, [&] { return MOERUN_CHECK_SYS(::fsync(fd_)); });
    call_on_file(path_, [&] { return MOERUN_CHECK_SYS(::close(std::exchange(fd_, -1))); });
    call_on_file(path_, [&] { return MOERUN_CHECK_SYS(::rename(tmp_.c_str(), path_.c_str())); });
    committed_ = true;
  }

 private:
  std::filesystem::path path_;
  std::filesystem::path tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// JSON string literal for `s`; throws naming `what` when `s` is not valid UTF-8.
std::string json_string(const std::string& s, std::string_view what) {
  try {
    return nlohmann::json(s).dump();
  } catch (const nlohmann::json::exception& e) {
    MOERUN_THROW("SafetensorsWriter: {} is not valid UTF-8: {}", what, e.what());
  }
}

}  // namespace

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  metadata_[std::move(key)] = std::move(value);
}

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<int64_t> shape,
                            std::span<const std::byte> bytes) {
  const std::optional<uint64_t> nbytes = checked_nbytes(dtype, shape);
  if (nbytes && bytes.size() != *nbytes) {
    MOERUN_THROW(
        "SafetensorsWriter: tensor '{}': data size does not match dtype and shape, got "
        "{} bytes, expected {} for {} [{}]",
        name, bytes.size(), *nbytes, dtype_name(dtype), fmt::join(shape, ", "));
  }
  add_hole(std::move(name), dtype, std::move(shape));  // checks the name and shape
  Pending& p = tensors_.back();
  p.bytes.assign(bytes.begin(), bytes.end());
  p.hole = false;
}

void SafetensorsWriter::add_hole(std::string name, DType dtype, std::vector<int64_t> shape) {
  MOERUN_CHECK(!name.empty() && name != kMetadataKey,
               "SafetensorsWriter: invalid tensor name, got \"{}\", expected a non-empty name "
               "other than {}",
               name, kMetadataKey);
  const std::optional<uint64_t> nbytes = checked_nbytes(dtype, shape);
  if (!nbytes) {
    MOERUN_THROW(
        "SafetensorsWriter: tensor '{}': invalid shape, got {} [{}], expected "
        "non-negative dims with at most 2^63 - 1 elements",
        name, dtype_name(dtype), fmt::join(shape, ", "));
  }
  uint64_t end = 0;
  if (__builtin_add_overflow(data_bytes_, *nbytes, &end)) {
    MOERUN_THROW("SafetensorsWriter: tensor '{}': file size overflows 64 bits", name);
  }
  Pending& p = tensors_.emplace_back();
  p.info.name = std::move(name);
  p.info.dtype = dtype;
  p.info.shape = std::move(shape);
  p.info.begin = data_bytes_;
  p.info.end = end;
  p.hole = true;
  data_bytes_ = end;
}

void SafetensorsWriter::write(const std::filesystem::path& path) const {
  std::vector<std::string_view> names;
  names.reserve(tensors_.size());
  for (const Pending& p : tensors_) names.push_back(p.info.name);
  check_unique(names, path.string(), "tensor name in SafetensorsWriter");

  std::string header = "{";
  if (!metadata_.empty()) {
    header += fmt::format("\"{}\":{{", kMetadataKey);
    bool first = true;
    for (const auto& [key, value] : metadata_) {
      if (!first) header += ',';
      first = false;
      header += json_string(key, "metadata key");
      header += ':';
      header += json_string(value, "metadata value");
    }
    header += '}';
  }
  for (const Pending& p : tensors_) {
    if (header.size() > 1) header += ',';
    header += json_string(p.info.name, "tensor name");
    fmt::format_to(
        std::back_inserter(header), ":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
        dtype_name(p.info.dtype), fmt::join(p.info.shape, ","), p.info.begin, p.info.end);
  }
  header += '}';
  header.resize((header.size() + 7) / 8 * 8, ' ');
  MOERUN_CHECK(header.size() <= kMaxHeaderBytes,
               "{}: header too large, got {} bytes, expected at most {}", path.string(),
               header.size(), kMaxHeaderBytes);

  AtomicFile file(path);
  std::array<std::byte, kLengthPrefixBytes> prefix = {};
  for (size_t i = 0; i < prefix.size(); ++i) {
    prefix[i] = static_cast<std::byte>((header.size() >> (8 * i)) & 0xff);
  }
  pwrite_all(file.fd(), path, prefix, 0);
  pwrite_all(file.fd(), path, std::as_bytes(std::span(header)), kLengthPrefixBytes);
  const uint64_t data_start = kLengthPrefixBytes + header.size();
  for (const Pending& p : tensors_) {
    if (!p.hole) pwrite_all(file.fd(), path, p.bytes, data_start + p.info.begin);
  }
  // Extends the file over trailing holes; the holes read as zeros and take no blocks.
  call_on_file(path, [&] {
    return MOERUN_CHECK_SYS(::ftruncate(file.fd(), static_cast<off_t>(data_start + data_bytes_)));
  });
  file.commit();
}

void write_safetensors_index(const std::filesystem::path& dir,
                             const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size) {
  // The release's layout: json.dump(indent=2) of {"metadata": {"total_size": N},
  // "weight_map": {sorted}}; nlohmann's object keeps keys sorted, like the release.
  nlohmann::json index;
  index["metadata"]["total_size"] = total_size;
  index["weight_map"] = nlohmann::json::object();
  for (const auto& [tensor, shard] : weight_map) {
    MOERUN_CHECK(is_plain_file_name(shard),
                 "write_safetensors_index: tensor '{}': shard file name is not a plain file "
                 "name, got {}",
                 tensor, quote_for_error(shard));
    index["weight_map"][tensor] = shard;
  }
  const std::filesystem::path path = dir / kSafetensorsIndexName;
  std::string text;
  try {
    text = index.dump(2);
  } catch (const nlohmann::json::exception& e) {
    MOERUN_THROW("{}: cannot serialise the index: {}", path.string(), e.what());
  }
  AtomicFile file(path);
  pwrite_all(file.fd(), path, std::as_bytes(std::span(text)), 0);
  file.commit();
}

}  // namespace moerun
