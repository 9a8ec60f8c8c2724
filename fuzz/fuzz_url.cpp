// Broker and result-store URLs: parsed, redacted (a password is never printed) and split into
// a failover list; listen addresses (--http, dashboard --listen).
#include <cstddef>
#include <cstdint>
#include <string>

#include "broker/amqp/amqp_connection.hpp"
#include "core/url.hpp"
#include "results/redis_results.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string url(reinterpret_cast<const char*>(data), size);
    (void)conveyor::detail::redact_url(url);
    if (auto u = conveyor::detail::parse_broker_url(url)) (void)u->scheme;
    (void)conveyor::amqp::parse_connection_options(url);
    (void)conveyor::results::parse_redis_url(url);
    if (auto a = conveyor::detail::parse_listen_address(url))
        if (a->port < 0 || a->port > 65535 || a->host.empty()) __builtin_trap();
    // A password set in a URL never survives redaction.
    std::string with = "amqp://user:S3cretPw@host/" + url;
    if (conveyor::detail::redact_url(with).find("S3cretPw") != std::string::npos) __builtin_trap();
    return 0;
}
