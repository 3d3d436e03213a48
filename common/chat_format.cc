// DeepSeek-V4 chat encoding and completion parser (see chat_format.h).
//
// The encoder follows the reference's pipeline step by step, because its quirks come from
// the order of the steps: merge role "tool" (and consecutive "user") messages into user
// turns of content blocks → sort tool results by the preceding call order → drop old
// reasoning and developer messages (thinking mode) → render each new message, with the
// transition to the next turn decided by looking at the message after it.
//
// Python's json module is reproduced in a small parser (json.loads: ordered objects, exact
// number text, NaN/Infinity) and a dumper (json.dumps(ensure_ascii=False): repr floats).
#include "common/chat_format.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <unordered_map>
#include <utility>

#include "common/error.h"
#include "common/utf8.h"

namespace moerun::chat {

namespace {

using Json = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------
// The reference's fixed strings.

constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kThinkStart = "<think>";
constexpr std::string_view kThinkEnd = "</think>";
constexpr std::string_view kDsml = "｜DSML｜";
constexpr std::string_view kUser = "<｜User｜>";
constexpr std::string_view kAssistant = "<｜Assistant｜>";
constexpr std::string_view kLatestReminder = "<｜latest_reminder｜>";

struct Task {
  std::string_view name;
  std::string_view token;
};
constexpr std::array<Task, 6> kTasks = {{{"action", "<｜action｜>"},
                                         {"query", "<｜query｜>"},
                                         {"authority", "<｜authority｜>"},
                                         {"domain", "<｜domain｜>"},
                                         {"title", "<｜title｜>"},
                                         {"read_url", "<｜read_url｜>"}}};

constexpr std::string_view kReasoningEffortMax =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate "
    "step, considered alternative, and rejected hypothesis to ensure absolutely no assumption "
    "is left unchecked.\n\n";

// The TOOLS block: kToolsHead, one json.dumps(function) per line, kToolsTail.
constexpr std::string_view kToolsHead =
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke "
    "tools by writing a \"<｜DSML｜tool_calls>\" block like the following:\n\n"
    "<｜DSML｜tool_calls>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME\">\n"
    "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE"
    "</｜DSML｜parameter>\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other "
    "types (numbers, booleans, arrays, objects), pass the value in JSON format and set "
    "`string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete "
    "reasoning inside <think>...</think> BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n";
constexpr std::string_view kToolsTail =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke "
    "tool calls.\n";

constexpr std::string_view kResponseFormatHead =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

// DSML markup of an assistant's tool calls.
constexpr std::string_view kToolCallsOpen = "\n\n<｜DSML｜tool_calls>\n";
constexpr std::string_view kToolCallsClose = "\n</｜DSML｜tool_calls>";
constexpr std::string_view kInvokeOpen = "<｜DSML｜invoke name=\"";  // + name + "\">\n"
constexpr std::string_view kInvokeClose = "\n</｜DSML｜invoke>";
constexpr std::string_view kParamOpen = "<｜DSML｜parameter name=\"";  // + key + kParamString..
constexpr std::string_view kParamClose = "</｜DSML｜parameter>";

// Parser stop strings.
constexpr std::string_view kToolCallsStart = "\n\n<｜DSML｜tool_calls";
constexpr std::string_view kToolCallsEnd = "</｜DSML｜tool_calls>";
constexpr std::string_view kInvokeStart = "<｜DSML｜invoke";
constexpr std::string_view kInvokeEnd = "</｜DSML｜invoke";
constexpr std::string_view kParamStart = "<｜DSML｜parameter";
constexpr std::string_view kParamEnd = "/｜DSML｜parameter";

constexpr std::string_view kAllowedRoles =
    "system, user, developer, assistant, tool, latest_reminder";

// Python's json C scanner and encoder fail with RecursionError near the interpreter's
// recursion limit (1000, minus the frames of the caller). Nesting deeper than this counts as
// "not JSON" for json.loads; the exact threshold of the reference depends on its call stack.
constexpr int kMaxJsonDepth = 990;
// Python 3.11's int() refuses decimal strings longer than this (sys.int_info).
constexpr size_t kMaxIntDigits = 4300;

// ---------------------------------------------------------------------------------------
// UTF-8.

// Decodes one code point at s[pos] (valid UTF-8 assumed); advances pos.
char32_t decode_utf8(std::string_view s, size_t& pos) {
  const auto b0 = static_cast<unsigned char>(s[pos]);
  int len = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
  char32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (int i = 1; i < len; ++i) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + i]) & 0x3F);
  pos += len;
  return cp;
}

// Byte offset of the first invalid UTF-8 sequence, or npos.
size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    char32_t min;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4, min = 0x10000;
    } else {
      return i;
    }
    if (i + len > s.size()) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return i;
    }
    size_t pos = i;
    const char32_t cp = decode_utf8(s, pos);
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

// A lone surrogate (0xED 0xA0..0xBF ..) can only come from a JSON "\udXXX" escape.
void check_no_surrogate(std::string_view s, std::string_view where) {
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    if (static_cast<unsigned char>(s[i]) == 0xED &&
        (static_cast<unsigned char>(s[i + 1]) & 0xE0) == 0xA0) {
      MOERUN_THROW(
          "{}: the string holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
          "without its pair), which has no UTF-8 form",
          where);
    }
  }
}

// Python's str.isspace() / re's \s for str patterns.
bool is_python_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// ---------------------------------------------------------------------------------------
// Python json.dumps(ensure_ascii=False).

void dump_py_string(std::string_view s, std::string& out) {
  check_no_surrogate(s, "JSON string");
  out += '"';
  for (const char ch : s) {
    switch (ch) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(ch) < 0x20) {
          out += fmt::format("\\u{:04x}", static_cast<unsigned>(ch));
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

// float.__repr__: the shortest digits that round-trip, positional when the decimal exponent
// is in [-4, 16), else d.ddde±XX; integral values keep ".0".
void dump_py_float(double v, std::string& out) {
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    out += v < 0 ? "-Infinity" : "Infinity";
    return;
  }
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  MOERUN_CHECK(res.ec == std::errc(), "to_chars failed for a double");
  const std::string_view sci(buf, res.ptr - buf);  // "-1.2345e+02"
  const size_t e_pos = sci.find('e');
  std::string_view mant = sci.substr(0, e_pos);
  int exp = 0;
  std::from_chars(sci.data() + e_pos + 1 + (sci[e_pos + 1] == '+' ? 1 : 0), sci.data() + sci.size(),
                  exp);
  if (!mant.empty() && mant[0] == '-') {
    out += '-';
    mant.remove_prefix(1);
  }
  std::string digits;
  for (const char c : mant) {
    if (c != '.') digits += c;
  }
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      const size_t int_len = static_cast<size_t>(exp) + 1;
      if (digits.size() <= int_len) {
        out += digits;
        out.append(int_len - digits.size(), '0');
        out += ".0";
      } else {
        out.append(digits, 0, int_len);
        out += '.';
        out.append(digits, int_len);
      }
    } else {
      out += "0.";
      out.append(static_cast<size_t>(-exp - 1), '0');
      out += digits;
    }
  } else {
    out += digits[0];
    if (digits.size() > 1) {
      out += '.';
      out.append(digits, 1);
    }
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
  }
}

