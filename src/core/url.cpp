#include "core/url.hpp"

#include <fmt/format.h>

namespace conveyor::detail {

Result<BrokerUrl> parse_broker_url(std::string_view url) {
    auto sep = url.find("://");
    if (sep == std::string_view::npos || sep == 0) {
        return fail(
            Errc::invalid_argument,
            fmt::format(
                "broker URL '{}' has no scheme; use sqlite://PATH, memory:// or amqp://HOST", url));
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
                            fmt::format("broker URL '{}' has a malformed query", url));
            out.query[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
            if (amp == std::string_view::npos) break;
            query = query.substr(amp + 1);
        }
    }
    out.rest = std::string(rest);
    return out;
}

}  // namespace conveyor::detail
