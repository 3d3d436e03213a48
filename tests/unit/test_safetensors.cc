// Safetensors reader and writer: writer -> reader round trips with known bytes, sparse holes,
// the golden dsv4-tiny checkpoint (written by an independent implementation, checked against
// its index, its tensor_stats.json and the spec's shapes), and every malformed input the
// reader must reject with an error that names the file and the tensor.
#include "common/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <numeric>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;

const fs::path kGoldenCheckpoint = fs::path(MOERUN_GOLDEN_DIR) / "dsv4-tiny" / "checkpoint";

// A fresh directory per test under the build tree, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = fmt::format("{}.{}.{}", info->test_suite_name(), info->name(), ::getpid());
    std::replace(name.begin(), name.end(), '/', '_');
    path_ = fs::path(MOERUN_BINARY_DIR) / "test_tmp" / name;
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// A safetensors file: u64 LE `length` (default: the JSON's), the JSON, `data_size` bytes of
// data (byte i = i mod 251).
std::string file_bytes(std::string_view json, uint64_t data_size,
                       std::optional<uint64_t> length = std::nullopt) {
  const uint64_t n = length.value_or(json.size());
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += json;
  for (uint64_t i = 0; i < data_size; ++i) out.push_back(static_cast<char>(i % 251));
  return out;
}

// Runs `fn`, expects a moerun::Error and that its message contains every string in `parts`.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "expected moerun::Error containing '" << *parts.begin() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
    }
  }
}

std::vector<std::byte> pattern_bytes(size_t n, uint8_t seed) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 31 + seed) & 0xff);
  return out;
}

// ---- dtypes ------------------------------------------------------------------------------

TEST(SafetensorsDType, NamesAndSizes) {
  // The safetensors spelling and element sizes, written out independently of the table.
  const std::vector<std::tuple<DType, std::string, size_t>> expected = {
      {DType::kBool, "BOOL", 1},       {DType::kU8, "U8", 1},
      {DType::kI8, "I8", 1},           {DType::kI16, "I16", 2},
      {DType::kU16, "U16", 2},         {DType::kI32, "I32", 4},
      {DType::kU32, "U32", 4},         {DType::kI64, "I64", 8},
      {DType::kU64, "U64", 8},         {DType::kF16, "F16", 2},
      {DType::kBF16, "BF16", 2},       {DType::kF32, "F32", 4},
      {DType::kF64, "F64", 8},         {DType::kF8_E4M3, "F8_E4M3", 1},
      {DType::kF8_E5M2, "F8_E5M2", 1}, {DType::kF8_E8M0, "F8_E8M0", 1},
  };
  for (const auto& [dtype, name, size] : expected) {
    EXPECT_EQ(dtype_name(dtype), name);
    EXPECT_EQ(dtype_size(dtype), size) << name;
    EXPECT_EQ(parse_dtype(name), dtype) << name;
  }
  EXPECT_FALSE(parse_dtype("bf16"));
  EXPECT_FALSE(parse_dtype("F8_E4M3FN"));
  EXPECT_FALSE(parse_dtype(""));
}

// ---- header parser -----------------------------------------------------------------------

TEST(SafetensorsHeader, SortsByOffsetAndAllowsGapsAndEmptyTensors) {
  const std::string json = R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},)"
                           R"("a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
                           R"("z":{"dtype":"F16","shape":[0,7],"data_offsets":[1,1]},)"
                           R"("__metadata__":{"format":"pt","k":"v"}})";
  const SafetensorsHeader h = parse_safetensors_header(json, 24, "mem.safetensors");
  ASSERT_EQ(h.tensors.size(), 3u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[1].name, "z");  // empty range [1, 1) inside the gap overlaps nothing
  EXPECT_EQ(h.tensors[2].name, "b");
  EXPECT_EQ(h.tensors[2].begin, 16u);
  EXPECT_EQ(h.tensors[2].nbytes(), 8u);
  EXPECT_EQ(h.tensors[1].numel(), 0);
  EXPECT_EQ(h.header_bytes, json.size());
  EXPECT_EQ(h.metadata, (std::map<std::string, std::string>{{"format", "pt"}, {"k", "v"}}));
}