void dump_py_json(const Json& v, std::string& out, int depth) {
  MOERUN_CHECK(depth <= kMaxJsonDepth,
               "JSON value nested deeper than {} levels (Python's json.dumps fails there too)",
               kMaxJsonDepth);
  switch (v.type()) {
    case Json::value_t::null:
      out += "null";
      break;
    case Json::value_t::boolean:
      out += v.get<bool>() ? "true" : "false";
      break;
    case Json::value_t::number_integer:
      out += std::to_string(v.get<int64_t>());
      break;
    case Json::value_t::number_unsigned:
      out += std::to_string(v.get<uint64_t>());
      break;
    case Json::value_t::number_float:
      dump_py_float(v.get<double>(), out);
      break;
    case Json::value_t::string:
      dump_py_string(v.get_ref<const std::string&>(), out);
      break;
    case Json::value_t::array: {
      out += '[';
      bool first = true;
      for (const Json& item : v) {
        if (!first) out += ", ";
        first = false;
        dump_py_json(item, out, depth + 1);
      }
      out += ']';
      break;
    }
    case Json::value_t::object: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : v.items()) {
        if (!first) out += ", ";
        first = false;
        dump_py_string(key, out);
        out += ": ";
        dump_py_json(item, out, depth + 1);
      }
      out += '}';
      break;
    }
    default:
      MOERUN_THROW("JSON value of type {} cannot be written as JSON text", v.type_name());
  }
}

// ---------------------------------------------------------------------------------------
// Python json.loads: a value tree that keeps what json.dumps needs exactly.

struct PyValue {
  enum class Kind { kNull, kBool, kInt, kFloat, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  std::string text;  // kInt: decimal digits as Python prints them; kString: UTF-8
  double number = 0;
  std::vector<PyValue> items;     // kArray: the elements; kObject: the values of `keys`
  std::vector<std::string> keys;  // kObject, in first-seen order
};

void dump_py_value(const PyValue& v, std::string& out) {
  switch (v.kind) {
    case PyValue::Kind::kNull:
      out += "null";
      break;
    case PyValue::Kind::kBool:
      out += v.boolean ? "true" : "false";
      break;
    case PyValue::Kind::kInt:
      out += v.text;
      break;
    case PyValue::Kind::kFloat:
      dump_py_float(v.number, out);
      break;
    case PyValue::Kind::kString:
      dump_py_string(v.text, out);
      break;
    case PyValue::Kind::kArray: {
      out += '[';
      for (size_t i = 0; i < v.items.size(); ++i) {
        if (i > 0) out += ", ";
        dump_py_value(v.items[i], out);
      }
      out += ']';
      break;
    }
    case PyValue::Kind::kObject: {
      out += '{';
      for (size_t i = 0; i < v.keys.size(); ++i) {
        if (i > 0) out += ", ";
        dump_py_string(v.keys[i], out);
        out += ": ";
        dump_py_value(v.items[i], out);
      }
      out += '}';
      break;
    }
  }
}

// The grammar and strictness of CPython's json scanner (strict=True): RFC 8259 plus NaN,
// Infinity and -Infinity; whitespace is [ \t\n\r]; control characters in strings are errors;
// lone surrogate escapes are kept.
class PyJsonParser {
 public:
  explicit PyJsonParser(std::string_view text) : s_(text) {}

  std::optional<PyValue> parse_document() {
    skip_ws();
    PyValue v;
    if (!parse_value(v, 0)) return std::nullopt;
    skip_ws();
    if (pos_ != s_.size()) return std::nullopt;
    return v;
  }

