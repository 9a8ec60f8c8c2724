#pragma once
// JSON from outside (message bodies, headers, remote-control requests, CLI flags, handler
// output): parsed with a bound on nesting, so no later copy or dump can run out of stack.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "conveyor/error.hpp"
#include "conveyor/task.hpp"

namespace conveyor::detail {

/// The deepest nesting of arrays and objects Conveyor accepts from outside. Copying and
/// printing JSON recurse once per level; this bound keeps that far from any thread's stack.
inline constexpr std::size_t kMaxJsonDepth = 128;

/// How deeply the arrays and objects of JSON text nest, counted without recursion (brackets
/// inside strings do not count); stops counting once past `limit`.
std::size_t json_text_depth(std::string_view text, std::size_t limit = kMaxJsonDepth) noexcept;

/// How deeply a JSON value nests (a scalar is 0, `[]` is 1), without recursion; stops once
/// past `limit`.
std::size_t json_depth(const Json& value, std::size_t limit = kMaxJsonDepth);

/// Parses JSON text as `Json::parse(text, nullptr, false)` does, with the same values (a
/// non-negative integer is unsigned, the last of two equal keys wins) and a discarded value
/// for text that is not JSON, about three times faster: simdjson first, nlohmann for what
/// simdjson refuses (numbers beyond 64 bits, for one). Recurses once per level: bound the
/// depth of untrusted text first (parse_untrusted does).
Json parse_json(std::string_view text);

/// Whether `embed` is Celery's empty embed: an object of nothing but its keys (callbacks,
/// errbacks, chain, chord), each null. A decoded task keeps an empty object instead, which
/// encodes as the same text.
bool is_empty_embed(const Json& embed);

/// A Celery protocol 2 body, [args, kwargs, embed], in its three parts.
struct TaskBody {
    Json args;    ///< an array
    Json kwargs;  ///< an object
    Json embed;   ///< an object; empty for Celery's empty one (is_empty_embed) or a null
};

/// Untrusted text read straight into a task body's parts, without a tree of the whole: nullopt
/// unless it is a JSON array of an array, an object and an object or null that simdjson reads
/// as nlohmann would (up to 64 KiB, no deeper than kMaxJsonDepth, no -0); the caller then
/// parses it with parse_untrusted and says what is wrong.
std::optional<TaskBody> parse_task_body(std::string_view text);

/// Parses untrusted text. Errc::malformed "{what} nests deeper than 128 levels" or "{what} is
/// not valid JSON (or not valid UTF-8)".
Result<Json> parse_untrusted(std::string_view text, std::string_view what);

/// Whether `text` is well-formed UTF-8 (no overlong forms, surrogates or code points past
/// U+10FFFF).
bool is_utf8(std::string_view text) noexcept;

/// `value` as compact JSON text; invalid UTF-8 in strings becomes U+FFFD instead of throwing.
std::string dump_lossy(const Json& value);

/// Appends `text` as a JSON string, as dump_lossy(Json(text)) writes it.
void append_json_string(std::string& out, std::string_view text);

}  // namespace conveyor::detail