TEST(SafetensorsHeader, AcceptsEmptyHeaderAndPadding) {
  EXPECT_TRUE(parse_safetensors_header("{}", 0, "x").tensors.empty());
  EXPECT_TRUE(parse_safetensors_header("{}      ", 5, "x").tensors.empty());
}

TEST(SafetensorsHeader, ShapeOverflowIsAnError) {
  // 2^62 · 8 overflows 64 bits; a wrapping product would be 0 and match [0, 0].
  expect_error(
      [] {
        parse_safetensors_header(
            R"({"big":{"dtype":"U8","shape":[4611686018427387904,8],"data_offsets":[0,0]}})", 0,
            "ovf.safetensors");
      },
      {"ovf.safetensors", "tensor 'big'", "overflows"});
  // 2^61 elements of F64 = 2^64 bytes.
  expect_error(
      [] {
        parse_safetensors_header(
            R"({"big":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}})", 0,
            "ovf.safetensors");
      },
      {"ovf.safetensors", "tensor 'big'", "overflows"});
  // A zero dimension makes any product 0.
  EXPECT_EQ(
      parse_safetensors_header(
          R"({"e":{"dtype":"U8","shape":[4611686018427387904,8,0],"data_offsets":[0,0]}})", 0, "x")
          .tensors.size(),
      1u);
}

// ---- malformed files ---------------------------------------------------------------------

struct MalformedCase {
  std::string name;
  std::string bytes;                  // the whole file
  std::vector<std::string> expected;  // besides the file name
};

std::string one_tensor(std::string_view entry) {
  return fmt::format(R"({{"w":{}}})", entry);
}

