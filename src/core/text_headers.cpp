#include "core/text_headers.hpp"

#include <cstdint>

#include "core/json_bounds.hpp"
#include "core/simdjson_tree.hpp"

namespace conveyor::codec {

namespace {

struct ThreadParser {
    ThreadParser() { bounded = detail::bound_depth(parser, 0); }
    simdjson::dom::parser parser;
    bool bounded = false;
    bool taken = false;
};

ThreadParser& thread_parser() {
    thread_local ThreadParser p;
    return p;
}

}  // namespace

TextHeaders::TextHeaders(std::string_view text) : text_(text) {
    simdjson::dom::parser* parser = nullptr;
    auto& mine = thread_parser();
    if (text.size() <= detail::kReusedParserBytes && !mine.taken && mine.bounded) {
        mine.taken = borrowed_ = true;
        parser = &mine.parser;
    } else {
        own_ = std::make_unique<simdjson::dom::parser>();
        parser = own_.get();
        if (!detail::bound_depth(*parser, text.size())) return;  // unreadable: the tree's way
    }
    // (parse copies the text into the parser's padded buffer: `realloc_if_needed`.)
    readable_ = !parser->parse(text.data(), text.size(), true).get(root_) &&
                !detail::may_hold_negative_zero(text) &&
                (!root_.is_object() || root_.get_object().value_unsafe().size() <= kMaxNames);
}

TextHeaders::~TextHeaders() {
    if (borrowed_) thread_parser().taken = false;
}

std::optional<simdjson::dom::element> TextHeaders::member(std::string_view key) const {
    if (!is_object()) return std::nullopt;
    std::optional<simdjson::dom::element> found;
    simdjson::dom::object object = root_.get_object().value_unsafe();
    for (auto field : object)
        if (field.key == key) found = field.value;  // the last of two equal names, as nlohmann
    return found;
}

std::optional<HeaderValue> TextHeaders::find(std::string_view key) const {
    auto e = member(key);
    if (!e) return std::nullopt;
    using Type = simdjson::dom::element_type;
    using Kind = HeaderValue::Kind;
    HeaderValue v;
    switch (e->type()) {
        case Type::NULL_VALUE:
            break;
        case Type::BOOL:
            v.kind = Kind::boolean;
            v.boolean = e->get_bool().value_unsafe();
            break;
        case Type::INT64: {
            auto i = e->get_int64().value_unsafe();
            if (i >= 0) {  // nlohmann keeps a non-negative integer as unsigned
                v.kind = Kind::unsigned_integer;
                v.unsigned_integer = std::uint64_t(i);
            } else {
                v.kind = Kind::integer;
                v.integer = i;
            }
            break;
        }
        case Type::UINT64:
            v.kind = Kind::unsigned_integer;
            v.unsigned_integer = e->get_uint64().value_unsafe();
            break;
        case Type::DOUBLE:
            v.kind = Kind::real;
            v.real = e->get_double().value_unsafe();
            break;
        case Type::STRING:
            v.kind = Kind::string;
            v.text = e->get_string().value_unsafe();
            break;
        default:
            v.kind = Kind::other;
            break;
    }
    return v;
}

Json TextHeaders::json(std::string_view key) const {
    auto e = member(key);
    if (!e) return Json();
    bool zero = false;  // (a -0 made the text unreadable)
    return detail::to_json(*e, zero);
}

void TextHeaders::names(const std::function<void(std::string_view)>& each) const {
    if (!is_object()) return;
    simdjson::dom::object object = root_.get_object().value_unsafe();
    for (auto field : object) each(field.key);
}

bool TextHeaders::is_table() const { return is_object() || (readable_ && root_.is_null()); }

bool TextHeaders::too_deep() const {
    // Read, it nests no deeper than the parser's bound (detail::bound_depth).
    return !readable_ && detail::json_text_depth(text_) > detail::kMaxJsonDepth;
}
}  // namespace conveyor::codec
