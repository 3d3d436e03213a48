// Header-parsing speed of Checkpoint::open on a checkpoint shaped like DeepSeek-V4-Flash:
// the spec's §3.2 tensor table (69,187 tensors, 159,609,485,896 bytes) in 46 sparse shards
// written with SafetensorsWriter::add_hole (MTP in the last shard), plus the index.
//
// Baseline, measured in the same run: nlohmann::json::parse (DOM) of the same header and
// index texts, which checks nothing. Reported as a ratio (> 1: Checkpoint::open is faster).
//
//   bench_safetensors            synthetic Flash-shaped checkpoint in a temporary directory
//   bench_safetensors DIR        an existing checkpoint directory instead
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/safetensors.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;

constexpr size_t kFlashTensors = 69'187;
constexpr uint64_t kFlashBytes = 159'609'485'896;
constexpr size_t kFlashShards = 46;
constexpr int kRepeats = 7;

struct Spec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};

// The Flash tensor table of model-dsv4-flash.md §3.2: 43 layers (0, 1 without compressor;
// then ratio 4 and 128 alternating: 21 and 20 layers), hash routing in layers 0..2, MTP.
std::vector<Spec> flash_tensors() {
  std::vector<Spec> t;
  auto add = [&](std::string name, DType dtype, std::vector<int64_t> shape) {
    t.push_back({std::move(name), dtype, std::move(shape)});
  };
  auto fp8 = [&](const std::string& p, int64_t out, int64_t in) {
    add(p + ".weight", DType::kF8_E4M3, {out, in});
    add(p + ".scale", DType::kF8_E8M0, {(out + 127) / 128, (in + 127) / 128});
  };
  auto layer = [&](const std::string& p, int ratio, bool hash_routed) {
    for (const char* k : {"attn", "ffn"}) {
      add(fmt::format("{}.hc_{}_fn", p, k), DType::kF32, {24, 16384});
      add(fmt::format("{}.hc_{}_base", p, k), DType::kF32, {24});
      add(fmt::format("{}.hc_{}_scale", p, k), DType::kF32, {3});
      add(fmt::format("{}.{}_norm.weight", p, k), DType::kBF16, {4096});
    }
    const std::string a = p + ".attn";
    add(a + ".attn_sink", DType::kF32, {64});
    fp8(a + ".wq_a", 1024, 4096);
    add(a + ".q_norm.weight", DType::kBF16, {1024});
    fp8(a + ".wq_b", 32768, 1024);
    fp8(a + ".wkv", 512, 4096);
    add(a + ".kv_norm.weight", DType::kBF16, {512});
    fp8(a + ".wo_a", 8192, 4096);
    fp8(a + ".wo_b", 4096, 8192);
    if (ratio != 0) {
      const int64_t d = ratio == 4 ? 1024 : 512;
      add(a + ".compressor.wkv.weight", DType::kBF16, {d, 4096});
      add(a + ".compressor.wgate.weight", DType::kBF16, {d, 4096});
      add(a + ".compressor.ape", DType::kF32,
          ratio == 4 ? std::vector<int64_t>{4, 1024} : std::vector<int64_t>{128, 512});
      add(a + ".compressor.norm.weight", DType::kBF16, {512});
    }
    if (ratio == 4) {
      const std::string i = a + ".indexer";
      fp8(i + ".wq_b", 8192, 1024);
      add(i + ".weights_proj.weight", DType::kBF16, {64, 4096});
      add(i + ".compressor.wkv.weight", DType::kBF16, {256, 4096});
      add(i + ".compressor.wgate.weight", DType::kBF16, {256, 4096});
      add(i + ".compressor.ape", DType::kF32, {4, 256});
      add(i + ".compressor.norm.weight", DType::kBF16, {128});
    }
    const std::string f = p + ".ffn";
    add(f + ".gate.weight", DType::kBF16, {256, 4096});
    if (hash_routed) {
      add(f + ".gate.tid2eid", DType::kI64, {129280, 6});
    } else {
      add(f + ".gate.bias", DType::kF32, {256});
    }
    for (int e = 0; e < 256; ++e) {
      const std::string x = fmt::format("{}.experts.{}", f, e);
      add(x + ".w1.weight", DType::kI8, {2048, 2048});
      add(x + ".w1.scale", DType::kF8_E8M0, {2048, 128});
      add(x + ".w2.weight", DType::kI8, {4096, 1024});
      add(x + ".w2.scale", DType::kF8_E8M0, {4096, 64});
      add(x + ".w3.weight", DType::kI8, {2048, 2048});
      add(x + ".w3.scale", DType::kF8_E8M0, {2048, 128});
    }
    fp8(f + ".shared_experts.w1", 2048, 4096);
    fp8(f + ".shared_experts.w2", 4096, 2048);
    fp8(f + ".shared_experts.w3", 2048, 4096);
  };

  add("embed.weight", DType::kBF16, {129280, 4096});
  add("head.weight", DType::kBF16, {129280, 4096});
  add("norm.weight", DType::kBF16, {4096});
  add("hc_head_fn", DType::kF32, {4, 16384});
  add("hc_head_base", DType::kF32, {4});
  add("hc_head_scale", DType::kF32, {1});
  for (int l = 0; l < 43; ++l) {
    const int ratio = l < 2 ? 0 : (l % 2 == 0 ? 4 : 128);
    layer(fmt::format("layers.{}", l), ratio, l < 3);
  }
  add("mtp.0.e_proj.weight", DType::kF8_E4M3, {4096, 4096});
  add("mtp.0.e_proj.scale", DType::kF8_E8M0, {32, 32});
  add("mtp.0.h_proj.weight", DType::kF8_E4M3, {4096, 4096});
  add("mtp.0.h_proj.scale", DType::kF8_E8M0, {32, 32});
  for (const char* n : {"enorm", "hnorm", "norm"}) {
    add(fmt::format("mtp.0.{}.weight", n), DType::kBF16, {4096});
  }
  add("mtp.0.hc_head_fn", DType::kF32, {4, 16384});
  add("mtp.0.hc_head_base", DType::kF32, {4});
  add("mtp.0.hc_head_scale", DType::kF32, {1});
  layer("mtp.0", 0, false);
  return t;
}