 private:
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool eat(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  bool is_digit(size_t i) const { return i < s_.size() && s_[i] >= '0' && s_[i] <= '9'; }

  bool parse_value(PyValue& v, int depth) {
    if (pos_ >= s_.size()) return false;
    switch (s_[pos_]) {
      case '"':
        v.kind = PyValue::Kind::kString;
        return parse_string(v.text);
      case '{':
        return depth < kMaxJsonDepth && parse_object(v, depth + 1);
      case '[':
        return depth < kMaxJsonDepth && parse_array(v, depth + 1);
      case 'n':
        v.kind = PyValue::Kind::kNull;
        return eat("null");
      case 't':
        v.kind = PyValue::Kind::kBool, v.boolean = true;
        return eat("true");
      case 'f':
        v.kind = PyValue::Kind::kBool, v.boolean = false;
        return eat("false");
      case 'N':
        v.kind = PyValue::Kind::kFloat, v.number = std::numeric_limits<double>::quiet_NaN();
        return eat("NaN");
      case 'I':
        v.kind = PyValue::Kind::kFloat, v.number = std::numeric_limits<double>::infinity();
        return eat("Infinity");
      case '-':
        if (eat("-Infinity")) {
          v.kind = PyValue::Kind::kFloat, v.number = -std::numeric_limits<double>::infinity();
          return true;
        }
        return parse_number(v);
      default:
        return parse_number(v);
    }
  }

  bool parse_number(PyValue& v) {
    const size_t start = pos_;
    size_t i = pos_;
    if (i < s_.size() && s_[i] == '-') ++i;
    const size_t int_start = i;
    if (i < s_.size() && s_[i] == '0') {
      ++i;
    } else if (is_digit(i)) {
      while (is_digit(i)) ++i;
    } else {
      return false;
    }
    const size_t int_digits = i - int_start;
    bool is_float = false;
    if (i < s_.size() && s_[i] == '.' && is_digit(i + 1)) {
      ++i;
      while (is_digit(i)) ++i;
      is_float = true;
    }
    if (i < s_.size() && (s_[i] == 'e' || s_[i] == 'E')) {
      size_t j = i + 1;
      if (j < s_.size() && (s_[j] == '+' || s_[j] == '-')) ++j;
      if (is_digit(j)) {
        while (is_digit(j)) ++j;
        i = j;
        is_float = true;
      }
    }
    pos_ = i;
    const std::string_view raw = s_.substr(start, i - start);
    if (!is_float) {
      if (int_digits > kMaxIntDigits) return false;  // ValueError in int()
      v.kind = PyValue::Kind::kInt;
      v.text = raw == "-0" ? "0" : std::string(raw);
      return true;
    }
    v.kind = PyValue::Kind::kFloat;
    v.number = parse_py_float(raw);
    return true;
  }

  // float(raw), correctly rounded; out of range gives ±inf or ±0.0 as in Python.
  static double parse_py_float(std::string_view raw) {
    double d = 0;
    const auto res = std::from_chars(raw.data(), raw.data() + raw.size(), d);
    if (res.ec == std::errc()) return d;
    // Out of range (from_chars leaves d alone): overflow iff the number has digits before
    // the decimal point, counting the exponent. Out-of-range values are far from 1 either way.
    const bool negative = raw[0] == '-';
    const size_t e_pos = std::min(raw.find_first_of("eE"), raw.size());
    const std::string_view mantissa = raw.substr(negative ? 1 : 0, e_pos - (negative ? 1 : 0));
    const size_t dot = std::min(mantissa.find('.'), mantissa.size());
    const size_t first = std::min(mantissa.find_first_of("123456789"), mantissa.size());
    const long int_digits = first < dot ? static_cast<long>(dot - first)
                                        : -static_cast<long>(first - std::min(first, dot + 1));
    long exp = 0;
    if (e_pos < raw.size()) {
      std::string_view e = raw.substr(e_pos + 1);
      const bool e_negative = !e.empty() && e[0] == '-';
      if (!e.empty() && (e[0] == '+' || e[0] == '-')) e.remove_prefix(1);
      // Exponents too large for a long are out of range whatever the mantissa.
      if (std::from_chars(e.data(), e.data() + e.size(), exp).ec != std::errc()) exp = 1000000;
      if (e_negative) exp = -exp;
    }
    const double result = int_digits + exp > 0 ? std::numeric_limits<double>::infinity() : 0.0;
    return negative ? -result : result;
  }

  bool parse_hex4(size_t at, char32_t& out) const {
    if (at + 4 > s_.size()) return false;
    char32_t v = 0;
    for (size_t k = 0; k < 4; ++k) {
      const char c = s_[at + k];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<char32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<char32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<char32_t>(c - 'A' + 10);
      } else {
        return false;
      }
    }
    out = v;
    return true;
  }

  bool parse_string(std::string& out) {
    ++pos_;  // opening quote
    while (true) {
      if (pos_ >= s_.size()) return false;
      const char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return true;
      }
      if (static_cast<unsigned char>(c) < 0x20) return false;  // strict: no control chars
      if (c != '\\') {
        out += c;
        ++pos_;
        continue;
      }
      if (pos_ + 1 >= s_.size()) return false;
      const char e = s_[pos_ + 1];
      pos_ += 2;
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          char32_t cp;
          if (!parse_hex4(pos_, cp)) return false;
          pos_ += 4;
          if (cp >= 0xD800 && cp <= 0xDBFF && s_.substr(pos_, 2) == "\\u") {
            char32_t low;
            if (!parse_hex4(pos_ + 2, low)) return false;
            if (low >= 0xDC00 && low <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
              pos_ += 6;
            }
          }
          utf8::append(out, cp);
          break;
        }
        default:
          return false;
      }
    }
  }

  bool parse_object(PyValue& v, int depth) {
    v.kind = PyValue::Kind::kObject;
    std::unordered_map<std::string, size_t> index;  // key → position in v.keys
    ++pos_;
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return true;
    }
    while (true) {
      if (pos_ >= s_.size() || s_[pos_] != '"') return false;
      std::string key;
      if (!parse_string(key)) return false;
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != ':') return false;
      ++pos_;
      skip_ws();
      PyValue item;
      if (!parse_value(item, depth)) return false;
      // A dict: a repeated key keeps its first position and takes the last value.
      const auto [it, inserted] = index.emplace(key, v.keys.size());
      if (inserted) {
        v.keys.push_back(std::move(key));
        v.items.push_back(std::move(item));
      } else {
        v.items[it->second] = std::move(item);
      }
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return true;
      }
      if (pos_ >= s_.size() || s_[pos_] != ',') return false;
      ++pos_;
      skip_ws();
    }
  }

  bool parse_array(PyValue& v, int depth) {
    v.kind = PyValue::Kind::kArray;
    ++pos_;
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return true;
    }
    while (true) {
      PyValue item;
      if (!parse_value(item, depth)) return false;
      v.items.push_back(std::move(item));
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return true;
      }
      if (pos_ >= s_.size() || s_[pos_] != ',') return false;
      ++pos_;
      skip_ws();
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
};

std::optional<PyValue> py_json_loads(std::string_view text) {
  const size_t bad = find_invalid_utf8(text);
  MOERUN_CHECK(bad == std::string_view::npos, "JSON text: invalid UTF-8 at byte {}", bad);
  return PyJsonParser(text).parse_document();
}

// ---------------------------------------------------------------------------------------
// Message access and validation.

// Python truthiness of a JSON value (`if tools:`, `if response_format:`, `if wo_eos:`).
bool truthy(const Json* v) {
  if (v == nullptr) return false;
  switch (v->type()) {
    case Json::value_t::null:
      return false;
    case Json::value_t::boolean:
      return v->get<bool>();
    case Json::value_t::number_integer:
      return v->get<int64_t>() != 0;
    case Json::value_t::number_unsigned:
      return v->get<uint64_t>() != 0;
    case Json::value_t::number_float:
      return v->get<double>() != 0.0;
    case Json::value_t::string:  // nlohmann's empty() is false for every string
      return !v->get_ref<const std::string&>().empty();
    case Json::value_t::array:
    case Json::value_t::object:
      return !v->empty();
    default:
      return true;
  }
}

// The field, or nullptr when absent (msg.get(key) is None also for null: see get_value).
const Json* find_field(const Json& obj, const char* key) {
  const auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}
// Python `obj.get(key)`: nullptr when absent or null.
const Json* get_value(const Json& obj, const char* key) {
  const Json* v = find_field(obj, key);
  return v == nullptr || v->is_null() ? nullptr : v;
}