std::vector<MalformedCase> malformed_cases() {
  const std::string ok_entry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  return {
      {"empty_file", "", {"file too short", "got 0 bytes"}},
      {"truncated_5_bytes", std::string("\x10\x00\x00\x00\x00", 5), {"file too short", "got 5"}},
      {"header_length_past_end", file_bytes("{}", 0, 1000), {"runs past the end", "got 1000"}},
      {"header_length_absurd",
       file_bytes("{}", 0, uint64_t{1} << 62),
       {"runs past the end", "got 4611686018427387904"}},
      {"header_length_max", file_bytes("{}", 0, ~uint64_t{0}), {"runs past the end"}},
      {"invalid_json", file_bytes(R"({"w":{"dtype":"F32",)", 8), {"not valid JSON"}},
      {"trailing_garbage", file_bytes(R"({} x)", 0), {"not valid JSON"}},
      {"empty_header", file_bytes("", 0), {"not valid JSON"}},
      {"header_not_object", file_bytes("[1,2]", 0), {"not a JSON object", "an array"}},
      {"header_is_string", file_bytes(R"("hi")", 0), {"not a JSON object", "\"hi\""}},
      {"unknown_dtype",
       file_bytes(one_tensor(R"({"dtype":"F7","shape":[2],"data_offsets":[0,8]})"), 8),
       {"tensor 'w'", "unknown dtype", "got \"F7\"", "BF16"}},
      {"dtype_not_string",
       file_bytes(one_tensor(R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})"), 8),
       {"tensor 'w'", "dtype is not a string", "got 4"}},
      {"shape_byte_mismatch",
       file_bytes(one_tensor(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), 16),
       {"tensor 'w'", "byte size does not match", "got 8 bytes", "expected 12 bytes"}},
      {"offsets_out_of_range",
       file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[4,12]})"), 8),
       {"tensor 'w'", "past the end of the data section", "[4, 12]", "end <= 8"}},
      {"begin_after_end",
       file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), 8),
       {"tensor 'w'", "begin > end", "[8, 0]"}},
      {"overlapping_offsets",
       file_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                  12),
       {"tensor 'b'", "overlap tensor 'a'", "[4, 12]"}},
      {"duplicate_names",
       file_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                  R"("w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                  16),
       {"tensor 'w'", "duplicate tensor name"}},
      {"missing_field",
       file_bytes(one_tensor(R"({"dtype":"F32","data_offsets":[0,8]})"), 8),
       {"tensor 'w'", "missing field 'shape'"}},
      {"missing_dtype",
       file_bytes(one_tensor(R"({"shape":[2],"data_offsets":[0,8]})"), 8),
       {"tensor 'w'", "missing field 'dtype'"}},
      {"extra_field",
       file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1})"), 8),
       {"tensor 'w'", "unknown field", "got \"x\""}},
      {"duplicate_field",
       file_bytes(one_tensor(R"({"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]})"),
                  8),
       {"tensor 'w'", "duplicate field", "\"dtype\""}},
      {"negative_shape",
       file_bytes(one_tensor(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), 8),
       {"tensor 'w'", "shape entry is not a non-negative integer", "got -2"}},
      {"float_shape",
       file_bytes(one_tensor(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), 8),
       {"tensor 'w'", "shape entry", "got 2.0"}},
      {"shape_not_array",
       file_bytes(one_tensor(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), 8),
       {"tensor 'w'", "shape is not an array"}},
      {"shape_huge_entry",
       file_bytes(
           one_tensor(R"({"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,8]})"), 8),
       {"tensor 'w'", "shape entry too large"}},
      {"offsets_three",
       file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8,8]})"), 8),
       {"tensor 'w'", "more than 2 entries"}},
      {"offsets_one",
       file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[8]})"), 8),
       {"tensor 'w'", "wrong number of entries", "got 1 entries"}},
      {"offsets_negative",
       file_bytes(one_tensor(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"), 8),
       {"tensor 'w'", "data_offsets entry", "got -8"}},
      {"entry_not_object",
       file_bytes(one_tensor("[1]"), 8),
       {"tensor 'w'", "entry is not an object"}},
      {"non_string_metadata",
       file_bytes(fmt::format(R"({{"__metadata__":{{"format":1}},"w":{}}})", ok_entry), 8),
       {"__metadata__", "\"format\"", "not a string", "got 1"}},
      {"metadata_not_object",
       file_bytes(R"({"__metadata__":[]})", 0),
       {"__metadata__ is not an object"}},
      {"duplicate_metadata_key",
       file_bytes(R"({"__metadata__":{"a":"1","a":"2"}})", 0),
       {"duplicate key \"a\""}},
      {"duplicate_metadata",
       file_bytes(R"({"__metadata__":{},"__metadata__":{}})", 0),
       {"duplicate key \"__metadata__\""}},
      {"empty_tensor_name",
       file_bytes(R"({"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})", 0),
       {"tensor name is empty"}},
      {"deep_nesting",
       file_bytes(one_tensor(std::string(100000, '[')), 0),
       {"tensor 'w'", "entry is not an object"}},
  };
}

class SafetensorsMalformed : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(SafetensorsMalformed, OpenRejectsWithFileAndTensorNamed) {
  const TempDir dir;
  const MalformedCase& c = GetParam();
  const fs::path path = dir.path() / (c.name + ".safetensors");
  write_file(path, c.bytes);
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << c.name << ": opened without error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path.string()), std::string::npos) << "file not named in: " << msg;
    for (const std::string& part : c.expected) {
      EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
    }
  }
  // The in-memory entry point (the fuzzer's) gives the same verdict.
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(c.bytes.data()),
                                         c.bytes.size());
  EXPECT_THROW(parse_safetensors_file(bytes, "mem"), Error);
}

INSTANTIATE_TEST_SUITE_P(Cases, SafetensorsMalformed, ::testing::ValuesIn(malformed_cases()),
                         [](const auto& param_info) { return param_info.param.name; });

TEST(SafetensorsFile, MissingFileAndDirectoryAreErrors) {
  const TempDir dir;
  expect_error([&] { SafetensorsFile::open(dir.path() / "absent.safetensors"); },
               {(dir.path() / "absent.safetensors").string(), "No such file"});
  expect_error([&] { SafetensorsFile::open(dir.path()); },
               {dir.path().string(), "not a regular file"});
}

