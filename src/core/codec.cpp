#include "core/codec.hpp"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <array>

#include "core/json_bounds.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor::codec {

namespace {

Json time_or_null(const std::optional<TimePoint>& t) {
    return t ? Json(detail::format_iso8601(*t)) : Json();
}

Json opt_or_null(const std::optional<double>& v) { return v ? Json(*v) : Json(); }

/// A repr cut to Celery's argsrepr_maxsize and kwargsrepr_maxsize (1,024) with "..." at the
/// end, at a UTF-8 character's start: the headers carry a glimpse of the arguments, not a second
/// copy of a big payload.
std::string bounded_repr(std::string s) {
    constexpr std::size_t kMax = 1024;
    if (s.size() <= kMax) return s;
    std::size_t cut = kMax - 3;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    s.resize(cut);
    return s + "...";
}

std::string repr(const Json& v) {
    if (v.is_null()) return "None";
    if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
    if (v.is_string()) return "'" + v.get<std::string>() + "'";
    if (v.is_array()) {
        std::string out = "[";
        for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + repr(v[i]);
        return out + "]";
    }
    if (v.is_object()) return kwargs_repr(v);
    return v.dump();
}

using Kind = HeaderValue::Kind;

Result<std::optional<TimePoint>> header_time(const Headers& headers, const char* key) {
    auto v = headers.find(key);
    if (!v || v->kind == Kind::null) return std::optional<TimePoint>{};
    if (v->kind != Kind::string)
        return fail(Errc::malformed, fmt::format("header '{}' is not a string", key));
    auto t = detail::parse_iso8601(v->text);
    if (!t) {
        return fail(Errc::malformed, fmt::format("header '{}' is not an ISO-8601 time: '{}'", key,
                                                 v->text.substr(0, 64)));
    }
    return std::optional<TimePoint>{*t};
}

Result<std::string> header_string(const Headers& headers, const char* key) {
    auto v = headers.find(key);
    if (!v || v->kind == Kind::null) return std::string{};
    if (v->kind != Kind::string)
        return fail(Errc::malformed, fmt::format("header '{}' is not a string", key));
    return std::string(v->text);
}

/// A whole-number header within [lo, hi].
Result<std::optional<std::int64_t>> header_int(const Headers& headers, const char* key,
                                               std::int64_t lo, std::int64_t hi) {
    auto v = headers.find(key);
    if (!v || v->kind == Kind::null) return std::optional<std::int64_t>{};
    bool in_range;
    if (v->kind == Kind::unsigned_integer) {
        auto u = v->unsigned_integer;
        in_range = hi >= 0 && u <= std::uint64_t(hi) && (lo <= 0 || u >= std::uint64_t(lo));
        if (!in_range)
            return fail(Errc::malformed,
                        fmt::format("header '{}' is {}, outside {}..{}", key, u, lo, hi));
        return std::optional<std::int64_t>{std::int64_t(u)};
    }
    if (v->kind != Kind::integer)
        return fail(Errc::malformed, fmt::format("header '{}' is not an integer", key));
    auto i = v->integer;
    if (i < lo || i > hi)
        return fail(Errc::malformed,
                    fmt::format("header '{}' is {}, outside {}..{}", key, i, lo, hi));
    return std::optional<std::int64_t>{i};
}

Result<std::optional<double>> as_limit(const Json& v, const char* what) {
    if (v.is_null()) return std::optional<double>{};
    if (!v.is_number())
        return fail(Errc::malformed, fmt::format("timelimit {} is not a number", what));
    double s = v.get<double>();
    if (!(s >= 0 && s <= kMaxTimeLimit))  // NaN fails too
        return fail(Errc::malformed, fmt::format("timelimit {} is {}, outside 0..{} seconds", what,
                                                 v.dump(), std::int64_t(kMaxTimeLimit)));
    return std::optional<double>{s};
}

Result<void> check_message(const Headers& headers, std::size_t body_size, std::size_t max_body) {
    if (body_size > max_body) {
        return fail(Errc::malformed, fmt::format("body of {} bytes exceeds the limit of {} bytes",
                                                 body_size, max_body));
    }
    if (!headers.is_table()) return fail(Errc::malformed, "headers are not a table");
    if (headers.too_deep())
        return fail(Errc::malformed,
                    fmt::format("headers nest deeper than {} levels", detail::kMaxJsonDepth));
    return {};
}

/// The body of a message whose `compression` header says zlib (Celery's "gzip": kombu writes a
/// zlib stream under application/x-gzip), inflated to at most `max_body` bytes; nullopt when
/// the message is not compressed.
Result<std::optional<std::string>> inflated_body(const Headers& headers, std::string_view body,
                                                 std::size_t max_body) {
    auto comp = headers.find("compression");
    if (!comp || comp->kind == Kind::null) return std::optional<std::string>();
    static const std::vector<std::string_view> zlib_names = {"application/x-gzip",
                                                             "application/zlib", "gzip", "zlib"};
    if (comp->kind != Kind::string ||
        std::find(zlib_names.begin(), zlib_names.end(), comp->text) == zlib_names.end())
        return fail(Errc::malformed, fmt::format("unsupported compression {}",
                                                 detail::dump_lossy(headers.json("compression"))));
    z_stream zs{};
    if (inflateInit2(&zs, 15 + 32) != Z_OK)  // zlib or gzip, detected from the header
        return fail(Errc::internal, "zlib could not start");
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(body.data()));
    zs.avail_in = uInt(body.size());
    std::string out;
    char buf[16384];
    int rc = Z_OK;
    while (rc == Z_OK) {
        zs.next_out = reinterpret_cast<Bytef*>(buf);
        zs.avail_out = sizeof buf;
        rc = inflate(&zs, Z_NO_FLUSH);
        out.append(buf, sizeof buf - zs.avail_out);
        if (out.size() > max_body) {
            inflateEnd(&zs);
            return fail(Errc::malformed,
                        fmt::format("compressed body exceeds the limit of {} bytes", max_body));
        }
        if (rc == Z_BUF_ERROR && zs.avail_in == 0) break;
    }
    inflateEnd(&zs);
    if (rc != Z_STREAM_END)
        return fail(Errc::malformed, "compressed body is not a valid zlib stream");
    return std::optional<std::string>(std::move(out));
}