// At most `max_bytes` of s, cut at a character boundary (error messages stay valid UTF-8).
std::string_view utf8_prefix(std::string_view s, size_t max_bytes) {
  if (s.size() <= max_bytes) return s;
  size_t n = max_bytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

// A JSON value for an error message, shortened.
std::string brief(const Json& v) {
  constexpr size_t kMax = 60;
  const std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  return s.size() <= kMax ? s : std::string(utf8_prefix(s, kMax - 3)) + "...";
}

std::string_view task_token(std::string_view name) {
  for (const Task& t : kTasks) {
    if (t.name == name) return t.token;
  }
  return {};
}

void check_string_or_null(const Json& msg, const char* key, const std::string& where,
                          std::string_view role) {
  const Json* v = find_field(msg, key);
  MOERUN_CHECK(v == nullptr || v->is_null() || v->is_string(),
               "{}.{}: expected a string or null for role '{}', got {} {}", where, key, role,
               v == nullptr ? "" : v->type_name(), v == nullptr ? "" : brief(*v));
}

void check_call_id(const Json* id, const std::string& where) {
  MOERUN_CHECK(id == nullptr || id->is_null() || id->is_string() || id->is_number(),
               "{}: expected a string id, got {} {}", where, id ? id->type_name() : "",
               id ? brief(*id) : "");
}

void validate_tool_calls(const Json& calls, const std::string& where) {
  MOERUN_CHECK(calls.is_array(), "{}: expected an array of tool calls, got {} {}", where,
               calls.type_name(), brief(calls));
  for (size_t i = 0; i < calls.size(); ++i) {
    const Json& call = calls[i];
    const std::string at = fmt::format("{}[{}]", where, i);
    MOERUN_CHECK(call.is_object(), "{}: expected a tool call object, got {} {}", at,
                 call.type_name(), brief(call));
    check_call_id(find_field(call, "id"), at + ".id");
    const Json* fn = find_field(call, "function");
    MOERUN_CHECK(fn != nullptr && fn->is_object(),
                 "{}.function: expected an object {{\"name\": ..., \"arguments\": ...}}, got {}",
                 at, fn == nullptr ? "nothing" : brief(*fn));
    const Json* name = find_field(*fn, "name");
    MOERUN_CHECK(name != nullptr, "{}.function.name: missing (every tool call needs a name)", at);
    MOERUN_CHECK(name->is_string(), "{}.function.name: expected a string, got {} {}", at,
                 name->type_name(), brief(*name));
    MOERUN_CHECK(fn->contains("arguments"),
                 "{}.function.arguments: missing (a JSON object text such as \"{{}}\")", at);
    check_call_id(find_field(*fn, "id"), at + ".function.id");
  }
}

void validate_message(const Json& msg, const std::string& where) {
  MOERUN_CHECK(msg.is_object(), "{}: expected a message object, got {} {}", where, msg.type_name(),
               brief(msg));
  const Json* role_v = find_field(msg, "role");
  MOERUN_CHECK(role_v != nullptr, "{}.role: missing (allowed: {})", where, kAllowedRoles);
  MOERUN_CHECK(role_v->is_string(), "{}.role: expected a string, got {} (allowed: {})", where,
               brief(*role_v), kAllowedRoles);
  const std::string& role = role_v->get_ref<const std::string&>();
  const Json* content = find_field(msg, "content");
  if (role == "system" || role == "assistant") {
    check_string_or_null(msg, "content", where, role);
  } else if (role == "developer" || role == "latest_reminder") {
    MOERUN_CHECK(content != nullptr && content->is_string(),
                 "{}.content: expected a string for role '{}', got {}", where, role,
                 content == nullptr ? "nothing" : brief(*content));
  } else if (role == "user") {
    MOERUN_CHECK(content == nullptr || content->is_string(),
                 "{}.content: expected a string for role 'user', got {} {}", where,
                 content == nullptr ? "" : content->type_name(),
                 content == nullptr ? "" : brief(*content));
  } else if (role == "tool") {
    MOERUN_CHECK(content == nullptr || content->is_string() || content->is_array(),
                 "{}.content: expected a string or an array of content blocks for role 'tool', "
                 "got {} {}",
                 where, content == nullptr ? "" : content->type_name(),
                 content == nullptr ? "" : brief(*content));
    if (content != nullptr && content->is_array()) {
      for (size_t i = 0; i < content->size(); ++i) {
        const Json& block = (*content)[i];
        const std::string at = fmt::format("{}.content[{}]", where, i);
        MOERUN_CHECK(block.is_object(), "{}: expected a content block object, got {}", at,
                     brief(block));
        const Json* type = get_value(block, "type");
        MOERUN_CHECK(type == nullptr || type->is_string(), "{}.type: expected a string, got {}", at,
                     type == nullptr ? "" : brief(*type));
        if (type != nullptr && *type == "text") {
          const Json* text = find_field(block, "text");
          MOERUN_CHECK(text == nullptr || text->is_string(), "{}.text: expected a string, got {}",
                       at, text == nullptr ? "" : brief(*text));
        }
      }
    }
    check_call_id(find_field(msg, "tool_call_id"), where + ".tool_call_id");
  } else {
    MOERUN_THROW("{}.role: unknown role '{}' (allowed: {})", where, role, kAllowedRoles);
  }
  if (role == "assistant") {
    check_string_or_null(msg, "reasoning_content", where, role);
    if (const Json* calls = get_value(msg, "tool_calls")) {
      validate_tool_calls(*calls, where + ".tool_calls");
    }
  }
  // Tools on user and tool messages are dropped when they are merged; elsewhere the reference
  // reads tools[i]["function"].
  if (role != "user" && role != "tool") {
    if (const Json* tools = get_value(msg, "tools")) {
      MOERUN_CHECK(tools->is_array(), "{}.tools: expected an array of tools, got {} {}", where,
                   tools->type_name(), brief(*tools));
      for (size_t i = 0; i < tools->size(); ++i) {
        const Json& tool = (*tools)[i];
        MOERUN_CHECK(tool.is_object() && tool.contains("function"),
                     "{}.tools[{}]: expected {{\"type\": \"function\", \"function\": {{...}}}}, "
                     "got {}",
                     where, i, brief(tool));
      }
    }
  }
  if (role != "tool") {
    if (const Json* task = get_value(msg, "task")) {
      MOERUN_CHECK(task->is_string() && !task_token(task->get_ref<const std::string&>()).empty(),
                   "{}.task: invalid task {} (allowed: action, query, authority, domain, title, "
                   "read_url)",
                   where, brief(*task));
    }
  }
}

// ---------------------------------------------------------------------------------------
// Preprocessing: merge tool and user messages, sort tool results, drop old thinking.

struct Block {
  bool tool_result = false;
  std::string text;                   // text block
  const Json* content = nullptr;      // tool result: string or array of blocks; null = ""
  const Json* tool_use_id = nullptr;  // tool result: tool_call_id (may be null)
};

// A message after merging. User messages are rebuilt from blocks; the others render from
// their source object.
struct Msg {
  std::string role;
  const Json* src = nullptr;   // the (first) source message
  std::vector<Block> blocks;   // role user only
  const Json* task = nullptr;  // the task name, when there is one
  std::string where;           // "messages[3]" / "context[0]", for errors
};

std::vector<Msg> merge_tool_messages(const Json& list, std::string_view name) {
  std::vector<Msg> merged;
  for (size_t i = 0; i < list.size(); ++i) {
    const Json& m = list[i];
    const std::string where = fmt::format("{}[{}]", name, i);
    validate_message(m, where);
    const std::string& role = m["role"].get_ref<const std::string&>();
    if (role == "tool") {
      Block block;
      block.tool_result = true;
      block.content = find_field(m, "content");
      block.tool_use_id = find_field(m, "tool_call_id");
      if (!merged.empty() && merged.back().role == "user") {
        merged.back().blocks.push_back(block);
      } else {
        merged.push_back(Msg{"user", &m, {block}, nullptr, where});
      }
    } else if (role == "user") {
      Block block;
      if (const Json* c = find_field(m, "content")) block.text = c->get<std::string>();
      if (!merged.empty() && merged.back().role == "user" && merged.back().task == nullptr) {
        merged.back().blocks.push_back(std::move(block));
      } else {
        merged.push_back(Msg{"user", &m, {std::move(block)}, get_value(m, "task"), where});
      }
    } else {
      merged.push_back(Msg{role, &m, {}, get_value(m, "task"), where});
    }
  }
  return merged;
}

// Python's tc.get("id") or tc["function"].get("id", ""): the id when truthy.
const Json* call_id(const Json& call) {
  if (const Json* id = find_field(call, "id"); truthy(id)) return id;
  if (const Json* id = find_field(call["function"], "id"); truthy(id)) return id;
  return nullptr;
}

void sort_tool_results_by_call_order(std::vector<Msg>& messages) {
  // id → position in the latest assistant message with tool calls; a repeated id keeps its
  // last position, as a dict would (nlohmann's ordering treats 1 and 1.0 as one key, too).
  std::map<Json, size_t> order;
  for (Msg& msg : messages) {
    if (msg.role == "assistant") {
      const Json* calls = get_value(*msg.src, "tool_calls");
      if (!truthy(calls)) continue;
      order.clear();
      for (size_t idx = 0; idx < calls->size(); ++idx) {
        if (const Json* id = call_id((*calls)[idx])) order[*id] = idx;
      }
    } else if (msg.role == "user") {
      std::vector<Block> tool_blocks;
      for (const Block& b : msg.blocks) {
        if (b.tool_result) tool_blocks.push_back(b);
      }
      if (tool_blocks.size() <= 1 || order.empty()) continue;
      auto position = [&](const Block& b) -> size_t {
        if (b.tool_use_id == nullptr) return 0;  // .get("tool_use_id", "") → "" → not found
        const auto it = order.find(*b.tool_use_id);
        return it == order.end() ? 0 : it->second;
      };
      std::stable_sort(tool_blocks.begin(), tool_blocks.end(),
                       [&](const Block& a, const Block& b) { return position(a) < position(b); });
      size_t next = 0;
      for (Block& b : msg.blocks) {
        if (b.tool_result) b = tool_blocks[next++];
      }
    }
  }
}

// Index of the last user or developer message, or -1.
long find_last_user_index(const std::vector<const Msg*>& messages) {
  for (long i = static_cast<long>(messages.size()) - 1; i >= 0; --i) {
    const std::string& role = messages[i]->role;
    if (role == "user" || role == "developer") return i;
  }
  return -1;
}

// Keeps everything from the last user/developer message on, and before it every message
// but developer ones. (The reference also strips reasoning_content from the earlier
// assistant messages; rendering drops it for them anyway.)
std::vector<const Msg*> drop_thinking_messages(const std::vector<const Msg*>& messages) {
  const long last_user = find_last_user_index(messages);
  std::vector<const Msg*> kept;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i]->role != "developer" || static_cast<long>(i) >= last_user) {
      kept.push_back(messages[i]);
    }
  }
  return kept;
}