TEST(SafetensorsFile, HeaderOverTheLimitIsRejectedUnread) {
  // A header length inside the file but above the 100 MB limit; the file is sparse.
  const TempDir dir;
  const fs::path path = dir.path() / "huge_header.safetensors";
  constexpr uint64_t kLength = 100'000'008;
  write_file(path, file_bytes("{", 0, kLength));
  fs::resize_file(path, 8 + kLength);
  expect_error([&] { SafetensorsFile::open(path); },
               {path.string(), "header too large", "got 100000008", "at most 100000000"});
}

TEST(SafetensorsFile, EmptyDataSectionAndMoves) {
  const TempDir dir;
  const fs::path path = dir.path() / "empty.safetensors";
  write_file(path, file_bytes(R"({"z":{"dtype":"BF16","shape":[0],"data_offsets":[0,0]}})", 0));
  SafetensorsFile f = SafetensorsFile::open(path);
  ASSERT_NE(f.find("z"), nullptr);
  EXPECT_TRUE(f.data(*f.find("z")).empty());
  EXPECT_EQ(f.find("y"), nullptr);
  // Moving keeps the name lookup valid (it holds views into the tensor names).
  SafetensorsFile g = std::move(f);
  ASSERT_NE(g.find("z"), nullptr);
  EXPECT_EQ(g.find("z")->name, "z");
  g = SafetensorsFile::open(path);
  EXPECT_EQ(g.tensors().size(), 1u);
}

// ---- writer ------------------------------------------------------------------------------

TEST(SafetensorsWriter, RoundTripEveryDtype) {
  const TempDir dir;
  const fs::path path = dir.path() / "all.safetensors";
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("note", "quote \" and backslash \\");
  struct Added {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<std::byte> bytes;
  };
  std::vector<Added> added;
  uint8_t seed = 1;
  for (int d = 0; d <= static_cast<int>(DType::kF8_E8M0); ++d) {
    const auto dtype = static_cast<DType>(d);
    const std::string base(dtype_name(dtype));
    for (const std::vector<int64_t>& shape :
         {std::vector<int64_t>{3, 5}, std::vector<int64_t>{}, std::vector<int64_t>{0, 4},
          std::vector<int64_t>{7}}) {
      const size_t numel = std::accumulate(shape.begin(), shape.end(), size_t{1},
                                           [](size_t a, int64_t b) { return a * size_t(b); });
      Added a{fmt::format("t.{}.{}", base, shape.size() == 0 ? "scalar" : fmt::to_string(shape[0])),
              dtype, shape, pattern_bytes(numel * dtype_size(dtype), seed++)};
      w.add(a.name, a.dtype, a.shape, a.bytes);
      added.push_back(std::move(a));
    }
  }
  w.write(path);

  // Raw layout: length prefix, header starting with __metadata__, padded to 8 with spaces.
  const std::string raw = read_file(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw.compare(8, 16, R"({"__metadata__":)"), 0);
  const std::string header = raw.substr(8, n);
  EXPECT_EQ(header.find_last_not_of(' ') + 1, header.find_last_of('}') + 1);
  // An independent parse of the header sees the tensors in add order.
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(header);
  auto it = j.begin();
  EXPECT_EQ(it.key(), "__metadata__");
  for (const Added& a : added) {
    ++it;
    ASSERT_NE(it, j.end());
    EXPECT_EQ(it.key(), a.name);
  }

  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.file_size(), raw.size());
  EXPECT_EQ(f.header().metadata.at("note"), "quote \" and backslash \\");
  ASSERT_EQ(f.tensors().size(), added.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < added.size(); ++i) {
    const Added& a = added[i];
    const TensorInfo& t = f.tensors()[i];  // add order == offset order
    EXPECT_EQ(t.name, a.name);
    EXPECT_EQ(t.dtype, a.dtype) << a.name;
    EXPECT_EQ(t.shape, a.shape) << a.name;
    EXPECT_EQ(t.begin, offset) << a.name;  // contiguous
    offset = t.end;
    const std::span<const std::byte> data = f.data(t);
    ASSERT_EQ(data.size(), a.bytes.size()) << a.name;
    EXPECT_TRUE(std::equal(data.begin(), data.end(), a.bytes.begin())) << a.name;
    EXPECT_EQ(f.find(a.name), &t);
  }
  EXPECT_EQ(offset, w.data_bytes());
  EXPECT_EQ(f.file_size(), 8 + n + offset);
  // Atomic write: nothing but the file is left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
}