/// Celery's headers, read into TaskMessage fields; any other header is kept as an extra.
bool known_header(std::string_view key) {
    // (Compared in turn, mostly by length alone: cheaper than hashing each of a task's headers.)
    static constexpr std::array<std::string_view, 17> kKnown = {
        "lang",     "task",        "id",      "shadow",        "eta",        "expires",
        "group",    "group_index", "retries", "timelimit",     "root_id",    "parent_id",
        "argsrepr", "kwargsrepr",  "origin",  "ignore_result", "max_retries"};
    return std::find(kKnown.begin(), kKnown.end(), key) != kKnown.end();
}

}  // namespace

std::string value_repr(const Json& value) { return repr(value); }

std::string args_repr(const Json& args) {
    if (!args.is_array()) return repr(args);
    std::string out = "(";
    for (std::size_t i = 0; i < args.size(); ++i) out += (i ? ", " : "") + repr(args[i]);
    if (args.size() == 1) out += ",";
    return out + ")";
}

std::string kwargs_repr(const Json& kwargs) {
    if (!kwargs.is_object()) return repr(kwargs);
    std::string out = "{";
    bool first = true;
    for (auto& [k, v] : kwargs.items()) {
        out += (first ? "'" : ", '") + k + "': " + repr(v);
        first = false;
    }
    return out + "}";
}

std::string envelope_id(const Envelope& env) {
    if (env.headers.is_object()) {
        auto it = env.headers.find("id");
        if (it != env.headers.end() && it->is_string() &&
            !it->get_ref<const std::string&>().empty())
            return it->get<std::string>();
    }
    return env.correlation_id;
}

