// What exec and http handlers send and how their answers are read.

#include <fmt/format.h>

#include <algorithm>

#include "core/json_bounds.hpp"
#include "core/time.hpp"
#include "worker/handlers.hpp"

namespace conveyor::detail {

std::string header_value(std::string_view text) {
    // Task ids and names come from the wire: a CR or LF would end the header and start another
    // one. Control characters (and '%', so the encoding can be undone) are percent-encoded.
    std::string out;
    out.reserve(text.size());
    for (unsigned char c : text) {
        if (c < 0x20 || c == 0x7f || c == '%')
            out += fmt::format("%{:02X}", c);
        else
            out += char(c);
    }
    return out;
}

HandlerBody handler_body(const TaskMessage& t) {
    if (t.body) return {*t.body, t.content_type};
    const Json& value = t.args.is_array() && t.args.size() == 1 ? t.args[0] : t.args;
    if (value.is_string()) {
        const auto& text = value.get_ref<const std::string&>();
        return {text, is_utf8(text) ? "text/plain" : "application/octet-stream"};
    }
    return {dump_lossy(value), "application/json"};
}

std::optional<TypedFailure> typed_failure(std::string_view text) {
    auto end = text.find_last_not_of("\r\n");
    if (end == std::string_view::npos) return std::nullopt;
    auto start = text.rfind('\n', end);
    std::size_t from = start == std::string_view::npos ? 0 : start + 1;
    std::string_view line = text.substr(from, end - from + 1);
    if (line.empty() || line.front() != '{' || line.size() > 65536) return std::nullopt;
    auto j = parse_untrusted(line, "the failure");
    if (!j || !j->is_object()) return std::nullopt;
    auto type = j->find("exc_type");
    if (type == j->end() || !type->is_string() || type->get_ref<const std::string&>().empty())
        return std::nullopt;
    TypedFailure f;
    f.type = type->get<std::string>();
    if (auto m = j->find("exc_message"); m != j->end())
        f.message = m->is_string() ? m->get<std::string>() : dump_lossy(*m);
    if (auto m = j->find("exc_module"); m != j->end() && m->is_string()) f.module = *m;
    if (auto r = j->find("retry_in"); r != j->end() && r->is_number() && r->get<double>() >= 0)
        f.retry_in = seconds_to_ms(std::min(r->get<double>(), 365.0 * 86400));
    return f;
}

}  // namespace conveyor::detail
