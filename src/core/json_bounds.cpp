#include "core/json_bounds.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/simdjson_tree.hpp"

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

Json to_json(simdjson::dom::element e, bool& zero) {
    using Type = simdjson::dom::element_type;
    switch (e.type()) {
        case Type::OBJECT: {
            Json out = Json::object();
            auto& members = out.get_ref<Json::object_t&>();
            simdjson::dom::object object = e.get_object().value_unsafe();
            for (auto [key, value] : object)
                members.insert_or_assign(std::string(key), to_json(value, zero));
            return out;
        }
        case Type::ARRAY: {
            Json out = Json::array();
            auto& items = out.get_ref<Json::array_t&>();
            simdjson::dom::array array = e.get_array().value_unsafe();
            items.reserve(array.size());
            for (auto item : array) items.push_back(to_json(item, zero));
            return out;
        }
        case Type::STRING:
            return Json(std::string(e.get_string().value_unsafe()));
        case Type::INT64: {
            auto v = e.get_int64().value_unsafe();
            zero = zero || v == 0;
            // nlohmann keeps a non-negative integer as unsigned.
            return v >= 0 ? Json(std::uint64_t(v)) : Json(v);
        }
        case Type::UINT64:
            return Json(e.get_uint64().value_unsafe());
        case Type::DOUBLE:
            return Json(e.get_double().value_unsafe());
        case Type::BOOL:
            return Json(e.get_bool().value_unsafe());
        case Type::NULL_VALUE:
            break;
    }
    return Json(nullptr);
}

bool may_hold_negative_zero(std::string_view text) noexcept {
    for (auto at = text.find("-0"); at != std::string_view::npos; at = text.find("-0", at + 2)) {
        if (at + 2 == text.size()) return true;
        switch (text[at + 2]) {
            case ',':
            case ']':
            case '}':
            case ' ':
            case '\t':
            case '\n':
            case '\r':
                return true;
            default:
                break;
        }
    }
    return false;
}

namespace {

Json from_document(simdjson::dom::element root, std::string_view text) {
    bool zero = false;
    Json out = to_json(root, zero);
    if (zero && may_hold_negative_zero(text)) return Json::parse(text, nullptr, false);
    return out;
}

}  // namespace

Json parse_json(std::string_view text) {
    simdjson::dom::element root;
    if (text.size() <= kReusedParserBytes) {
        thread_local simdjson::dom::parser parser;
        if (!parser.parse(text.data(), text.size(), true).get(root))
            return from_document(root, text);
    } else {
        simdjson::dom::parser parser;
        if (!parser.parse(text.data(), text.size(), true).get(root))
            return from_document(root, text);
    }
    return Json::parse(text, nullptr, false);
}

bool bound_depth(simdjson::dom::parser& parser, std::size_t capacity) noexcept {
    // (Growing for a larger document later keeps the bound: simdjson reallocates with the
    // parser's max_depth.)
    return !parser.allocate(std::max<std::size_t>(capacity, 4096), kMaxJsonDepth);
}

namespace {

/// The thread's parser for untrusted documents up to kReusedParserBytes, its depth bounded
/// (bound_depth); null when it could not be allocated.
simdjson::dom::parser* bounded_parser() {
    thread_local simdjson::dom::parser parser;
    thread_local bool bounded = bound_depth(parser, 0);
    return bounded ? &parser : nullptr;
}

bool embed_key(std::string_view key) {
    return key == "callbacks" || key == "errbacks" || key == "chain" || key == "chord";
}

/// Whether an embed object is Celery's empty one: nothing but its own keys, each null.
bool empty_embed(simdjson::dom::object embed) {
    for (auto [key, value] : embed)
        if (!value.is_null() || !embed_key(key)) return false;
    return true;
}

}  // namespace

bool is_empty_embed(const Json& embed) {
    if (!embed.is_object()) return false;
    for (auto& [key, value] : embed.items())
        if (!value.is_null() || !embed_key(key)) return false;
    return true;
}

std::optional<TaskBody> parse_task_body(std::string_view text) {
    auto* parser = text.size() <= kReusedParserBytes ? bounded_parser() : nullptr;
    simdjson::dom::element root;
    if (!parser || parser->parse(text.data(), text.size(), true).get(root)) return std::nullopt;
    simdjson::dom::array parts;
    if (root.get_array().get(parts) || parts.size() != 3) return std::nullopt;
    std::array<simdjson::dom::element, 3> part;
    std::size_t i = 0;
    for (auto e : parts)
        if (i < part.size()) part[i++] = e;
    if (!part[0].is_array() || !part[1].is_object() || !(part[2].is_object() || part[2].is_null()))
        return std::nullopt;
    bool zero = false;
    TaskBody body{to_json(part[0], zero), to_json(part[1], zero), Json::object()};
    if (part[2].is_object() && !empty_embed(part[2].get_object().value_unsafe()))
        body.embed = to_json(part[2], zero);
    if (zero && may_hold_negative_zero(text)) return std::nullopt;  // nlohmann keeps -0 apart
    return body;
}

Result<Json> parse_untrusted(std::string_view text, std::string_view what) {
    // simdjson with its nesting bounded first: what it parses nests no deeper than
    // kMaxJsonDepth, so the text needs no scan of its own for depth.
    simdjson::dom::element root;
    std::optional<Json> fast;
    if (text.size() <= kReusedParserBytes) {
        auto* parser = bounded_parser();
        if (parser && !parser->parse(text.data(), text.size(), true).get(root))
            fast = from_document(root, text);
    } else {
        simdjson::dom::parser parser;
        if (bound_depth(parser, text.size()) &&
            !parser.parse(text.data(), text.size(), true).get(root))
            fast = from_document(root, text);
    }
    // (A -0 has nlohmann read the text again: what it refuses is refused.)
    if (fast && !fast->is_discarded()) return std::move(*fast);
    // Refused: not JSON, beyond what simdjson reads (a number past 64 bits), or nested as deep
    // as the bound (see bound_depth); the depth is counted, then nlohmann has the last word.
    if (json_text_depth(text) > kMaxJsonDepth)
        return fail(Errc::malformed,
                    fmt::format("{} nests deeper than {} levels", what, kMaxJsonDepth));
    Json j = parse_json(text);
    if (j.is_discarded())
        return fail(Errc::malformed,
                    fmt::format("{} is not valid JSON (or not valid UTF-8)", what));
    return j;
}

bool is_utf8(std::string_view text) noexcept {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const auto* end = p + text.size();
    while (p < end) {
        unsigned c = *p;
        if (c < 0x80) {
            ++p;
            continue;
        }
        int n;
        unsigned min;
        std::uint32_t cp;
        if ((c & 0xE0) == 0xC0) {
            n = 1, min = 0x80, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2, min = 0x800, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return false;
        }
        if (end - p <= n) return false;
        for (int i = 1; i <= n; ++i) {
            if ((p[i] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        p += n + 1;
    }
    return true;
}

std::string dump_lossy(const Json& value) {
    return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

void append_json_string(std::string& out, std::string_view text) {
    const bool plain = std::all_of(text.begin(), text.end(), [](char c) {
        auto u = static_cast<unsigned char>(c);
        return u >= 0x20 && u < 0x7f && c != '"' && c != '\\';
    });
    if (!plain) {
        out += dump_lossy(Json(text));
        return;
    }
    out += '"';
    out += text;
    out += '"';
}

}  // namespace conveyor::detail
