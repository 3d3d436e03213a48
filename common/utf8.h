// Small UTF-8 helpers shared by the tokenizer and the chat format.
#pragma once

#include <string>

namespace moerun::utf8 {

// Appends the UTF-8 form of code point `cp` (< 0x110000). Surrogates (U+D800..U+DFFF, e.g. a
// lone one from a JSON \u escape) come out in the 3-byte form that valid UTF-8 forbids;
// callers that may see them check before emitting.
inline void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace moerun::utf8