// ---------------------------------------------------------------------------------------
// Rendering.

class PieceWriter {
 public:
  void special(std::string_view s) { add(s, true); }
  void text(std::string_view s) { add(s, false); }
  std::vector<PromptPiece> take() { return std::move(pieces_); }

 private:
  void add(std::string_view s, bool special) {
    if (s.empty()) return;
    if (!pieces_.empty() && pieces_.back().special == special) {
      pieces_.back().text += s;
    } else {
      pieces_.push_back(PromptPiece{std::string(s), special});
    }
  }
  std::vector<PromptPiece> pieces_;
};

void render_tools(const Json& tools, PieceWriter& w) {
  w.special(kToolsHead);
  for (size_t i = 0; i < tools.size(); ++i) {
    if (i > 0) w.special("\n");
    std::string line;
    dump_py_json(tools[i]["function"], line, 1);
    w.text(line);
  }
  w.special(kToolsTail);
}

// The tools block and response format of a system or developer message.
void render_tools_and_format(const Msg& msg, PieceWriter& w) {
  const Json* tools = get_value(*msg.src, "tools");
  if (truthy(tools)) {
    w.special("\n\n");
    render_tools(*tools, w);
  }
  const Json* format = find_field(*msg.src, "response_format");
  if (truthy(format)) {
    w.special("\n\n");
    w.special(kResponseFormatHead);
    std::string schema;
    dump_py_json(*format, schema, 1);
    w.text(schema);
  }
}

void render_parameter(std::string_view key, bool is_string, std::string_view value,
                      PieceWriter& w) {
  w.special(kParamOpen);
  w.text(key);
  w.special(is_string ? "\" string=\"true\">" : "\" string=\"false\">");
  w.text(value);
  w.special(kParamClose);
}