// Writes the 46 shards and the index.
void write_flash_skeleton(const fs::path& dir, const std::vector<Spec>& all) {
  const auto mtp_begin = std::find_if(all.begin(), all.end(),
                                      [](const Spec& s) { return s.name.starts_with("mtp."); });
  const size_t num_main = static_cast<size_t>(mtp_begin - all.begin());
  std::map<std::string, std::string> weight_map;
  uint64_t total = 0;
  for (size_t s = 0; s < kFlashShards; ++s) {
    const bool last = s + 1 == kFlashShards;
    const size_t lo = last ? num_main : num_main * s / (kFlashShards - 1);
    const size_t hi = last ? all.size() : num_main * (s + 1) / (kFlashShards - 1);
    const std::string shard =
        fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, kFlashShards);
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    for (size_t i = lo; i < hi; ++i) {
      w.add_hole(all[i].name, all[i].dtype, all[i].shape);
      weight_map[all[i].name] = shard;
    }
    total += w.data_bytes();
    w.write(dir / shard);
  }
  write_safetensors_index(dir, weight_map, total);
}

std::string read_text(const fs::path& path, uint64_t offset, uint64_t size) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(offset));
  std::string out(size, '\0');
  in.read(out.data(), static_cast<std::streamsize>(size));
  MOERUN_CHECK(in.gcount() == static_cast<std::streamsize>(size), "{}: short read", path.string());
  return out;
}