TEST(SafetensorsWriter, HolesAreSparseAndReadAsZeros) {
  const TempDir dir;
  const fs::path path = dir.path() / "holes.safetensors";
  constexpr int64_t kHoleRows = 64 << 20;  // 64 MiB of U8 between, 32 MiB at the end
  const std::vector<std::byte> head = pattern_bytes(16, 7);
  const std::vector<std::byte> mid = pattern_bytes(4096, 9);
  SafetensorsWriter w;
  w.add("head", DType::kF32, {4}, head);
  w.add_hole("hole", DType::kU8, {kHoleRows});
  w.add("mid", DType::kU8, {4096}, mid);
  w.add_hole("tail", DType::kBF16, {4096, 4096});
  EXPECT_EQ(w.num_tensors(), 4u);
  EXPECT_EQ(w.data_bytes(), 16u + kHoleRows + 4096 + 32u * 1024 * 1024);
  w.write(path);

  struct stat st = {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), f.file_size());
  EXPECT_GE(f.file_size(), w.data_bytes());
  // ~96 MiB of holes must not take disk blocks; allow 1 MiB for header, data and metadata.
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, uint64_t{1} << 20)
      << "st_blocks " << st.st_blocks;

  auto span_eq = [](std::span<const std::byte> a, const std::vector<std::byte>& b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
  };
  EXPECT_TRUE(span_eq(f.data(*f.find("head")), head));
  EXPECT_TRUE(span_eq(f.data(*f.find("mid")), mid));
  for (const char* name : {"hole", "tail"}) {
    const std::span<const std::byte> data = f.data(*f.find(name));
    for (size_t i = 0; i < data.size(); i += 1 << 20) EXPECT_EQ(data[i], std::byte{0}) << name;
    EXPECT_EQ(data.back(), std::byte{0}) << name;
  }
}

TEST(SafetensorsWriter, RejectsBadInput) {
  const TempDir dir;
  SafetensorsWriter w;
  expect_error([&] { w.add("x", DType::kF32, {3}, pattern_bytes(8, 0)); },
               {"tensor 'x'", "got 8 bytes", "expected 12"});
  expect_error([&] { w.add_hole("neg", DType::kF32, {-1, 2}); }, {"tensor 'neg'", "shape"});
  expect_error([&] { w.add_hole("big", DType::kU8, {int64_t{1} << 62, 8}); }, {"tensor 'big'"});
  expect_error([&] { w.add_hole("", DType::kU8, {1}); }, {"invalid tensor name"});
  EXPECT_EQ(w.num_tensors(), 0u);
  w.add_hole("dup", DType::kU8, {1});
  w.add("dup", DType::kU8, {2}, pattern_bytes(2, 0));
  const fs::path path = dir.path() / "dup.safetensors";
  expect_error([&] { w.write(path); }, {path.string(), "tensor 'dup'", "duplicate"});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir.path()));  // the temporary file was removed
  expect_error([&] { SafetensorsWriter().write(dir.path() / "no_dir" / "x.safetensors"); },
               {(dir.path() / "no_dir" / "x.safetensors").string()});
}

TEST(SafetensorsWriter, IndexHasTheReleaseLayout) {
  const TempDir dir;
  write_safetensors_index(dir.path(), {{"b.weight", "s2"}, {"a.weight", "s1"}}, 1234);
  // json.dump(indent=2) of the release: metadata first, weight_map keys sorted, no newline.
  EXPECT_EQ(read_file(dir.path() / "model.safetensors.index.json"),
            "{\n"
            "  \"metadata\": {\n"
            "    \"total_size\": 1234\n"
            "  },\n"
            "  \"weight_map\": {\n"
            "    \"a.weight\": \"s1\",\n"
            "    \"b.weight\": \"s2\"\n"
            "  }\n"
            "}");
}

// ---- checkpoints -------------------------------------------------------------------------