// encode_arguments_to_dsml: one parameter per top-level argument, joined by "\n".
void render_arguments(const Json& arguments, const std::string& where, PieceWriter& w) {
  if (!arguments.is_string()) {
    // json.loads(non-string) raises TypeError: the value becomes the parameter "arguments".
    std::string value;
    dump_py_json(arguments, value, 1);
    render_parameter("arguments", false, value, w);
    return;
  }
  const std::string& raw = arguments.get_ref<const std::string&>();
  const std::optional<PyValue> parsed = py_json_loads(raw);
  if (!parsed) {  // not JSON: the whole text as one string parameter
    render_parameter("arguments", true, raw, w);
    return;
  }
  MOERUN_CHECK(parsed->kind == PyValue::Kind::kObject,
               "{}: the arguments are JSON but not an object (expected {{\"name\": value, ...}})",
               where);
  for (size_t i = 0; i < parsed->keys.size(); ++i) {
    if (i > 0) w.special("\n");
    const std::string& key = parsed->keys[i];
    const PyValue& value = parsed->items[i];
    check_no_surrogate(key, where);
    if (value.kind == PyValue::Kind::kString) {
      check_no_surrogate(value.text, where);
      render_parameter(key, true, value.text, w);
    } else {
      std::string dumped;
      dump_py_value(value, dumped);
      render_parameter(key, false, dumped, w);
    }
  }
}

void render_tool_calls(const Msg& msg, PieceWriter& w) {
  const Json* calls = get_value(*msg.src, "tool_calls");
  if (!truthy(calls)) return;
  w.special(kToolCallsOpen);
  for (size_t i = 0; i < calls->size(); ++i) {
    if (i > 0) w.special("\n");
    const Json& fn = (*calls)[i]["function"];
    w.special(kInvokeOpen);
    w.text(fn["name"].get_ref<const std::string&>());
    w.special("\">\n");
    render_arguments(fn["arguments"],
                     fmt::format("{}.tool_calls[{}].function.arguments", msg.where, i), w);
    w.special(kInvokeClose);
  }
  w.special(kToolCallsClose);
}

void render_tool_result(const Block& block, PieceWriter& w) {
  w.special("<tool_result>");
  if (block.content != nullptr && block.content->is_array()) {
    for (size_t i = 0; i < block.content->size(); ++i) {
      if (i > 0) w.special("\n\n");
      const Json& part = (*block.content)[i];
      const Json* type = get_value(part, "type");
      if (type != nullptr && *type == "text") {
        if (const Json* t = find_field(part, "text")) w.text(t->get_ref<const std::string&>());
      } else {
        w.text(fmt::format("[Unsupported {}]",
                           type == nullptr ? "None" : type->get_ref<const std::string&>()));
      }
    }
  } else if (block.content != nullptr) {
    w.text(block.content->get_ref<const std::string&>());
  }
  w.special("</tool_result>");
}

struct RenderState {
  const std::vector<const Msg*>& messages;
  ThinkingMode mode;
  bool drop_thinking;
  bool effort_max;
  long last_user;
};

void render_message(size_t index, const RenderState& st, PieceWriter& w) {
  const Msg& msg = *st.messages[index];
  const bool thinking = st.mode == ThinkingMode::kThinking;
  if (index == 0 && thinking && st.effort_max) w.special(kReasoningEffortMax);

  if (msg.role == "system") {
    if (const Json* c = get_value(*msg.src, "content")) w.text(c->get_ref<const std::string&>());
    render_tools_and_format(msg, w);
  } else if (msg.role == "developer") {
    const std::string& content = (*msg.src)["content"].get_ref<const std::string&>();
    MOERUN_CHECK(!content.empty(), "{}.content: a developer message needs non-empty content",
                 msg.where);
    w.special(kUser);
    w.text(content);
    render_tools_and_format(msg, w);
  } else if (msg.role == "user") {
    w.special(kUser);
    for (size_t i = 0; i < msg.blocks.size(); ++i) {
      if (i > 0) w.special("\n\n");
      if (msg.blocks[i].tool_result) {
        render_tool_result(msg.blocks[i], w);
      } else {
        w.text(msg.blocks[i].text);
      }
    }
  } else if (msg.role == "latest_reminder") {
    w.special(kLatestReminder);
    w.text((*msg.src)["content"].get_ref<const std::string&>());
  } else if (msg.role == "assistant") {
    const bool prev_has_task = index > 0 && st.messages[index - 1]->task != nullptr;
    if (thinking && !prev_has_task &&
        (!st.drop_thinking || static_cast<long>(index) > st.last_user)) {
      if (const Json* r = get_value(*msg.src, "reasoning_content")) {
        w.text(r->get_ref<const std::string&>());
      }
      w.special(kThinkEnd);
    }
    if (const Json* c = get_value(*msg.src, "content")) w.text(c->get_ref<const std::string&>());
    render_tool_calls(msg, w);
    if (!truthy(find_field(*msg.src, "wo_eos"))) w.special(kEos);
  } else {
    MOERUN_THROW("{}.role: unknown role '{}' (allowed: {})", msg.where, msg.role, kAllowedRoles);
  }

  // The transition to the next turn, only before an assistant or latest_reminder message or
  // at the end.
  if (index + 1 < st.messages.size()) {
    const std::string& next = st.messages[index + 1]->role;
    if (next != "assistant" && next != "latest_reminder") return;
  }
  if (msg.task != nullptr) {
    const std::string& task = msg.task->get_ref<const std::string&>();
    if (task != "action") {
      w.special(task_token(task));
    } else {
      w.special(kAssistant);
      w.special(thinking ? kThinkStart : kThinkEnd);
      w.special(task_token(task));
    }
  } else if (msg.role == "user" || msg.role == "developer") {
    w.special(kAssistant);
    const bool open_thinking =
        thinking && (!st.drop_thinking || static_cast<long>(index) >= st.last_user);
    w.special(open_thinking ? kThinkStart : kThinkEnd);
  }
}

// ---------------------------------------------------------------------------------------
// Completion parsing.

struct Stop {
  size_t end = 0;           // index just past the stop string (or text size if none)
  std::string_view before;  // text from the start index up to the stop string
  std::string_view stop;    // the stop string found; empty if none
};

