// moerun-worker --model DIR --prompts FILE [--max-new-tokens N] [--out FILE.json]
//               [--dump-logits FILE.safetensors] [--layout pp=P,ep=E | --cluster FILE]
//               [--transport mpi|nccl] [--micro-batches M] [--deadline S] [--fault SPEC]
//               [--kernels reference|optimized] [--threads N] [--experts-per-token K] ...
//
// A worker rank of a moerun cluster, started by mpirun with pp·ep ranks. Rank 0 leads: until
// the coordinator link exists it takes its requests from a local prompt file (token ids, one
// prompt per line), runs them with continuous batching and prints each completion; the other
// ranks serve the leader's step plans. --single-process runs the same prompts through the
// single-process engine instead (the reference the cluster must match bit for bit).
// Exit status 0, 1 on errors (message on stderr), 2 on usage errors.
#include <cstdio>
#include <fstream>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "worker/engine/cluster_flags.h"
#include "worker/engine/engine.h"
#include "worker/engine/prompt_runner.h"

namespace {

using namespace moerun;

void report(engine::StepEngine& eng, const std::vector<engine::PromptResult>& results,
            const engine::PromptRunStats& st, const std::string& out_json,
            const std::string& dump_logits) {
  for (size_t i = 0; i < results.size(); ++i) {
    std::printf("prompt %zu (%zu tokens):", i, results[i].prompt.size());
    for (int32_t t : results[i].generated) std::printf(" %d", t);
    std::printf("\n");
  }
  std::fprintf(stderr,
               "moerun-worker: %zu prompts, %lld prompt + %lld generated tokens in %lld steps, "
               "%.3f s (%.1f generated tokens/s)\n",
               results.size(), static_cast<long long>(st.prompt_tokens),
               static_cast<long long>(st.generated_tokens), static_cast<long long>(st.steps),
               st.seconds,
               st.seconds > 0 ? static_cast<double>(st.generated_tokens) / st.seconds : 0.0);
  if (!dump_logits.empty())
    engine::write_prompt_results(results, eng.config().vocab_size, dump_logits);
  if (!out_json.empty()) {
    nlohmann::json j;
    j["steps"] = st.steps;
    j["seconds"] = st.seconds;
    j["prompt_tokens"] = st.prompt_tokens;
    j["generated_tokens"] = st.generated_tokens;
    j["decode_steps"] = st.decode_steps;
    j["decode_tokens"] = st.decode_tokens;
    j["decode_seconds"] = st.decode_seconds;
    for (const auto& r : results) j["completions"].push_back(r.generated);
    if (auto* cluster = dynamic_cast<engine::DistributedEngine*>(&eng)) {
      for (const engine::RankStats& s : cluster->stats()) {
        nlohmann::json rs;
        rs["rank"] = s.rank;
        rs["steps"] = s.steps;
        rs["step_seconds"] = s.step_seconds;
        rs["comm_seconds"] = s.comm_seconds;
        rs["dispatch_bytes_sent"] = s.exchange.dispatch_sent;
        rs["combine_bytes_sent"] = s.exchange.combine_sent;
        rs["dispatch_tokens"] = s.exchange.tokens;
        rs["pipeline_bytes_sent"] = s.pipeline_sent;
        rs["resident_bytes"] = s.resident_bytes;
        rs["experts"] = {s.expert_begin, s.expert_end};
        rs["layers"] = {s.layer_begin, s.layer_end};
        j["ranks"].push_back(rs);
      }
    }
    std::ofstream f(out_json);
    MOERUN_CHECK(f.good(), "cannot write {}", out_json);
    f << j.dump(1) << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moerun worker: one rank of an mpirun-launched moerun cluster"};
  engine::EngineOptions eo;
  engine::ClusterFlags cluster;
  engine::PromptRunOptions run;
  std::string model, prompts_file, kernels = "optimized", out_json, dump_logits;
  bool single = false;
  app.add_option("--model", model, "Checkpoint folder (config.json + safetensors)")->required();
  app.add_option("--prompts", prompts_file, "Prompt file: token ids, one prompt per line")
      ->required();
  app.add_option("--max-new-tokens", run.max_new_tokens, "Tokens to generate per prompt")
      ->check(CLI::PositiveNumber);
  app.add_option("--prefill-chunk", run.prefill_chunk, "Prompt tokens per step (0: all that fit)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--temperature", run.sampling.temperature, "0: greedy");
  app.add_option("--top-k", run.sampling.top_k);
  app.add_option("--top-p", run.sampling.top_p);
  app.add_option("--seed", run.sampling.seed);
  app.add_option("--stop-token", run.stop_tokens, "Token ids that end a completion");
  app.add_option("--out", out_json, "Write completions and per-rank statistics as JSON");
  app.add_option("--dump-logits", dump_logits,
                 "Write every generated token and the logits it was drawn from (safetensors)");
  app.add_option("--kernels", kernels, "Kernel set")
      ->check(CLI::IsMember({"reference", "optimized"}));
  app.add_option("--threads", eo.num_threads, "Kernel threads per rank (default: OpenMP's)");
  app.add_option("--experts-per-token", eo.experts_per_token,
                 "Override num_experts_per_tok (the 4Expert release: 4)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-sequences", eo.max_sequences, "Sequence slots per column")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-batch-tokens", eo.max_batch_tokens, "Rows per step and column")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-context", eo.max_context, "Positions per sequence");
  app.add_flag("--mtp", eo.mtp, "Run the MTP block alongside");
  app.add_flag("--single-process", single,
               "Run in this process with the single-process engine (no cluster)");
  engine::add_cluster_flags(app, cluster);
  CLI11_PARSE(app, argc, argv);
  eo.checkpoint = model;
  run.keep_logits = !dump_logits.empty();

  std::vector<std::vector<int32_t>> prompts;
  try {
    eo.kernels = kernels::parse_kernel_impl(kernels);
    prompts = engine::read_prompt_file(prompts_file);
    if (single) {
      MOERUN_CHECK(!cluster.given(), "--single-process cannot be combined with --layout/--cluster");
      engine::Engine eng(eo);
      engine::PromptRunStats st;
      const auto results = engine::run_prompts(eng, prompts, run, &st);
      report(eng, results, st, out_json, dump_logits);
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moerun-worker: %s\n", e.what());
    return 1;
  }
  return engine::run_cluster_program(
      "moerun-worker",
      [&] {
        engine::ClusterOptions co;
        co.engine = eo;
        engine::apply_cluster_flags(cluster, co);
        return co;
      },
      [&](engine::DistributedEngine& eng) {
        engine::PromptRunStats st;
        const auto results = engine::run_prompts(eng, prompts, run, &st);
        report(eng, results, st, out_json, dump_logits);
      });
}