// Writes a two-shard checkpoint: a.safetensors {t1, t2}, b.safetensors {t3} and its index.
void write_two_shards(const fs::path& dir) {
  SafetensorsWriter a;
  a.add("t1", DType::kF32, {2, 2}, pattern_bytes(16, 1));
  a.add("t2", DType::kBF16, {3}, pattern_bytes(6, 2));
  a.write(dir / "a.safetensors");
  SafetensorsWriter b;
  b.add_hole("t3", DType::kI64, {5});
  b.write(dir / "b.safetensors");
}

const std::map<std::string, std::string> kTwoShardMap = {
    {"t1", "a.safetensors"}, {"t2", "a.safetensors"}, {"t3", "b.safetensors"}};
constexpr uint64_t kTwoShardBytes = 16 + 6 + 40;

std::string index_text(const std::string& weight_map, std::optional<uint64_t> total_size) {
  if (!total_size) return fmt::format(R"({{"weight_map":{}}})", weight_map);
  return fmt::format(R"({{"metadata":{{"total_size":{}}},"weight_map":{}}})", *total_size,
                     weight_map);
}

TEST(SafetensorsCheckpoint, ShardedRoundTrip) {
  const TempDir dir;
  write_two_shards(dir.path());
  write_safetensors_index(dir.path(), kTwoShardMap, kTwoShardBytes);
  const Checkpoint c = Checkpoint::open(dir.path());
  EXPECT_EQ(c.num_tensors(), 3u);
  EXPECT_EQ(c.total_bytes(), kTwoShardBytes);
  EXPECT_EQ(c.names(), (std::vector<std::string>{"t1", "t2", "t3"}));
  ASSERT_EQ(c.shards().size(), 2u);
  EXPECT_EQ(c.shards()[c.find("t3")->shard_idx].path().filename(), "b.safetensors");
  EXPECT_EQ(c.info("t2").shape, std::vector<int64_t>{3});
  const std::vector<std::byte> t1 = pattern_bytes(16, 1);
  const std::span<const std::byte> d = c.data("t1");
  EXPECT_TRUE(std::equal(d.begin(), d.end(), t1.begin(), t1.end()));
  EXPECT_EQ(c.data("t3").size(), 40u);
  EXPECT_EQ(c.find("nope"), nullptr);
  expect_error([&] { c.info("nope"); }, {dir.path().string(), "tensor 'nope'"});

  // total_size is optional, and other metadata keys are allowed.
  write_file(dir.path() / "model.safetensors.index.json",
             R"({"metadata":{"format":{"x":[1,{}]},"n":null},"weight_map":{"t1":"a.safetensors",)"
             R"("t2":"a.safetensors","t3":"b.safetensors"}})");
  EXPECT_EQ(Checkpoint::open(dir.path()).num_tensors(), 3u);
}

TEST(SafetensorsCheckpoint, SingleFile) {
  const TempDir dir;
  SafetensorsWriter w;
  w.add("x", DType::kU8, {3}, pattern_bytes(3, 5));
  w.write(dir.path() / "model.safetensors");
  const Checkpoint c = Checkpoint::open(dir.path());
  EXPECT_EQ(c.num_tensors(), 1u);
  EXPECT_EQ(c.total_bytes(), 3u);
  EXPECT_EQ(c.data("x")[2], pattern_bytes(3, 5)[2]);
}

struct BadIndexCase {
  std::string name;
  std::string index;                  // model.safetensors.index.json text
  std::vector<std::string> expected;  // besides the index file name
};

