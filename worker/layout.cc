#include "worker/layout.h"

#include <algorithm>
#include <charconv>
#include <limits>

#include "common/error.h"

namespace moerun {

RankSelection ParallelLayout::selection(int64_t rank, const ModelConfig& config) const {
  MOERUN_CHECK(rank >= 0 && rank < world_size(), "rank {} outside a layout of {} ranks", rank,
               world_size());
  const int64_t stage = stage_of(rank);
  const int64_t column = column_of(rank);
  RankSelection sel;
  sel.layer_begin = stage_layers[stage].first;
  sel.layer_end = stage_layers[stage].second;
  sel.expert_begin = column * experts_per_rank();
  sel.expert_end = sel.expert_begin + experts_per_rank();
  const bool last = stage == pp - 1;
  const bool runs_mtp = last && config.num_nextn_predict_layers > 0;
  sel.embedding = stage == 0 || runs_mtp;
  sel.head = last;
  return sel;
}

std::pair<int64_t, int64_t> parse_layout_spec(std::string_view spec) {
  int64_t pp = -1, ep = -1;
  size_t pos = 0;
  while (pos <= spec.size()) {
    const size_t comma = std::min(spec.find(',', pos), spec.size());
    const std::string_view part = spec.substr(pos, comma - pos);
    const size_t eq = part.find('=');
    MOERUN_CHECK(eq != std::string_view::npos,
                 "layout '{}': part '{}' is not key=value (expected e.g. pp=2,ep=8)", spec, part);
    const std::string_view key = part.substr(0, eq), value = part.substr(eq + 1);
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    MOERUN_CHECK(ec == std::errc() && end == value.data() + value.size() && v >= 1,
                 "layout '{}': {} must be a positive integer, got '{}'", spec, key, value);
    if (key == "pp") {
      pp = v;
    } else if (key == "ep") {
      ep = v;
    } else {
      MOERUN_THROW("layout '{}': unknown key '{}' (allowed: pp, ep)", spec, key);
    }
    pos = comma + 1;
  }
  MOERUN_CHECK(pp >= 1 && ep >= 1, "layout '{}' must give both pp and ep (e.g. pp=2,ep=8)", spec);
  return {pp, ep};
}

std::vector<double> layer_costs(const CheckpointSchema& schema) {
  const ModelConfig& c = schema.config();
  std::vector<double> cost(static_cast<size_t>(c.num_layers_total()), 0.0);
  const double active_fraction =
      static_cast<double>(c.num_experts_per_tok) / static_cast<double>(c.n_routed_experts);
  for (const TensorSpec& t : schema.tensors()) {
    if (t.layer < 0) continue;
    const double w = static_cast<double>(t.num_weights());
    cost[static_cast<size_t>(t.layer)] +=
        t.role == TensorRole::kRoutedExpert ? w * active_fraction : w;
  }
  return cost;
}

namespace {

// Contiguous partition of costs[0..n) into k non-empty parts minimising the largest part
// (plus `tail` on the last part). Exact dynamic programme; n and k are small.
std::vector<int64_t> balanced_counts(const std::vector<double>& costs, int64_t k, double tail) {
  const size_t n = costs.size();
  std::vector<double> prefix(n + 1, 0.0);
  for (size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + costs[i];
  const double inf = std::numeric_limits<double>::infinity();
  // best[j][i]: minimal max-cost splitting the first i layers into j parts; from[j][i]: split.
  std::vector<std::vector<double>> best(k + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<size_t>> from(k + 1, std::vector<size_t>(n + 1, 0));
  best[0][0] = 0.0;
  for (int64_t j = 1; j <= k; ++j) {
    for (size_t i = static_cast<size_t>(j); i <= n; ++i) {
      for (size_t s = static_cast<size_t>(j - 1); s < i; ++s) {
        double part = prefix[i] - prefix[s];
        if (j == k && i == n) part += tail;
        const double v = std::max(best[j - 1][s], part);
        if (v < best[j][i]) {
          best[j][i] = v;
          from[j][i] = s;
        }
      }
    }
  }
  std::vector<int64_t> counts(static_cast<size_t>(k));
  size_t i = n;
  for (int64_t j = k; j >= 1; --j) {
    const size_t s = from[j][i];
    counts[static_cast<size_t>(j - 1)] = static_cast<int64_t>(i - s);
    i = s;
  }
  return counts;
}

}  // namespace

ParallelLayout plan_layout(const ModelConfig& config, int64_t pp, int64_t ep,
                           const std::vector<int64_t>& stage_layer_counts) {
  MOERUN_CHECK(pp >= 1, "pipeline stages pp={} must be at least 1", pp);
  MOERUN_CHECK(ep >= 1, "expert-parallel size ep={} must be at least 1", ep);
  MOERUN_CHECK(pp <= config.num_hidden_layers,
               "pp={} pipeline stages but the model has only {} layers (each stage needs one)", pp,
               config.num_hidden_layers);
  MOERUN_CHECK(config.n_routed_experts % ep == 0,
               "ep={} does not divide the {} routed experts (allowed: a divisor of {})", ep,
               config.n_routed_experts, config.n_routed_experts);

  std::vector<int64_t> counts = stage_layer_counts;
  const CheckpointSchema schema(config);
  if (counts.empty()) {
    const std::vector<double> all = layer_costs(schema);
    std::vector<double> main(all.begin(), all.begin() + config.num_hidden_layers);
    double tail = 0.0;  // MTP blocks and the head run on the last stage
    for (size_t l = static_cast<size_t>(config.num_hidden_layers); l < all.size(); ++l)
      tail += all[l];
    for (const TensorSpec& t : schema.tensors())
      if (t.role == TensorRole::kHead) tail += static_cast<double>(t.num_weights());
    counts = balanced_counts(main, pp, tail);
  } else {
    MOERUN_CHECK(static_cast<int64_t>(counts.size()) == pp,
                 "{} stage layer counts given for pp={} stages", counts.size(), pp);
    int64_t sum = 0;
    for (size_t s = 0; s < counts.size(); ++s) {
      MOERUN_CHECK(counts[s] >= 1, "stage {} is given {} layers; each stage needs at least 1", s,
                   counts[s]);
      sum += counts[s];
    }
    MOERUN_CHECK(sum == config.num_hidden_layers,
                 "stage layer counts sum to {} but the model has {} layers", sum,
                 config.num_hidden_layers);
  }

  ParallelLayout layout;
  layout.pp = pp;
  layout.ep = ep;
  layout.n_routed_experts = config.n_routed_experts;
  int64_t begin = 0;
  for (int64_t s = 0; s < pp; ++s) {
    int64_t end = begin + counts[static_cast<size_t>(s)];
    if (s == pp - 1) end = config.num_layers_total();  // MTP blocks join the last stage
    layout.stage_layers.emplace_back(begin, end);
    begin = end;
  }
  return layout;
}

}  // namespace moerun