// _read_until_stop: the earliest of `stops` at or after `index` (the first listed on ties).
Stop read_until_stop(std::string_view text, size_t index,
                     std::initializer_list<std::string_view> stops) {
  size_t best = text.size();
  std::string_view matched;
  for (const std::string_view s : stops) {
    const size_t pos = text.find(s, index);
    if (pos != std::string_view::npos && pos < best) {
      best = pos;
      matched = s;
    }
  }
  if (matched.empty()) return Stop{text.size(), text.substr(std::min(index, text.size())), {}};
  return Stop{best + matched.size(), text.substr(index, best - index), matched};
}

// Completion text for an error message: quoted, shortened, newlines and tabs escaped.
std::string quote(std::string_view s) {
  constexpr size_t kMax = 40;
  std::string q;
  for (const char c : utf8_prefix(s, kMax)) {
    if (c == '\n') {
      q += "\\n";
    } else if (c == '\t') {
      q += "\\t";
    } else {
      q += c;
    }
  }
  if (s.size() > kMax) q += "...";
  return "'" + q + "'";
}

std::string describe(const Stop& s) {
  return s.stop.empty() ? std::string("the end of the text") : quote(s.stop);
}

// Python re `^\s*name="(.*?)">\n$` (DOTALL) on the text between "<｜DSML｜invoke" and the
// next parameter or invoke end; `$` also matches before a final "\n".
std::optional<std::string_view> match_invoke_name(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    if (!is_python_space(decode_utf8(s, next))) break;
    pos = next;
  }
  constexpr std::string_view kPrefix = "name=\"";
  if (s.substr(pos, kPrefix.size()) != kPrefix) return std::nullopt;
  const size_t name_start = pos + kPrefix.size();
  constexpr std::string_view kSuffix = "\">\n";
  size_t name_end;
  if (s.ends_with("\">\n\n")) {
    name_end = s.size() - 4;
  } else if (s.ends_with(kSuffix)) {
    name_end = s.size() - 3;
  } else {
    return std::nullopt;
  }
  if (name_end < name_start) return std::nullopt;
  return s.substr(name_start, name_end - name_start);
}

struct ParamMatch {
  std::string_view name;
  bool is_string;
  std::string_view value;
};

// Python re `^ name="(.*?)" string="(true|false)">(.*?)<$` (DOTALL) on the text between
// "<｜DSML｜parameter" and "/｜DSML｜parameter".
std::optional<ParamMatch> match_parameter(std::string_view s) {
  constexpr std::string_view kPrefix = " name=\"";
  if (!s.starts_with(kPrefix)) return std::nullopt;
  size_t value_end;  // the final "<" (before an optional last "\n")
  if (s.ends_with("<\n")) {
    value_end = s.size() - 2;
  } else if (s.ends_with("<")) {
    value_end = s.size() - 1;
  } else {
    return std::nullopt;
  }
  constexpr std::string_view kTrue = "\" string=\"true\">";
  constexpr std::string_view kFalse = "\" string=\"false\">";
  // The lazy name group ends at the first place where either flag follows.
  for (size_t i = kPrefix.size(); i < s.size(); ++i) {
    const bool t = s.substr(i).starts_with(kTrue);
    const bool f = !t && s.substr(i).starts_with(kFalse);
    if (!t && !f) continue;
    const size_t value_start = i + (t ? kTrue.size() : kFalse.size());
    if (value_start > value_end) return std::nullopt;
    return ParamMatch{s.substr(kPrefix.size(), i - kPrefix.size()), t,
                      s.substr(value_start, value_end - value_start)};
  }
  return std::nullopt;
}

// decode_dsml_to_arguments: {"k": v, ...} with string values JSON-quoted and the others
// inserted verbatim.
std::string rebuild_arguments(const std::vector<std::pair<ParamMatch, size_t>>& params) {
  std::string out = "{";
  for (size_t i = 0; i < params.size(); ++i) {
    if (i > 0) out += ", ";
    const ParamMatch& p = params[i].first;
    dump_py_string(p.name, out);
    out += ": ";
    if (p.is_string) {
      dump_py_string(p.value, out);
    } else {
      out += p.value;
    }
  }
  out += "}";
  return out;
}