Envelope encode(const TaskMessage& t) {
    Envelope env;
    env.content_type = std::string(kJson);
    env.content_encoding = "utf-8";
    env.correlation_id = t.correlation_id.empty() ? t.id : t.correlation_id;
    env.reply_to = t.reply_to;
    env.priority = t.priority;
    Json h = Json::object();
    // Celery's header set, without the headers that would be null (shadow, eta, expires, group,
    // group_index, parent_id, timelimit [null, null]): Celery reads a missing one as null, and
    // RabbitMQ spends less on each message (10-15% of its CPU per task in the benchmark).
    h["lang"] = "py";
    h["task"] = t.name;
    h["id"] = t.id;
    if (t.eta) h["eta"] = time_or_null(t.eta);
    if (t.expires) h["expires"] = time_or_null(t.expires);
    if (!t.group.empty()) h["group"] = t.group;
    if (t.group_index) h["group_index"] = *t.group_index;
    h["retries"] = t.retries;
    if (t.time_limit || t.soft_time_limit)
        h["timelimit"] = Json::array({opt_or_null(t.time_limit), opt_or_null(t.soft_time_limit)});
    h["root_id"] = t.root_id.empty() ? t.id : t.root_id;
    if (!t.parent_id.empty()) h["parent_id"] = t.parent_id;
    h["argsrepr"] = bounded_repr(args_repr(t.args));
    h["kwargsrepr"] = bounded_repr(kwargs_repr(t.kwargs));
    h["origin"] = t.origin.empty() ? Json("conveyor") : Json(t.origin);
    h["ignore_result"] = t.ignore_result;
    if (t.max_retries) h["max_retries"] = *t.max_retries;
    if (t.extra_headers.is_object()) {
        for (auto& [k, v] : t.extra_headers.items()) h.emplace(k, v);
    }
    env.headers = std::move(h);
    env.body = encode_body(t);
    return env;
}

std::string encode_body(const TaskMessage& t) {
    // [args, kwargs, embed], each written where it is (no copy of the arguments' trees).
    std::string body = "[";
    auto write = [&](const Json& v) {
        body += v.dump(-1, ' ', false, Json::error_handler_t::replace);
    };
    write(t.args);
    body += ',';
    write(t.kwargs);
    body += ',';
    static constexpr std::array<const char*, 4> kEmbedKeys = {"callbacks", "chain", "chord",
                                                              "errbacks"};
    const bool whole =
        t.embed.is_object() && std::all_of(kEmbedKeys.begin(), kEmbedKeys.end(),
                                           [&](const char* k) { return t.embed.contains(k); });
    if (!t.embed.is_object() || t.embed.empty()) {
        body += R"({"callbacks":null,"chain":null,"chord":null,"errbacks":null})";
    } else if (whole) {
        write(t.embed);
    } else {
        Json embed = t.embed;
        for (const char* k : kEmbedKeys)
            if (!embed.contains(k)) embed[k] = nullptr;
        write(embed);
    }
    body += ']';
    return body;
}

bool is_null_header(const Json& v) {
    return v.is_null() ||
           (v.is_array() && !v.empty() &&  // timelimit [null, null]
            std::all_of(v.begin(), v.end(), [](const Json& x) { return x.is_null(); }));
}

