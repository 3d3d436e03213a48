// End-to-end engine benchmark on a checkpoint too big for the caches (mkmodel --preset small):
//   - memory bandwidth of this machine (a streaming read, same threads) and the decode floor
//     it implies: bytes of weights one batch-1 decode step touches ÷ bandwidth; reports the
//     measured step time ÷ floor;
//   - prefill throughput (one 256-token chunk) and the FP8/FP4 share of it;
//   - the same weights with the top-4 override: expert FLOPs ratio (should be 2/3) and the
//     measured decode and prefill throughput ratios;
//   - resident memory after load ÷ (checkpoint bytes + KV pool bytes).
// Validates first: the optimized engine's logits agree with the reference engine's on a short
// prompt (cosine), and two identical runs give identical logits.
//
// usage: bench_engine CHECKPOINT_DIR [--threads N] [--prompt N] [--decode N]
#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "bench/stream_bandwidth.h"
#include "common/checkpoint_schema.h"
#include "common/error.h"
#include "common/process_stats.h"
#include "worker/engine/engine.h"

namespace {

using moerun::engine::Engine;
using moerun::engine::EngineOptions;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Streaming read of a 1 GiB buffer (far above any L3), GB/s.
double stream_bandwidth(int threads) {
  std::vector<uint64_t> buf((size_t{1} << 30) / sizeof(uint64_t));
#pragma omp parallel for num_threads(threads)
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = i;
  return moerun::bench::stream_read_gbps(buf.data(), buf.size() * sizeof(uint64_t), threads);
}

// Bytes of weights a batch-1 decode step reads: every main-layer tensor except routed experts
// and the embedding table (one row), plus k of the E routed experts of each layer, plus the
// head group. The MTP block is off in this benchmark.
double decode_bytes_per_token(const moerun::ModelConfig& c) {
  const moerun::CheckpointSchema schema(c);
  double bytes = 0;
  for (const auto& t : schema.tensors()) {
    if (t.layer >= 0 && c.is_mtp_layer(t.layer)) continue;
    if (t.role == moerun::TensorRole::kEmbedding) continue;
    if (t.role == moerun::TensorRole::kRoutedExpert) {
      bytes += static_cast<double>(t.nbytes()) * static_cast<double>(c.num_experts_per_tok) /
               static_cast<double>(c.n_routed_experts);
    } else if (t.format == moerun::TensorFormat::kHashTable) {
      continue;  // one row per token
    } else {
      bytes += static_cast<double>(t.nbytes());
    }
  }
  return bytes;
}

std::vector<int32_t> prompt_tokens(int64_t n, int64_t vocab) {
  std::vector<int32_t> t;
  uint32_t h = 12345;
  for (int64_t i = 0; i < n; ++i) {
    h = h * 1664525u + 1013904223u;
    t.push_back(static_cast<int32_t>((h >> 8) % static_cast<uint32_t>(vocab)));
  }
  return t;
}

struct Timing {
  double prefill_tok_s = 0;
  double decode_s_per_tok = 0;
  std::vector<float> last_logits;
};

Timing run(Engine& eng, int64_t prompt, int64_t decode) {
  Timing t;
  const auto toks = prompt_tokens(prompt + decode, eng.config().vocab_size);
  const auto id = eng.add_sequence();
  auto t0 = Clock::now();
  eng.step({{id, std::vector<int32_t>(toks.begin(), toks.begin() + prompt), false}});
  t.prefill_tok_s = static_cast<double>(prompt) / seconds_since(t0);
  const auto decode_phase = moerun::kernels::RowPhase::kDecode;
  eng.step({{id, {toks[prompt]}, false, decode_phase}});  // warm-up decode step
  t0 = Clock::now();
  for (int64_t i = 1; i < decode; ++i) {
    const auto r = eng.step({{id, {toks[prompt + i]}, false, decode_phase}});
    if (i + 1 == decode) t.last_logits = r[0].logits;
  }
  t.decode_s_per_tok = seconds_since(t0) / static_cast<double>(decode - 1);
  eng.free_sequence(id);
  return t;
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

// Optimized vs reference on a short prompt, and repeatability. Runs in a child process so
// that the memory the two extra engines used does not stay in this process's heap and
// distort the resident-memory figure.
int validate(const EngineOptions& o) {
  {
    auto ro = o;
    ro.kernels = moerun::kernels::KernelImpl::kReference;
    Engine ref(ro);
    Engine opt(o);
    const auto toks = prompt_tokens(8, ref.config().vocab_size);
    auto one = [&](Engine& e) {
      const auto id = e.add_sequence();
      auto r = e.step({{id, toks, false}})[0].logits;
      e.free_sequence(id);
      return r;
    };
    const auto lr = one(ref), lo = one(opt), lo2 = one(opt);
    const double cos = cosine(lr, lo);
    std::printf("validation: optimized vs reference logits cosine %.6f; repeat identical: %s\n",
                cos, lo == lo2 ? "yes" : "NO");
    if (cos < 0.99 || lo != lo2) {
      std::fprintf(stderr, "bench_engine: validation failed\n");
      return 1;
    }
  }

  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: bench_engine CHECKPOINT_DIR [--threads N] [--prompt N] [--decode N]\n");
    return 2;
  }
  int threads = 2;
  int64_t prompt = 256, decode = 16;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--threads")
      threads = std::stoi(argv[i + 1]);
    else if (a == "--prompt")
      prompt = std::stoll(argv[i + 1]);
    else if (a == "--decode")
      decode = std::stoll(argv[i + 1]);
    else {
      std::fprintf(stderr, "bench_engine: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  try {
    EngineOptions o;
    o.checkpoint = argv[1];
    o.num_threads = threads;
    o.max_sequences = 1;
    o.max_context = prompt + decode + 8;
    o.max_batch_tokens = prompt;
    o.mtp = false;

    std::fflush(stdout);
    if (const pid_t pid = ::fork(); pid == 0) {
      std::_Exit(validate(o));
    } else {
      int status = 0;
      ::waitpid(pid, &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::fprintf(stderr, "bench_engine: validation failed\n");
        return 1;
      }
    }
    const int64_t rss0 = moerun::resident_bytes();
    Engine e6(o);
    const int64_t rss_loaded = moerun::resident_bytes() - rss0;

    const auto& c = e6.config();
    const double ckpt = static_cast<double>(e6.weights().checkpoint().total_bytes());
    const double kvb = static_cast<double>(e6.capacity().kv_bytes);
    std::printf("model: %s, %s kernels: %s\n", o.checkpoint.string().c_str(), "optimized",
                e6.kernels().describe().c_str());
    std::printf("resident after load: %.1f MB = %.3f x (checkpoint %.1f MB + KV pool %.1f MB)\n",
                rss_loaded / 1e6, rss_loaded / (ckpt + kvb), ckpt / 1e6, kvb / 1e6);

    const double bw = stream_bandwidth(threads);
    std::printf("memory bandwidth (streaming read, %d threads): %.1f GB/s\n", threads, bw);
    const Timing t6 = run(e6, prompt, decode);
    const double bytes6 = decode_bytes_per_token(c);
    const double floor6 = bytes6 / (bw * 1e9);
    std::printf(
        "top-%ld decode batch 1: %.2f ms/token; weights touched %.1f MB/token; floor "
        "%.2f ms; actual/floor %.2f\n",
        static_cast<long>(c.num_experts_per_tok), t6.decode_s_per_tok * 1e3, bytes6 / 1e6,
        floor6 * 1e3, t6.decode_s_per_tok / floor6);
    std::printf("top-%ld prefill (%ld tokens, one step): %.1f tokens/s\n",
                static_cast<long>(c.num_experts_per_tok), static_cast<long>(prompt),
                t6.prefill_tok_s);

    // Weights are mapped lazily; after a prefill and decodes every layer has been touched.
    const int64_t rss_run = moerun::resident_bytes() - rss0;
    std::printf("resident after running: %.1f MB = %.3f x (checkpoint + KV pool)\n", rss_run / 1e6,
                rss_run / (ckpt + kvb));

    auto o4 = o;
    o4.experts_per_token = 4;
    Engine e4(o4);
    const Timing t4 = run(e4, prompt, decode);
    const auto& c4 = e4.config();
    const double bytes4 = decode_bytes_per_token(c4);
    std::printf(
        "top-4 decode batch 1: %.2f ms/token; weights touched %.1f MB/token; actual/floor "
        "%.2f\n",
        t4.decode_s_per_tok * 1e3, bytes4 / 1e6, t4.decode_s_per_tok / (bytes4 / (bw * 1e9)));
    std::printf("top-4 prefill: %.1f tokens/s\n", t4.prefill_tok_s);
    std::printf(
        "top-4 / top-%ld: expert FLOPs %.3f; decode throughput %.3f; prefill throughput "
        "%.3f\n",
        static_cast<long>(c.num_experts_per_tok), 4.0 / static_cast<double>(c.num_experts_per_tok),
        t6.decode_s_per_tok / t4.decode_s_per_tok, t4.prefill_tok_s / t6.prefill_tok_s);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_engine: %s\n", e.what());
    return 1;
  }
}
