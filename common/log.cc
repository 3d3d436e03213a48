#include "common/log.h"

#include <cstdlib>

#include <spdlog/sinks/stdout_sinks.h>

#include "common/error.h"

namespace moerun::log {

Level parse_level(std::string_view name) {
  if (name == "trace") return Level::kTrace;
  if (name == "debug") return Level::kDebug;
  if (name == "info") return Level::kInfo;
  if (name == "warn") return Level::kWarn;
  if (name == "error") return Level::kError;
  if (name == "off") return Level::kOff;
  MOERUN_THROW("unknown log level '{}' (allowed: trace, debug, info, warn, error, off)", name);
}

void init(Level level) {
  if (const char* env = std::getenv("MOERUN_LOG_LEVEL"); env && *env) level = parse_level(env);
  static const spdlog::level::level_enum kMap[] = {spdlog::level::trace, spdlog::level::debug,
                                                   spdlog::level::info,  spdlog::level::warn,
                                                   spdlog::level::err,   spdlog::level::off};
  // Not registered by name, so init may run again (the worker re-inits once it knows its rank).
  auto logger =
      std::make_shared<spdlog::logger>("moerun", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  const int rank = process_rank();
  const std::string who =
      rank >= 0 ? fmt::format("rank {}@{}", rank, process_host()) : process_host();
  logger->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [" + who + "] [%l] %v");
  logger->set_level(kMap[static_cast<int>(level)]);
  spdlog::set_default_logger(logger);
}

}  // namespace moerun::log
