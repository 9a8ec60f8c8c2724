#include "conveyor/limits.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cmath>

#include "core/json_bounds.hpp"
#include "core/try.hpp"

namespace conveyor {

namespace {

constexpr double kMaxRate = 1e6;                // per second: one start a microsecond
constexpr double kMinRate = 1.0 / (7 * 86400);  // per second: one start a week
constexpr std::size_t kMaxKeyBytes = 200;

}  // namespace

Result<double> parse_rate(std::string_view text) {
    auto bad = [&] {
        return fail(
            Errc::invalid_argument,
            fmt::format("rate limit '{}' is not N/s, N/m or N/h (N a number from 0)", text));
    };
    if (text.empty()) return 0.0;
    auto slash = text.find('/');
    std::string_view n = text.substr(0, slash);
    double per = 1;
    if (slash != std::string_view::npos) {
        auto unit = text.substr(slash + 1);
        if (unit == "s")
            per = 1;
        else if (unit == "m")
            per = 60;
        else if (unit == "h")
            per = 3600;
        else
            return bad();
    }
    double v = 0;
    auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), v);
    if (ec != std::errc{} || end != n.data() + n.size() || !std::isfinite(v) || v < 0) return bad();
    double rate = v / per;
    if (rate > kMaxRate)
        return fail(Errc::invalid_argument,
                    fmt::format("rate limit '{}' is above 1000000/s", text));
    return rate;
}

std::string format_rate(double per_second) {
    if (per_second <= 0) return "0";
    auto whole = [](double v) { return std::abs(v - std::round(v)) < 1e-9 * std::max(1.0, v); };
    if (whole(per_second)) return fmt::format("{}/s", std::llround(per_second));
    if (whole(per_second * 60)) return fmt::format("{}/m", std::llround(per_second * 60));
    if (whole(per_second * 3600)) return fmt::format("{}/h", std::llround(per_second * 3600));
    return fmt::format("{:.6g}/s", per_second);
}

std::string describe_limit(const TaskLimit& l) {
    std::string out;
    if (l.rate > 0) out = format_rate(l.rate);
    if (l.max_concurrency > 0)
        out += fmt::format("{}at most {} running", out.empty() ? "" : ", ", l.max_concurrency);
    if (out.empty()) return "no limit";
    if (!l.key.empty()) out += fmt::format(", per {}", l.key);
    return out;
}

Json limit_json(const LimitStats& x) {
    return Json{
        {"task", x.limit.task},
        {"rate", x.limit.rate > 0 ? Json(format_rate(x.limit.rate)) : Json()},
        {"max_concurrency", x.limit.max_concurrency > 0 ? Json(x.limit.max_concurrency) : Json()},
        {"key", x.limit.key.empty() ? Json() : Json(x.limit.key)},
        {"waiting", x.waiting},
        {"running", x.running}};
}

Result<void> check_limit(const TaskLimit& limit) {
    if (limit.task.empty()) return fail(Errc::invalid_argument, "a limit needs a task name");
    if (!std::isfinite(limit.rate) || limit.rate < 0 || limit.max_concurrency < 0)
        return fail(Errc::invalid_argument,
                    fmt::format("task '{}': a limit is not below 0", limit.task));
    if (limit.rate > kMaxRate)
        return fail(Errc::invalid_argument,
                    fmt::format("task '{}': a rate limit is at most 1000000/s", limit.task));
    if (limit.rate > 0 && limit.rate < kMinRate)
        return fail(Errc::invalid_argument,
                    fmt::format("task '{}': a rate limit is at least one start a week "
                                "(0.006/h); 0 is no limit",
                                limit.task));
    if (!limit.key.empty()) CONVEYOR_TRY(parse_limit_key(limit.key));
    return {};
}

Result<void> parse_limit_key(std::string_view key) {
    auto bad = [&] {
        return fail(Errc::invalid_argument,
                    fmt::format("limit key '{}' is not kwargs.NAME or args.N", key));
    };
    if (key.starts_with("kwargs.")) {
        if (key.size() == 7) return bad();
        return {};
    }
    if (key.starts_with("args.")) {
        auto n = key.substr(5);
        unsigned i = 0;
        auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), i);
        if (n.empty() || ec != std::errc{} || end != n.data() + n.size()) return bad();
        return {};
    }
    return bad();
}

std::string limit_key_of_body(std::string_view key, std::string_view body) {
    auto parsed = detail::parse_untrusted(body, "the body");
    Json args = Json::array(), kwargs = Json::object();
    if (!parsed) {
        args.push_back(std::string(body));
    } else if (parsed->is_array() && parsed->size() >= 2 && (*parsed)[0].is_array() &&
               (*parsed)[1].is_object()) {
        args = std::move((*parsed)[0]);
        kwargs = std::move((*parsed)[1]);
    } else if (parsed->is_object() && (parsed->contains("args") || parsed->contains("kwargs"))) {
        if (auto a = parsed->find("args"); a != parsed->end() && a->is_array()) args = *a;
        if (auto k = parsed->find("kwargs"); k != parsed->end() && k->is_object()) kwargs = *k;
    } else {
        args.push_back(std::move(*parsed));
    }
    return limit_key_of(key, args, kwargs);
}

std::string limit_key_of(std::string_view key, const Json& args, const Json& kwargs) {
    const Json* v = nullptr;
    if (key.starts_with("kwargs.")) {
        if (kwargs.is_object()) {
            auto it = kwargs.find(std::string(key.substr(7)));
            if (it != kwargs.end()) v = &*it;
        }
    } else if (key.starts_with("args.")) {
        auto n = key.substr(5);
        std::size_t i = 0;
        auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), i);
        if (ec == std::errc{} && args.is_array() && i < args.size()) v = &args[i];
    }
    if (!v || v->is_null()) return {};
    std::string s = v->is_string() ? v->get<std::string>()
                                   : v->dump(-1, ' ', false, Json::error_handler_t::replace);
    if (s.size() > kMaxKeyBytes) {
        std::size_t cut = kMaxKeyBytes;
        while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
        s.resize(cut);
    }
    return s;
}

}  // namespace conveyor