template <typename Fn>
std::vector<double> time_ms(Fn&& fn) {
  std::vector<double> ms;
  for (int r = 0; r < kRepeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms;
}

int run(int argc, char** argv) {
  fs::path dir;
  fs::path temp;
  if (argc > 1) {
    dir = argv[1];
  } else {
    temp = fs::temp_directory_path() / fmt::format("moerun_bench_safetensors.{}", ::getpid());
    fs::remove_all(temp);
    fs::create_directories(temp);
    dir = temp;
    const std::vector<Spec> all = flash_tensors();
    uint64_t bytes = 0;
    for (const Spec& s : all) {
      int64_t n = 1;
      for (int64_t d : s.shape) n *= d;
      bytes += static_cast<uint64_t>(n) * dtype_size(s.dtype);
    }
    MOERUN_CHECK(all.size() == kFlashTensors && bytes == kFlashBytes,
                 "synthetic table does not match the spec: {} tensors, {} bytes", all.size(),
                 bytes);
    const auto t0 = std::chrono::steady_clock::now();
    write_flash_skeleton(dir, all);
    fmt::print(
        "wrote {} tensors in {} sparse shards to {} in {:.0f} ms\n", all.size(), kFlashShards,
        dir.string(),
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }

  // Validate before timing.
  const Checkpoint ckpt = Checkpoint::open(dir);
  if (temp.empty()) {
    fmt::print("{}: {} tensors, {} shards, {} bytes\n", dir.string(), ckpt.num_tensors(),
               ckpt.shards().size(), ckpt.total_bytes());
  } else {
    MOERUN_CHECK(ckpt.num_tensors() == kFlashTensors && ckpt.total_bytes() == kFlashBytes &&
                     ckpt.shards().size() == kFlashShards,
                 "reopened checkpoint differs: {} tensors, {} bytes, {} shards", ckpt.num_tensors(),
                 ckpt.total_bytes(), ckpt.shards().size());
  }

  // The same texts in memory, for the baseline and the parse-only figure.
  std::vector<std::string> headers;
  std::vector<uint64_t> data_sizes;
  uint64_t header_bytes = 0;
  for (const SafetensorsFile& f : ckpt.shards()) {
    headers.push_back(read_text(f.path(), 8, f.header().header_bytes));
    data_sizes.push_back(f.file_size() - 8 - f.header().header_bytes);
    header_bytes += headers.back().size();
  }
  const fs::path index_path = dir / "model.safetensors.index.json";
  const std::string index =
      fs::exists(index_path) ? read_text(index_path, 0, fs::file_size(index_path)) : "";

  size_t sink = 0;
  const std::vector<double> open_ms = time_ms([&] { sink += Checkpoint::open(dir).num_tensors(); });
  const std::vector<double> parse_ms = time_ms([&] {
    for (size_t i = 0; i < headers.size(); ++i) {
      sink += parse_safetensors_header(headers[i], data_sizes[i], "bench").tensors.size();
    }
  });
  const std::vector<double> dom_headers_ms = time_ms([&] {
    for (const std::string& h : headers) sink += nlohmann::json::parse(h).size();
  });
  const std::vector<double> dom_all_ms = time_ms([&] {
    for (const std::string& h : headers) sink += nlohmann::json::parse(h).size();
    if (!index.empty()) sink += nlohmann::json::parse(index)["weight_map"].size();
  });

  const double n = static_cast<double>(ckpt.num_tensors());
  auto median = [](const std::vector<double>& v) { return v[v.size() / 2]; };
  fmt::print("headers: {} tensors, {} files, {:.2f} MB of header JSON, index {:.2f} MB\n",
             ckpt.num_tensors(), headers.size(), header_bytes / 1e6, index.size() / 1e6);
  fmt::print("{:<44} {:>9} {:>9} {:>14}\n", "(best / median of " + std::to_string(kRepeats) + ")",
             "best ms", "median ms", "tensors/s");
  auto row = [&](const std::string& what, const std::vector<double>& ms) {
    fmt::print("{:<44} {:>9.1f} {:>9.1f} {:>14.3g}\n", what, ms.front(), median(ms),
               n / (ms.front() / 1e3));
  };
  row("Checkpoint::open (index + shards, checked)", open_ms);
  row("baseline: json::parse DOM, headers + index", dom_all_ms);
  row("parse_safetensors_header, headers only", parse_ms);
  row("baseline: json::parse DOM, headers only", dom_headers_ms);
  fmt::print("ratio Checkpoint::open vs DOM baseline (headers + index): {:.2f}x faster\n",
             dom_all_ms.front() / open_ms.front());
  fmt::print("ratio parse_safetensors_header vs DOM (headers only):     {:.2f}x faster\n",
             dom_headers_ms.front() / parse_ms.front());
  if (sink == 0) fmt::print("(nothing parsed)\n");

  if (!temp.empty()) fs::remove_all(temp);
  return 0;
}

}  // namespace
}  // namespace moerun

int main(int argc, char** argv) {
  try {
    return moerun::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_safetensors: %s\n", e.what());
    return 1;
  }
}
