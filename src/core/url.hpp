#pragma once
// Broker URL parsing.

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "conveyor/error.hpp"

namespace conveyor::detail {

struct BrokerUrl {
    std::string scheme;                        ///< "memory", "sqlite", "amqp", "amqps"
    std::string rest;                          ///< what follows "scheme://", without the query
    std::map<std::string, std::string> query;  ///< ?key=value&...
};

Result<BrokerUrl> parse_broker_url(std::string_view url);

/// %XX escapes decoded (a '%' without two hex digits after it stays as it is).
std::string percent_decode(std::string_view text);

/// The USER:PASSWORD@HOST:PORT part of a URL (the text between "scheme://" and the path).
struct Authority {
    std::string user;           ///< percent-decoded
    std::string password;       ///< percent-decoded
    bool has_password = false;  ///< a ':' set a password apart (it may be empty)
    std::string host;           ///< empty when none was given
    std::optional<int> port;    ///< after the last ':' (not one inside an IPv6 "[...]")
};
/// Splits an authority; a port that is not 1..65535 is an Errc::invalid_argument sentence that
/// starts with `what` (e.g. "amqp URL").
Result<Authority> parse_authority(std::string_view text, std::string_view what);

/// `url` with every password replaced by "***", for printing: the broker's own
/// (`amqp://u:***@h`), one inside an option (`?results=redis://:***@h`), each of a failover
/// list (`;`). Nothing else changes.
std::string redact_url(std::string_view url);

/// Where an HTTP listener binds: "HOST:PORT", "[V6]:PORT", ":PORT" or "PORT" (host
/// 127.0.0.1); port 0 picks a free one.
struct ListenAddress {
    std::string host = "127.0.0.1";
    int port = 0;
};
[[nodiscard]] Result<ListenAddress> parse_listen_address(std::string_view text);

/// A number of seconds given as a URL option (`engine` option `key`=`value`), within
/// [min, max]; one sentence naming the option and the range otherwise (NaN is refused).
Result<std::chrono::milliseconds> seconds_option(std::string_view engine, std::string_view key,
                                                 std::string_view value, double min, double max);

}  // namespace conveyor::detail