void write_headers(const TaskMessage& t, HeaderWriter& to, bool nulls) {
    // encode's header set in its JSON object's key order (byte order), merged with the extra
    // headers (a sorted map too; a name encode sets itself is not taken from them).
    const bool has_extras = t.extra_headers.is_object() && !t.extra_headers.empty();
    auto extra = has_extras ? t.extra_headers.begin() : Json::const_iterator{};
    auto extras_end = has_extras ? t.extra_headers.end() : Json::const_iterator{};
    // The extra headers named before `next` (all of them for none).
    auto extras_before = [&](std::optional<std::string_view> next) {
        for (; has_extras && extra != extras_end && (!next || extra.key() < *next); ++extra)
            if (nulls || !is_null_header(extra.value())) to.json(extra.key(), extra.value());
    };
    // A header encode sets: the extra of the same name gives way.
    auto known = [&](std::string_view k) {
        extras_before(k);
        if (has_extras && extra != extras_end && extra.key() == k) ++extra;
        return k;
    };
    // (In byte order: argsrepr, eta, expires, group, group_index, id, ignore_result,
    // kwargsrepr, lang, max_retries, origin, parent_id, retries, root_id, task, timelimit.)
    to.text(known("argsrepr"), bounded_repr(args_repr(t.args)));
    if (t.eta) to.text(known("eta"), detail::format_iso8601(*t.eta));
    if (t.expires) to.text(known("expires"), detail::format_iso8601(*t.expires));
    if (!t.group.empty()) to.text(known("group"), t.group);
    if (t.group_index) to.integer(known("group_index"), *t.group_index);
    to.text(known("id"), t.id);
    to.boolean(known("ignore_result"), t.ignore_result);
    to.text(known("kwargsrepr"), bounded_repr(kwargs_repr(t.kwargs)));
    to.text(known("lang"), "py");
    if (t.max_retries) to.integer(known("max_retries"), *t.max_retries);
    to.text(known("origin"), t.origin.empty() ? std::string_view("conveyor") : t.origin);
    if (!t.parent_id.empty()) to.text(known("parent_id"), t.parent_id);
    to.integer(known("retries"), t.retries);
    to.text(known("root_id"), t.root_id.empty() ? t.id : t.root_id);
    to.text(known("task"), t.name);
    if (t.time_limit || t.soft_time_limit)
        to.json(known("timelimit"),
                Json::array({opt_or_null(t.time_limit), opt_or_null(t.soft_time_limit)}));
    extras_before(std::nullopt);
}

std::string headers_text(const TaskMessage& t) {
    struct Text final : HeaderWriter {
        std::string out = "{";
        void key(std::string_view k) {
            if (out.size() > 1) out += ',';
            detail::append_json_string(out, k);
            out += ':';
        }
        void text(std::string_view k, std::string_view v) override {
            key(k);
            detail::append_json_string(out, v);
        }
        void integer(std::string_view k, std::int64_t v) override {
            key(k);
            out += std::to_string(v);
        }
        void boolean(std::string_view k, bool v) override {
            key(k);
            out += v ? "true" : "false";
        }
        void json(std::string_view k, const Json& v) override {
            key(k);
            out += v.dump(-1, ' ', false, Json::error_handler_t::replace);
        }
    } text;
    write_headers(t, text, false);
    text.out += '}';
    return std::move(text.out);
}

Result<Envelope> encode_raw(const TaskMessage& t, std::string_view queue) {
    if (!t.args.is_array() || t.args.size() != 1 || (t.kwargs.is_object() && !t.kwargs.empty()))
        return fail(
            Errc::invalid_argument,
            fmt::format("'{}' takes raw messages: a task to it carries exactly one argument "
                        "(the message body) and no kwargs",
                        queue));
    Envelope env;
    const Json& payload = t.args[0];
    if (t.body) {
        // The exact bytes of a raw message (forwarded, or given as a body).
        env.body = *t.body;
        env.content_type = !t.content_type.empty()     ? t.content_type
                           : detail::is_utf8(env.body) ? "text/plain"
                                                       : "application/octet-stream";
    } else if (payload.is_string()) {
        env.body = payload.get<std::string>();
        env.content_type = !t.content_type.empty()     ? t.content_type
                           : detail::is_utf8(env.body) ? "text/plain"
                                                       : "application/octet-stream";
    } else {
        env.content_type = std::string(kJson);
        env.body = payload.dump(-1, ' ', false, Json::error_handler_t::replace);
    }
    if (env.content_type.starts_with("text/") || env.content_type == kJson)
        env.content_encoding = "utf-8";
    env.correlation_id = t.id;
    env.reply_to = t.reply_to;
    env.priority = t.priority;
    if (t.eta) env.headers["eta"] = detail::format_iso8601(*t.eta);
    return env;
}