std::vector<BadIndexCase> bad_index_cases() {
  const std::string ok_map = R"({"t1":"a.safetensors","t2":"a.safetensors","t3":"b.safetensors"})";
  return {
      {"shard_missing",
       index_text(R"({"t1":"a.safetensors","t2":"a.safetensors","t3":"b.safetensors",)"
                  R"("t4":"c.safetensors"})",
                  std::nullopt),
       {"shard 'c.safetensors'", "tensor 't4'", "does not exist"}},
      {"tensor_absent_from_shard",
       index_text(R"({"t1":"a.safetensors","t2":"a.safetensors","t3":"b.safetensors",)"
                  R"("t9":"a.safetensors"})",
                  std::nullopt),
       {"tensor 't9'", "a.safetensors", "not in its shard"}},
      {"shard_tensor_not_in_index",
       index_text(R"({"t1":"a.safetensors","t3":"b.safetensors"})", std::nullopt),
       {"tensor 't2'", "a.safetensors", "not in the index"}},
      {"tensor_in_wrong_shard",
       index_text(R"({"t1":"a.safetensors","t2":"b.safetensors","t3":"b.safetensors"})",
                  std::nullopt),
       {"tensor 't2'", "b.safetensors", "not in its shard"}},
      {"total_size_mismatch",
       index_text(ok_map, kTwoShardBytes + 1),
       {"total_size", "got 63", "expected 62"}},
      {"total_size_negative",
       index_text(ok_map, std::nullopt).replace(1, 0, R"("metadata":{"total_size":-1},)"),
       {"total_size", "got -1"}},
      {"path_traversal_dotdot",
       index_text(R"({"t1":"../a.safetensors","t2":"a.safetensors","t3":"b.safetensors"})",
                  std::nullopt),
       {"tensor 't1'", "not a plain file name", "\"../a.safetensors\""}},
      {"path_traversal_slash",
       index_text(R"({"t1":"/etc/passwd","t2":"a.safetensors","t3":"b.safetensors"})",
                  std::nullopt),
       {"tensor 't1'", "not a plain file name"}},
      {"duplicate_weight_map_key",
       index_text(R"({"t1":"a.safetensors","t1":"b.safetensors","t2":"a.safetensors",)"
                  R"("t3":"b.safetensors"})",
                  std::nullopt),
       {"tensor 't1'", "duplicate"}},
      {"weight_map_value_not_string",
       index_text(R"({"t1":1})", std::nullopt),
       {"tensor 't1'", "not a string"}},
      {"weight_map_missing", R"({"metadata":{"total_size":62}})", {"missing key \"weight_map\""}},
      {"unknown_top_level_key", R"({"weight_map":{},"extra":1})", {"unknown top-level key"}},
      {"not_json", R"({"weight_map":)", {"not valid JSON"}},
      {"not_object", "[]", {"not a JSON object"}},
  };
}

class SafetensorsBadIndex : public ::testing::TestWithParam<BadIndexCase> {};

