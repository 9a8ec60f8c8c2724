#include "core/url.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>

namespace conveyor::detail {

namespace {

/// Where the authority of a URL whose "://" ends at `from` ends.
std::size_t authority_end(std::string_view url, std::size_t from) {
    auto end = url.find_first_of("/?#;&", from);
    // A percent-encoded nested URL (results=redis%3A%2F%2F...) ends at its encoded slash.
    auto encoded = url.find("%2F", from);
    if (auto lower = url.find("%2f", from); lower < encoded) encoded = lower;
    return std::min(end == std::string_view::npos ? url.size() : end,
                    encoded == std::string_view::npos ? url.size() : encoded);
}

}  // namespace

std::string redact_url(std::string_view url) {
    std::string out;
    std::size_t pos = 0;
    for (;;) {
        std::size_t sep = url.find("://", pos);
        std::size_t sep_len = 3;
        for (std::string_view enc : {"%3A%2F%2F", "%3a%2f%2f"})
            if (auto e = url.find(enc, pos); e < sep) {
                sep = e;
                sep_len = enc.size();
            }
        if (sep == std::string_view::npos) break;
        std::size_t start = sep + sep_len;
        std::size_t end = authority_end(url, start);
        std::string_view authority = url.substr(start, end - start);
        out.append(url.substr(pos, start - pos));
        auto at = authority.rfind('@');
        if (at == std::string_view::npos) at = authority.rfind("%40");
        auto colon = authority.substr(0, at == std::string_view::npos ? 0 : at).find(':');
        if (at != std::string_view::npos && colon == std::string_view::npos)
            colon = authority.substr(0, at).find("%3A");
        if (at != std::string_view::npos && colon != std::string_view::npos) {
            std::size_t colon_len = authority[colon] == ':' ? 1 : 3;
            out.append(authority.substr(0, colon + colon_len));
            out.append("***");
            out.append(authority.substr(at));
        } else {
            out.append(authority);
        }
        pos = end;
    }
    out.append(url.substr(pos));
    return out;
}

Result<std::chrono::milliseconds> seconds_option(std::string_view engine, std::string_view key,
                                                 std::string_view value, double min, double max) {
    std::string text(value);
    char* end = nullptr;
    double s = text.empty() ? std::nan("") : std::strtod(text.c_str(), &end);
    if (text.empty() || end != text.c_str() + text.size() || !(s >= min && s <= max))
        return fail(Errc::invalid_argument,
                    fmt::format("{} option {}={} must be a number of seconds from {} to {}", engine,
                                key, value, min, max));
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(s * 1000.0)));
}

std::string percent_decode(std::string_view s) {
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size()) {
            int hi = hex(s[i + 1]), lo = hex(s[i + 2]);
            if (hi >= 0 && lo >= 0) {
                out += char(hi * 16 + lo);
                i += 2;
                continue;
            }
        }
        out += s[i];
    }
    return out;
}

Result<Authority> parse_authority(std::string_view rest, std::string_view what) {
    Authority a;
    if (auto at = rest.rfind('@'); at != std::string_view::npos) {
        std::string_view cred = rest.substr(0, at);
        rest = rest.substr(at + 1);
        auto colon = cred.find(':');
        a.user = percent_decode(cred.substr(0, colon));
        a.has_password = colon != std::string_view::npos;
        if (a.has_password) a.password = percent_decode(cred.substr(colon + 1));
    }
    auto colon = rest.rfind(':');
    auto bracket = rest.rfind(']');
    if (colon != std::string_view::npos && (bracket == std::string_view::npos || colon > bracket)) {
        std::string_view p = rest.substr(colon + 1);
        int port = 0;
        auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
        if (ec != std::errc() || end != p.data() + p.size() || port <= 0 || port > 65535)
            return fail(Errc::invalid_argument,
                        fmt::format("{} port '{}' is not a port number", what, p));
        a.port = port;
        rest = rest.substr(0, colon);
    }
    a.host = std::string(rest);
    return a;
}

Result<BrokerUrl> parse_broker_url(std::string_view url) {
    auto sep = url.find("://");
    if (sep == std::string_view::npos || sep == 0) {
        return fail(Errc::invalid_argument,
                    fmt::format("broker URL '{}' has no scheme; use sqlite://PATH, memory:// or "
                                "amqp://HOST",
                                redact_url(url)));
    }
    BrokerUrl out;
    out.scheme = std::string(url.substr(0, sep));
    std::string_view rest = url.substr(sep + 3);
    auto q = rest.find('?');
    if (q != std::string_view::npos) {
        std::string_view query = rest.substr(q + 1);
        rest = rest.substr(0, q);
        while (!query.empty()) {
            auto amp = query.find('&');
            std::string_view kv = query.substr(0, amp);
            auto eq = kv.find('=');
            if (eq == std::string_view::npos || eq == 0)
                return fail(Errc::invalid_argument,
                            fmt::format("broker URL '{}' has a malformed query", redact_url(url)));
            out.query[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
            if (amp == std::string_view::npos) break;
            query = query.substr(amp + 1);
        }
    }
    out.rest = std::string(rest);
    return out;
}

Result<ListenAddress> parse_listen_address(std::string_view text) {
    auto bad = [&](std::string_view why) {
        return fail(
            Errc::invalid_argument,
            fmt::format("listen address '{}' {}: give HOST:PORT, like 127.0.0.1:9808", text, why));
    };
    ListenAddress a;
    std::string_view port = text;
    if (auto colon = text.rfind(':'); colon != std::string_view::npos) {
        std::string_view host = text.substr(0, colon);
        port = text.substr(colon + 1);
        if (host.starts_with('[')) {
            if (!host.ends_with(']') || host.size() < 3) return bad("has a broken [IPv6] host");
            host = host.substr(1, host.size() - 2);
        } else if (host.find(':') != std::string_view::npos) {
            return bad("has an IPv6 host without brackets");
        }
        if (!host.empty()) a.host = std::string(host);
    }
    int p = -1;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p < 0 || p > 65535)
        return bad("has no port from 0 to 65535");
    for (char c : a.host)
        if (c == '/' || c == ' ' || c == '@') return bad("has a host that is not an address");
    a.port = p;
    return a;
}

}  // namespace conveyor::detail