bool as_decoded(TaskMessage& t) {
    auto counted = [](std::optional<int> v) { return !v || (*v >= 0 && *v <= kMaxRetries); };
    auto limit = [](std::optional<double> v) { return !v || (*v >= 0 && *v <= kMaxTimeLimit); };
    if (!counted(t.retries) || !counted(t.max_retries) || !counted(t.group_index) ||
        !limit(t.time_limit) || !limit(t.soft_time_limit))
        return false;
    if (!t.extra_headers.is_object()) {
        t.extra_headers = Json::object();
    } else if (!t.extra_headers.empty()) {
        if (detail::json_depth(t.extra_headers) > detail::kMaxJsonDepth) return false;
        for (auto it = t.extra_headers.begin(); it != t.extra_headers.end();)
            it = known_header(it.key()) ? t.extra_headers.erase(it) : std::next(it);
    }
    if (!t.embed.is_object()) t.embed = Json::object();
    if (t.root_id.empty()) t.root_id = t.id;
    if (t.correlation_id.empty()) t.correlation_id = t.id;
    t.body.reset();
    t.content_type.clear();
    return true;
}

namespace {

/// decode(MessageView); `inflated`: the body was compressed, and is now as it was before, so
/// the `compression` header is neither read again nor kept.
Result<TaskMessage> decode_message(const MessageView& m, std::size_t max_body, bool inflated) {
    const Headers& h = m.headers;
    CONVEYOR_TRY(check_message(h, m.body.size(), max_body));
    if (!inflated) {
        auto plain = inflated_body(h, m.body, max_body);
        CONVEYOR_TRY(plain);
        if (*plain) {
            MessageView again = m;
            again.body = **plain;
            return decode_message(again, max_body, true);
        }
    }
    if (m.content_type.empty())
        return fail(Errc::malformed, "message has no content_type (expected application/json)");
    if (m.content_type != kJson) {
        return fail(Errc::malformed,
                    fmt::format("unsupported content_type '{}' (expected application/json)",
                                m.content_type.substr(0, 64)));
    }
    // Protocol 2 (a task header) with a well-formed body: its parts read straight into the
    // task; anything else parsed whole, and checked below.
    std::optional<detail::TaskBody> parts;
    if (h.find("task")) parts = detail::parse_task_body(m.body);
    Json body;
    if (!parts) {
        auto parsed = detail::parse_untrusted(m.body, "body");
        CONVEYOR_TRY(parsed);
        body = std::move(*parsed);
    }
    TaskMessage t = parts ? TaskMessage{.args = std::move(parts->args),
                                        .kwargs = std::move(parts->kwargs),
                                        .embed = std::move(parts->embed)}
                          : TaskMessage{};
    bool v1 = !parts && !h.find("task") && body.is_object() && body.contains("task");
    if (v1) {
        // Protocol v1: everything in the body.
        if (!body["task"].is_string() || !body.contains("id") || !body["id"].is_string())
            return fail(Errc::malformed, "protocol v1 body lacks string 'task' and 'id'");
        t.name = body["task"].get<std::string>();
        t.id = body["id"].get<std::string>();
        t.args = body.value("args", Json::array());
        t.kwargs = body.value("kwargs", Json::object());
        if (!t.args.is_array()) return fail(Errc::malformed, "protocol v1 'args' is not an array");
        if (!t.kwargs.is_object())
            return fail(Errc::malformed, "protocol v1 'kwargs' is not an object");
        const JsonHeaders fields(body);
        auto retries = header_int(fields, "retries", 0, kMaxRetries);
        CONVEYOR_TRY(retries);
        t.retries = int(retries->value_or(0));
        auto eta = header_time(fields, "eta");
        CONVEYOR_TRY(eta);
        t.eta = *eta;
        auto exp = header_time(fields, "expires");
        CONVEYOR_TRY(exp);
        t.expires = *exp;
    } else {
        auto task = h.find("task");
        if (!task) return fail(Errc::malformed, "header 'task' is missing");
        if (task->kind != Kind::string || task->text.empty())
            return fail(Errc::malformed, "header 'task' is not a non-empty string");
        t.name = std::string(task->text);
        auto id = h.find("id");
        if (!id || id->kind != Kind::string || id->text.empty())
            return fail(Errc::malformed, "header 'id' is missing or not a non-empty string");
        t.id = std::string(id->text);
        if (!parts) {  // (else read and checked by parse_task_body)
            if (!body.is_array())
                return fail(Errc::malformed, "body is not a JSON array [args, kwargs, embed]");
            if (body.size() != 3) {
                return fail(Errc::malformed,
                            fmt::format("body has {} elements, expected 3 [args, kwargs, embed]",
                                        body.size()));
            }
            if (!body[0].is_array())
                return fail(Errc::malformed, "args (body[0]) is not a JSON array");
            if (!body[1].is_object())
                return fail(Errc::malformed, "kwargs (body[1]) is not a JSON object");
            if (!body[2].is_object() && !body[2].is_null())
                return fail(Errc::malformed, "embed (body[2]) is not a JSON object");
            t.args = std::move(body[0]);
            t.kwargs = std::move(body[1]);
            if (body[2].is_object() && !detail::is_empty_embed(body[2]))
                t.embed = std::move(body[2]);
        }

        auto retries = header_int(h, "retries", 0, kMaxRetries);
        CONVEYOR_TRY(retries);
        t.retries = int(retries->value_or(0));
        auto max_retries = header_int(h, "max_retries", 0, kMaxRetries);
        CONVEYOR_TRY(max_retries);
        if (*max_retries) t.max_retries = int(**max_retries);
        auto eta = header_time(h, "eta");
        CONVEYOR_TRY(eta);
        t.eta = *eta;
        auto exp = header_time(h, "expires");
        CONVEYOR_TRY(exp);
        t.expires = *exp;
        if (auto tl = h.find("timelimit"); tl && tl->kind != Kind::null) {
            Json limits = h.json("timelimit");
            if (!limits.is_array() || limits.size() != 2)
                return fail(Errc::malformed, "header 'timelimit' is not [hard, soft]");
            auto hard = as_limit(limits[0], "hard");
            CONVEYOR_TRY(hard);
            auto soft = as_limit(limits[1], "soft");
            CONVEYOR_TRY(soft);
            t.time_limit = *hard;
            t.soft_time_limit = *soft;
        }
        for (auto [field, key] :
             {std::pair{&t.root_id, "root_id"}, std::pair{&t.parent_id, "parent_id"},
              std::pair{&t.group, "group"}, std::pair{&t.origin, "origin"}}) {
            auto v = header_string(h, key);
            CONVEYOR_TRY(v);
            *field = std::move(*v);
        }
        auto group_index = header_int(h, "group_index", 0, kMaxRetries);
        CONVEYOR_TRY(group_index);
        if (*group_index) t.group_index = int(**group_index);
        if (auto ir = h.find("ignore_result"); ir && ir->kind == Kind::boolean)
            t.ignore_result = ir->boolean;
        h.names([&](std::string_view k) {
            if (!known_header(k) && !(inflated && k == "compression"))
                t.extra_headers[std::string(k)] = h.json(k);
        });
    }
    if (t.root_id.empty()) t.root_id = t.id;
    t.priority = m.priority;
    t.reply_to = std::string(m.reply_to);
    t.correlation_id = m.correlation_id.empty() ? t.id : std::string(m.correlation_id);
    return t;
}

}  // namespace