// parse_tool_calls, from just after "\n\n<｜DSML｜tool_calls"; appends the calls and returns
// the index after the block. As in the reference, a text that ends inside the block right
// after a complete invoke head or ">\n" is accepted (the caller then finds no EOS and
// nothing left over).
size_t parse_tool_calls(std::string_view text, size_t index, std::vector<ToolCall>& calls) {
  while (index < text.size()) {
    const Stop open = read_until_stop(text, index, {kInvokeStart, kToolCallsEnd});
    MOERUN_CHECK(open.before == ">\n",
                 "completion offset {}: expected '>\\n' before the next '<｜DSML｜invoke' or "
                 "'</｜DSML｜tool_calls>', got {}",
                 index, quote(open.before));
    if (open.stop == kToolCallsEnd) return open.end;
    MOERUN_CHECK(!open.stop.empty(),
                 "completion offset {}: expected '<｜DSML｜invoke' or '</｜DSML｜tool_calls>', "
                 "got the end of the text",
                 open.end);
    const size_t name_at = open.end;
    Stop head = read_until_stop(text, name_at, {kParamStart, kInvokeEnd});
    const std::optional<std::string_view> name = match_invoke_name(head.before);
    MOERUN_CHECK(name.has_value(),
                 "completion offset {}: expected ' name=\"NAME\">\\n' after '<｜DSML｜invoke', "
                 "got {}",
                 name_at, quote(head.before));
    std::vector<std::pair<ParamMatch, size_t>> params;  // with the offset of each
    std::unordered_map<std::string_view, size_t> seen;  // name → offset
    Stop st = head;
    while (st.stop == kParamStart) {
      const size_t param_at = st.end;
      const Stop body = read_until_stop(text, param_at, {kParamEnd});
      const std::optional<ParamMatch> p = match_parameter(body.before);
      MOERUN_CHECK(p.has_value(),
                   "completion offset {}: expected ' name=\"KEY\" string=\"true|false\">VALUE"
                   "</｜DSML｜parameter>' in invoke '{}', got {}",
                   param_at, *name, quote(body.before));
      const auto [first, inserted] = seen.emplace(p->name, param_at);
      MOERUN_CHECK(inserted,
                   "completion offset {}: duplicate parameter name '{}' in invoke '{}' (first at "
                   "offset {})",
                   param_at, p->name, *name, first->second);
      params.emplace_back(*p, param_at);
      st = read_until_stop(text, body.end, {kParamStart, kInvokeEnd});
      MOERUN_CHECK(st.before == ">\n",
                   "completion offset {}: expected '>\\n' after parameter '{}' of invoke '{}', "
                   "then '<｜DSML｜parameter' or '</｜DSML｜invoke>'; got {} before {}",
                   body.end, p->name, *name, quote(st.before), describe(st));
    }
    calls.push_back(ToolCall{std::string(*name), rebuild_arguments(params)});
    index = st.end;
  }
  return index;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Public API.

ThinkingMode parse_thinking_mode(std::string_view name) {
  if (name == "chat") return ThinkingMode::kChat;
  if (name == "thinking") return ThinkingMode::kThinking;
  MOERUN_THROW("thinking_mode: invalid value '{}' (allowed: chat, thinking)", name);
}

std::vector<PromptPiece> encode_messages_pieces(const nlohmann::ordered_json& messages,
                                                const EncodeOptions& options) {
  MOERUN_CHECK(messages.is_array(), "messages: expected an array of messages, got {} {}",
               messages.type_name(), brief(messages));
  MOERUN_CHECK(options.context.is_null() || options.context.is_array(),
               "context: expected an array of messages or null, got {} {}",
               options.context.type_name(), brief(options.context));
  const std::optional<std::string>& effort = options.reasoning_effort;
  MOERUN_CHECK(!effort || *effort == "max" || *effort == "high",
               "reasoning_effort: invalid value '{}' (allowed: max, high, or none)",
               effort.value_or(""));

  const Json empty = Json::array();
  const Json& context_json = options.context.is_null() ? empty : options.context;
  std::vector<Msg> merged = merge_tool_messages(context_json, "context");
  const size_t num_context = merged.size();
  {
    std::vector<Msg> new_messages = merge_tool_messages(messages, "messages");
    for (Msg& m : new_messages) merged.push_back(std::move(m));
  }
  sort_tool_results_by_call_order(merged);

  std::vector<const Msg*> full;
  for (const Msg& m : merged) full.push_back(&m);

  PieceWriter w;
  if (options.add_default_bos_token && num_context == 0) w.special(kBos);

  bool drop_thinking = options.drop_thinking;
  for (const Msg& m : merged) {
    if (m.role != "user" && truthy(get_value(*m.src, "tools"))) drop_thinking = false;
  }

  long num_to_render = static_cast<long>(merged.size() - num_context);
  long context_len = static_cast<long>(num_context);
  if (options.mode == ThinkingMode::kThinking && drop_thinking) {
    const std::vector<const Msg*> context_only(full.begin(), full.begin() + num_context);
    full = drop_thinking_messages(full);
    // As the reference: the context part's length is measured by dropping within the context
    // alone, which can differ from its length inside the whole list.
    num_to_render = static_cast<long>(full.size()) -
                    static_cast<long>(drop_thinking_messages(context_only).size());
    context_len = static_cast<long>(full.size()) - num_to_render;
  }

  const RenderState st{full, options.mode, drop_thinking, effort && *effort == "max",
                       find_last_user_index(full)};
  for (long i = 0; i < num_to_render; ++i) {
    render_message(static_cast<size_t>(i + context_len), st, w);
  }
  return w.take();
}

std::string encode_messages(const nlohmann::ordered_json& messages, const EncodeOptions& options) {
  std::string prompt;
  for (const PromptPiece& p : encode_messages_pieces(messages, options)) prompt += p.text;
  return prompt;
}

nlohmann::ordered_json ParsedMessage::to_json() const {
  Json calls = Json::array();
  for (const ToolCall& c : tool_calls) {
    calls.push_back(Json{{"type", "function"},
                         {"function", Json{{"name", c.name}, {"arguments", c.arguments}}}});
  }
  return Json{{"role", "assistant"},
              {"content", content},
              {"reasoning_content", reasoning_content},
              {"tool_calls", std::move(calls)}};
}

ParsedMessage parse_completion(std::string_view text, ThinkingMode mode) {
  const size_t bad = find_invalid_utf8(text);
  MOERUN_CHECK(bad == std::string_view::npos, "completion offset {}: invalid UTF-8", bad);
  ParsedMessage out;
  size_t index = 0;
  if (mode == ThinkingMode::kThinking) {
    const Stop r = read_until_stop(text, index, {kThinkEnd, kToolCallsStart});
    MOERUN_CHECK(r.stop == kThinkEnd,
                 "completion offset {}: expected '</think>' to end the reasoning (thinking "
                 "mode), found {}",
                 r.end - r.stop.size(), describe(r));
    out.reasoning_content = std::string(r.before);
    index = r.end;
  }
  const Stop c = read_until_stop(text, index, {kEos, kToolCallsStart});
  out.content = std::string(c.before);
  Stop last = c;
  if (c.stop == kToolCallsStart) {
    index = parse_tool_calls(text, c.end, out.tool_calls);
    last = read_until_stop(text, index, {kEos});
    MOERUN_CHECK(last.before.empty(),
                 "completion offset {}: expected '<｜end▁of▁sentence｜>' right after "
                 "'</｜DSML｜tool_calls>', got {}",
                 index, quote(last.before));
  } else {
    MOERUN_CHECK(c.stop == kEos,
                 "completion offset {}: expected '<｜end▁of▁sentence｜>' after the content, "
                 "found the end of the text",
                 c.end);
  }
  MOERUN_CHECK(last.end == text.size(),
               "completion offset {}: expected the end of the text after "
               "'<｜end▁of▁sentence｜>', got {}",
               last.end, quote(text.substr(last.end)));
  for (const std::string_view token : {kBos, kEos, kThinkStart, kThinkEnd, kDsml}) {
    const size_t in_reasoning = out.reasoning_content.find(token);
    MOERUN_CHECK(in_reasoning == std::string::npos,
                 "completion offset {}: unexpected special token '{}' in the reasoning",
                 in_reasoning, token);
    const size_t in_content = out.content.find(token);
    MOERUN_CHECK(in_content == std::string::npos,
                 "completion offset {}: unexpected special token '{}' in the content",
                 in_content + (c.end - c.stop.size() - c.before.size()), token);
  }
  return out;
}

std::string python_json_dumps(const nlohmann::ordered_json& value) {
  std::string out;
  dump_py_json(value, out, 0);
  return out;
}

std::optional<std::string> python_json_redump(std::string_view text) {
  const std::optional<PyValue> v = py_json_loads(text);
  if (!v) return std::nullopt;
  std::string out;
  dump_py_value(*v, out);
  return out;
}

}  // namespace moerun::chat
