// moerun-inspect DIR [--layout pp=P,ep=E] [--json]
//
// Validates a checkpoint directory against the DeepSeek-V4 schema of its config.json and
// prints a summary; with --layout, what each rank of a pp × ep job would load. Exit status:
// 0 when the checkpoint matches the schema, 1 when it does not or cannot be read, 2 for usage.
#include <cstdio>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tools/inspect/inspect.h"
#include "worker/layout.h"

int main(int argc, char** argv) {
  CLI::App app{"Validate and summarise a DeepSeek-V4 checkpoint directory"};
  std::string dir, layout_spec;
  bool as_json = false;
  app.add_option("dir", dir, "Checkpoint directory (config.json + safetensors shards)")->required();
  app.add_option("--layout", layout_spec, "Per-rank plan for a layout, e.g. pp=2,ep=8");
  app.add_flag("--json", as_json, "Print the report as JSON");
  CLI11_PARSE(app, argc, argv);
  try {
    std::optional<std::pair<int64_t, int64_t>> layout;
    if (!layout_spec.empty()) layout = moerun::parse_layout_spec(layout_spec);
    const auto report = moerun::inspect::inspect_checkpoint(dir, layout);
    if (as_json) {
      std::printf("%s\n", report.to_json().dump(2).c_str());
    } else {
      std::printf("%s", report.to_text().c_str());
    }
    return report.schema.ok() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moerun-inspect: %s\n", e.what());
    return 1;
  }
}
