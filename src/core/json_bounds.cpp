#include "core/json_bounds.hpp"

#include <fmt/format.h>

#include <utility>
#include <vector>

namespace conveyor::detail {

std::size_t json_text_depth(std::string_view text, std::size_t limit) noexcept {
    std::size_t depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (char c : text) {
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
            continue;
        }
        switch (c) {
            case '"':
                in_string = true;
                break;
            case '[':
            case '{':
                if (++depth > deepest) {
                    deepest = depth;
                    if (deepest > limit) return deepest;
                }
                break;
            case ']':
            case '}':
                if (depth > 0) --depth;
                break;
            default:
                break;
        }
    }
    return deepest;
}

std::size_t json_depth(const Json& value, std::size_t limit) {
    std::size_t deepest = 0;
    std::vector<std::pair<const Json*, std::size_t>> todo{{&value, 0}};
    while (!todo.empty()) {
        auto [v, d] = todo.back();
        todo.pop_back();
        if (!v->is_structured()) continue;
        deepest = std::max(deepest, d + 1);
        if (deepest > limit) return deepest;
        for (auto& child : *v) todo.emplace_back(&child, d + 1);
    }
    return deepest;
}

Result<Json> parse_untrusted(std::string_view text, std::string_view what) {
    if (json_text_depth(text) > kMaxJsonDepth)
        return fail(Errc::malformed,
                    fmt::format("{} nests deeper than {} levels", what, kMaxJsonDepth));
    Json j = Json::parse(text, nullptr, false);
    if (j.is_discarded())
        return fail(Errc::malformed,
                    fmt::format("{} is not valid JSON (or not valid UTF-8)", what));
    return j;
}

std::string dump_lossy(const Json& value) {
    return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace conveyor::detail