std::optional<HeaderValue> JsonHeaders::find(std::string_view key) const {
    if (!json_.is_object()) return std::nullopt;
    auto it = json_.find(key);
    if (it == json_.end()) return std::nullopt;
    HeaderValue v;
    switch (it->type()) {
        case Json::value_t::null:
            break;
        case Json::value_t::boolean:
            v.kind = Kind::boolean;
            v.boolean = it->get<bool>();
            break;
        case Json::value_t::number_integer:
            v.kind = Kind::integer;
            v.integer = it->get<std::int64_t>();
            break;
        case Json::value_t::number_unsigned:
            v.kind = Kind::unsigned_integer;
            v.unsigned_integer = it->get<std::uint64_t>();
            break;
        case Json::value_t::number_float:
            v.kind = Kind::real;
            v.real = it->get<double>();
            break;
        case Json::value_t::string:
            v.kind = Kind::string;
            v.text = it->get_ref<const std::string&>();
            break;
        default:
            v.kind = Kind::other;
            break;
    }
    return v;
}

Json JsonHeaders::json(std::string_view key) const {
    if (!json_.is_object()) return Json();
    auto it = json_.find(key);
    return it == json_.end() ? Json() : *it;
}

void JsonHeaders::names(const std::function<void(std::string_view)>& each) const {
    if (!json_.is_object()) return;
    for (auto& [k, _] : json_.items()) each(k);
}

