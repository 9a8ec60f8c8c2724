#pragma once
// What parse_json and codec::TextHeaders share: a simdjson value as the Json nlohmann's parser
// would have built from the same text.

#include <simdjson.h>

#include <cstddef>
#include <string_view>

#include "conveyor/task.hpp"

namespace conveyor::detail {

/// Documents up to this size reuse one parser per thread; larger ones get a parser of their
/// own, so that one big message does not leave a thread holding its buffers.
inline constexpr std::size_t kReusedParserBytes = std::size_t{64} * 1024;

/// Makes `parser` refuse documents nested deeper than kMaxJsonDepth (and allocates it for
/// `capacity` bytes); false when it could not allocate. A document it then parses nests no
/// deeper than kMaxJsonDepth. (simdjson counts an innermost container that holds something
/// one level more than json_text_depth does, so it may refuse one exactly kMaxJsonDepth deep:
/// callers count the depth themselves when it refuses.)
bool bound_depth(simdjson::dom::parser& parser, std::size_t capacity) noexcept;

/// `e` as Json, the way nlohmann's parser builds it (a non-negative integer is unsigned, the
/// last of two equal keys wins). Sets `zero` when it meets an integer 0, which the text may have
/// spelled "-0" (nlohmann keeps that as a signed integer). Recurses once per level.
Json to_json(simdjson::dom::element e, bool& zero);

/// Whether `text` (valid JSON) may hold the number -0, which nlohmann keeps as a signed
/// integer and simdjson as a plain zero: "-0" followed by what may end a number. Strings
/// that happen to hold that only cost a slower path.
bool may_hold_negative_zero(std::string_view text) noexcept;

}  // namespace conveyor::detail
