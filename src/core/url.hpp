#pragma once
// Broker URL parsing.

#include <chrono>
#include <map>
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

/// `url` with every password replaced by "***", for printing: the broker's own
/// (`amqp://u:***@h`), one inside an option (`?results=redis://:***@h`), each of a failover
/// list (`;`). Nothing else changes.
std::string redact_url(std::string_view url);

/// A number of seconds given as a URL option (`engine` option `key`=`value`), within
/// [min, max]; one sentence naming the option and the range otherwise (NaN is refused).
Result<std::chrono::milliseconds> seconds_option(std::string_view engine, std::string_view key,
                                                 std::string_view value, double min, double max);

}  // namespace conveyor::detail
