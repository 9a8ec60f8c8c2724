#pragma once
// Broker URL parsing.

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

}  // namespace conveyor::detail