bool JsonHeaders::is_table() const { return json_.is_object() || json_.is_null(); }

bool JsonHeaders::too_deep() const { return detail::json_depth(json_) > detail::kMaxJsonDepth; }

Result<TaskMessage> decode(const MessageView& message, std::size_t max_body) {
    return decode_message(message, max_body, false);
}

Result<TaskMessage> decode(const Envelope& env, std::size_t max_body) {
    const JsonHeaders headers(env.headers);
    return decode(MessageView{.content_type = env.content_type,
                              .correlation_id = env.correlation_id,
                              .reply_to = env.reply_to,
                              .priority = env.priority,
                              .headers = headers,
                              .body = env.body},
                  max_body);
}

Result<TaskMessage> decode_raw(const Envelope& env, std::string_view task_name,
                               std::string_view fallback_id, std::size_t max_body) {
    const JsonHeaders h(env.headers);
    CONVEYOR_TRY(check_message(h, env.body.size(), max_body));
    auto plain = inflated_body(h, env.body, max_body);
    CONVEYOR_TRY(plain);
    if (*plain) {
        Envelope inflated = env;
        inflated.body = std::move(**plain);
        inflated.headers.erase("compression");
        return decode_raw(inflated, task_name, fallback_id, max_body);
    }
    if (task_name.empty()) return fail(Errc::malformed, "raw queue has no task name configured");
    TaskMessage t;
    t.name = std::string(task_name);
    t.id = envelope_id(env);
    if (t.id.empty()) t.id = std::string(fallback_id);
    // The payload: JSON when the body is JSON and not said to be something else, text as a
    // string, other bytes as a string of those bytes; the exact body is kept beside it.
    const bool said_other = !env.content_type.empty() && env.content_type != kJson &&
                            !env.content_type.ends_with("+json");
    Json payload;
    bool parsed = false;
    if (!said_other) {
        if (detail::json_text_depth(env.body) > detail::kMaxJsonDepth)
            return fail(Errc::malformed,
                        fmt::format("raw body nests deeper than {} levels", detail::kMaxJsonDepth));
        payload = detail::parse_json(env.body);
        parsed = !payload.is_discarded();
    }
    if (!parsed) payload = env.body;
    t.body = env.body;
    t.content_type = env.content_type;
    t.args = Json::array({std::move(payload)});
    if (auto r = header_int(h, "retries", 0, kMaxRetries); r && *r) t.retries = int(**r);
    auto eta = header_time(h, "eta");
    if (eta) t.eta = *eta;
    t.root_id = t.id;
    t.priority = env.priority;
    t.reply_to = env.reply_to;
    t.correlation_id = env.correlation_id.empty() ? t.id : env.correlation_id;
    return t;
}

}  // namespace conveyor::codec
