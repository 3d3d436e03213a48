// Leveled logging for every moerun process: a thin layer over spdlog that puts a timestamp
// and the process's rank and host on each line. Call moerun::log::init once at start-up
// (the worker again after it learns its rank); then use spdlog::info/warn/... directly.
#pragma once

#include <string_view>

#include <spdlog/spdlog.h>

namespace moerun::log {

enum class Level { kTrace, kDebug, kInfo, kWarn, kError, kOff };

// "trace", "debug", "info", "warn", "error", "off"; throws moerun::Error naming the
// accepted values for anything else.
Level parse_level(std::string_view name);

// Logs to stderr with the pattern "[2026-11-29 19:54:57.123] [rank 3@host] [info] text".
// The environment variable MOERUN_LOG_LEVEL, when set, overrides `level`.
void init(Level level = Level::kInfo);

}  // namespace moerun::log