TEST_P(SafetensorsBadIndex, OpenRejectsWithFileAndTensorNamed) {
  const TempDir dir;
  write_two_shards(dir.path());
  const BadIndexCase& c = GetParam();
  const fs::path index = dir.path() / "model.safetensors.index.json";
  write_file(index, c.index);
  try {
    Checkpoint::open(dir.path());
    ADD_FAILURE() << c.name << ": opened without error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(index.string()), std::string::npos) << "index not named in: " << msg;
    for (const std::string& part : c.expected) {
      EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, SafetensorsBadIndex, ::testing::ValuesIn(bad_index_cases()),
                         [](const auto& param_info) { return param_info.param.name; });

TEST(SafetensorsCheckpoint, BadShardIsReportedWithItsPath) {
  const TempDir dir;
  write_two_shards(dir.path());
  write_safetensors_index(dir.path(), kTwoShardMap, kTwoShardBytes);
  write_file(dir.path() / "b.safetensors", "junk");
  expect_error([&] { Checkpoint::open(dir.path()); },
               {(dir.path() / "b.safetensors").string(), "file too short"});
}

TEST(SafetensorsCheckpoint, DirectoryWithoutCheckpoint) {
  const TempDir dir;
  expect_error(
      [&] { Checkpoint::open(dir.path()); },
      {dir.path().string(), "no checkpoint", "model.safetensors.index.json", "model.safetensors"});
  expect_error([&] { Checkpoint::open(dir.path() / "absent"); },
               {(dir.path() / "absent").string(), "no checkpoint"});
}

// ---- the golden checkpoint ---------------------------------------------------------------

template <typename T>
T load_le(std::span<const std::byte> data, size_t idx) {
  T v;
  std::memcpy(&v, data.data() + idx * sizeof(T), sizeof(T));
  return v;
}

TEST(SafetensorsGolden, DsV4TinyMatchesIndexStatsAndSpec) {
  const Checkpoint c = Checkpoint::open(kGoldenCheckpoint);
  const nlohmann::json index =
      nlohmann::json::parse(read_file(kGoldenCheckpoint / "model.safetensors.index.json"));
  EXPECT_EQ(c.num_tensors(), index["weight_map"].size());
  EXPECT_EQ(c.total_bytes(), index["metadata"]["total_size"].get<uint64_t>());
  EXPECT_EQ(c.shards().size(), 3u);
  for (const auto& [name, shard] : index["weight_map"].items()) {
    const Checkpoint::Entry* e = c.find(name);
    ASSERT_NE(e, nullptr) << name;
    EXPECT_EQ(c.shards()[e->shard_idx].path().filename(), shard.get<std::string>()) << name;
  }

  // Every tensor's dtype and shape as tensor_stats.json (written by the generator) says.
  const nlohmann::json stats =
      nlohmann::json::parse(read_file(kGoldenCheckpoint.parent_path() / "tensor_stats.json"));
  EXPECT_EQ(stats.size(), c.num_tensors());
  for (const auto& [name, s] : stats.items()) {
    const TensorInfo& t = c.info(name);
    EXPECT_EQ(dtype_name(t.dtype), s["dtype"].get<std::string>()) << name;
    EXPECT_EQ(t.shape, s["shape"].get<std::vector<int64_t>>()) << name;
  }

  // Spec §3.2 at tiny sizes (vocab 1024, dim 256, 16 experts, moe_inter 128, 4 hash choices).
  auto expect_tensor = [&](const std::string& name, DType dtype, std::vector<int64_t> shape) {
    const TensorInfo& t = c.info(name);
    EXPECT_EQ(t.dtype, dtype) << name;
    EXPECT_EQ(t.shape, shape) << name;
  };
  expect_tensor("embed.weight", DType::kBF16, {1024, 256});
  expect_tensor("layers.0.ffn.gate.tid2eid", DType::kI64, {1024, 4});
  expect_tensor("layers.0.ffn.experts.0.w1.weight", DType::kI8, {128, 128});
  expect_tensor("layers.0.ffn.experts.0.w1.scale", DType::kF8_E8M0, {128, 8});
  expect_tensor("layers.0.attn.attn_sink", DType::kF32, {4});

  // The bytes are where the header says: tid2eid sum and first values, E8M0 code sum and
  // exponent range, from tensor_stats.json.
  const auto& tid_stats = stats["layers.0.ffn.gate.tid2eid"];
  const std::span<const std::byte> tid = c.data("layers.0.ffn.gate.tid2eid");
  int64_t sum = 0;
  for (size_t i = 0; i < tid.size() / 8; ++i) sum += load_le<int64_t>(tid, i);
  EXPECT_EQ(sum, tid_stats["sum"].get<int64_t>());
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(load_le<int64_t>(tid, i), tid_stats["first"][i].get<int64_t>()) << i;
  }
  const auto& scale_stats = stats["layers.0.ffn.experts.0.w1.scale"];
  const std::span<const std::byte> scale = c.data("layers.0.ffn.experts.0.w1.scale");
  int64_t code_sum = 0;
  int min_exp = 1000, max_exp = -1000;
  for (std::byte b : scale) {
    code_sum += std::to_integer<int>(b);
    min_exp = std::min(min_exp, std::to_integer<int>(b) - 127);
    max_exp = std::max(max_exp, std::to_integer<int>(b) - 127);
  }
  EXPECT_EQ(code_sum, scale_stats["sum_codes"].get<int64_t>());
  EXPECT_EQ(min_exp, scale_stats["min_exponent"].get<int>());
  EXPECT_EQ(max_exp, scale_stats["max_exponent"].get<int>());
  const std::span<const std::byte> base = c.data("hc_head_base");
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(static_cast<double>(load_le<float>(base, i)),
              stats["hc_head_base"]["first"][i].get<double>())
        << i;
  }
  EXPECT_EQ(c.shards()[0].header().metadata.at("format"), "pt");
}

}  // namespace
}  // namespace moerun
