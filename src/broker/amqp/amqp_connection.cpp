#include "broker/amqp/amqp_connection.hpp"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <vector>

#include "broker/amqp/amqp_names.hpp"
#include "core/try.hpp"

namespace conveyor::amqp {

namespace {

bool is_ip_literal(const std::string& host) {
    unsigned char buf[sizeof(in6_addr)];
    return inet_pton(AF_INET, host.c_str(), buf) == 1 ||
           inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

/// Why a TCP connection to host:port fails ("Connection refused", "timed out", ...):
/// rabbitmq-c reports every such failure as "a socket error occurred".
std::string connect_failure(const std::string& host, int port, std::chrono::milliseconds timeout) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res); rc != 0)
        return fmt::format("cannot resolve '{}': {}", host, gai_strerror(rc));
    std::string why = "a socket error occurred";
    for (auto* a = res; a; a = a->ai_next) {
        int fd =
            ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        int err = 0;
        if (::connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            err = errno;
            if (err == EINPROGRESS) {
                pollfd p{fd, POLLOUT, 0};
                int n = ::poll(&p, 1, int(timeout.count()));
                socklen_t len = sizeof err;
                if (n == 0)
                    err = ETIMEDOUT;
                else if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                    err = errno;
            }
        }
        ::close(fd);
        if (err == 0) {
            why = "the connection was closed as it opened";
            break;
        }
        why = err == ETIMEDOUT ? fmt::format("no answer within the connect timeout of {} s",
                                             timeout.count() / 1000.0)
                               : std::string(std::strerror(err));
        for (auto& c : why) c = char(std::tolower(static_cast<unsigned char>(c)));
    }
    freeaddrinfo(res);
    return why;
}

timeval to_timeval(std::chrono::milliseconds ms) {
    if (ms.count() < 0) ms = std::chrono::milliseconds(0);
    return timeval{time_t(ms.count() / 1000), suseconds_t((ms.count() % 1000) * 1000)};
}

Errc errc_of_reply_code(int code) {
    switch (code) {
        case 404:
            return Errc::not_found;
        case 405:  // RESOURCE_LOCKED: an exclusive queue of another connection
        case 406:  // PRECONDITION_FAILED: exists with other arguments
            return Errc::conflict;
        case 403:  // ACCESS_REFUSED
        case 530:  // NOT_ALLOWED (e.g. unknown vhost)
            return Errc::invalid_argument;
        default:
            return Errc::unavailable;
    }
}

}  // namespace

std::string url_decode(std::string_view s) { return detail::percent_decode(s); }

Result<ConnectionOptions> parse_connection_options(const detail::BrokerUrl& url) {
    ConnectionOptions o;
    o.tls = url.scheme == "amqps";
    o.port = o.tls ? 5671 : 5672;
    std::string_view rest = url.rest;
    std::string_view path;
    if (auto slash = rest.find('/'); slash != std::string_view::npos) {
        path = rest.substr(slash + 1);
        rest = rest.substr(0, slash);
    }
    auto authority = detail::parse_authority(rest, "amqp URL");
    CONVEYOR_TRY(authority);
    o.user = std::move(authority->user);
    o.password = std::move(authority->password);
    if (authority->port) o.port = *authority->port;
    if (!authority->host.empty()) o.host = std::move(authority->host);
    // "amqp://host" and "amqp://host/" mean the default vhost "/"; "amqp://host/%2F" too.
    o.vhost = path.empty() ? "/" : url_decode(path);
    for (auto& [k, v] : url.query) {
        auto seconds_option = [](const std::string& key, const std::string& value) {
            // Bounded: a timeout of 1e300 seconds would overflow the clock.
            return detail::seconds_option("amqp", key, value, 0, 86400);
        };
        if (k == "heartbeat") {
            auto s = detail::seconds_option("amqp", k, v, 0, 3600);
            CONVEYOR_TRY(s);
            o.heartbeat = int(s->count() / 1000);
        } else if (k == "connect_timeout") {
            auto s = seconds_option(k, v);
            CONVEYOR_TRY(s);
            o.connect_timeout = *s;
        } else if (k == "rpc_timeout") {
            auto s = seconds_option(k, v);
            CONVEYOR_TRY(s);
            o.rpc_timeout = *s;
        } else if (k == "publish_timeout") {
            auto s = seconds_option(k, v);
            CONVEYOR_TRY(s);
            o.publish_timeout = *s;
        } else if (k == "cacert") {
            o.cacert = url_decode(v);
        } else if (k == "cert") {
            o.cert = url_decode(v);
        } else if (k == "key") {
            o.key = url_decode(v);
        } else if (k == "verify") {
            if (v != "true" && v != "false")
                return fail(Errc::invalid_argument,
                            fmt::format("amqp option verify={} must be true or false", v));
            o.verify = v == "true";
        } else if (k == "results") {
            o.results = url_decode(v);
            if (o.results == "rpc://") o.results = "rpc";
            if (o.results != "rpc" && o.results != "none" && !o.results.starts_with("redis://"))
                return fail(Errc::invalid_argument,
                            fmt::format("amqp option results={} must be rpc, none or "
                                        "redis://HOST:PORT/DB",
                                        o.results));
        } else if (k == "result_expires") {
            auto s = detail::seconds_option("amqp", k, v, 1, 10 * 365 * 86400.0);
            CONVEYOR_TRY(s);
            o.result_expires = std::chrono::duration_cast<std::chrono::seconds>(*s);
        } else if (k == "delay_queue_type") {
            if (v != "quorum" && v != "classic")
                return fail(
                    Errc::invalid_argument,
                    fmt::format("amqp option delay_queue_type={} must be quorum or classic", v));
            o.delay_queue_type = v;
        } else if (k == "management") {
            o.management = url_decode(v);
            while (o.management.ends_with('/')) o.management.pop_back();
            if (!o.management.starts_with("http://") || o.management.size() <= 7)
                return fail(Errc::invalid_argument,
                            fmt::format("amqp option management={} must be the management "
                                        "plugin's http://HOST:PORT",
                                        detail::redact_url(o.management)));
        } else {
            return fail(Errc::invalid_argument, fmt::format("unknown amqp broker option '{}'", k));
        }
    }
    if (!o.tls && (!o.cacert.empty() || !o.cert.empty() || !o.key.empty()))
        return fail(Errc::invalid_argument,
                    "amqp options cacert, cert and key need an amqps:// URL");
    if (o.cert.empty() != o.key.empty())
        return fail(Errc::invalid_argument, "amqps options cert and key go together");
    return o;
}

Result<ConnectionOptions> parse_connection_options(std::string_view urls) {
    std::vector<std::string_view> parts;
    for (std::size_t start = 0;;) {
        auto semi = urls.find(';', start);
        auto part = urls.substr(start, semi == std::string_view::npos ? semi : semi - start);
        if (!part.empty()) parts.push_back(part);
        if (semi == std::string_view::npos) break;
        start = semi + 1;
    }
    if (parts.empty()) return fail(Errc::invalid_argument, "the broker URL is empty");
    auto first_url = detail::parse_broker_url(parts[0]);
    CONVEYOR_TRY(first_url);
    auto first = parse_connection_options(*first_url);
    CONVEYOR_TRY(first);
    for (std::size_t i = 1; i < parts.size(); ++i) {
        auto u = detail::parse_broker_url(parts[i]);
        CONVEYOR_TRY(u);
        if (u->scheme != first_url->scheme)
            return fail(Errc::invalid_argument,
                        fmt::format("the failover URLs mix {}:// and {}://; use one scheme",
                                    first_url->scheme, u->scheme));
        if (!u->query.empty() && u->query != first_url->query)
            return fail(Errc::invalid_argument,
                        fmt::format("failover URL {} has other options than the first; options "
                                    "go on the first URL",
                                    i + 1));
        auto o = parse_connection_options(*u);
        CONVEYOR_TRY(o);
        first->failover.push_back(static_cast<const Endpoint&>(*o));
    }
    return first;
}

Error translate(const amqp_rpc_reply_t& r, std::string_view what) {
    switch (r.reply_type) {
        case AMQP_RESPONSE_NORMAL:
            return Error{Errc::internal, fmt::format("{}: no error", what)};
        case AMQP_RESPONSE_NONE:
            return Error{Errc::unavailable, fmt::format("{}: no reply from RabbitMQ", what)};
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            return Error{r.library_error == AMQP_STATUS_TIMEOUT ? Errc::timeout : Errc::unavailable,
                         fmt::format("{}: {}", what, amqp_error_string2(r.library_error))};
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
                auto* m = static_cast<amqp_channel_close_t*>(r.reply.decoded);
                return Error{errc_of_reply_code(m->reply_code),
                             fmt::format("{}: {}", what, to_string(m->reply_text))};
            }
            if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
                auto* m = static_cast<amqp_connection_close_t*>(r.reply.decoded);
                return Error{errc_of_reply_code(m->reply_code),
                             fmt::format("{}: {}", what, to_string(m->reply_text))};
            }
            return Error{Errc::unavailable, fmt::format("{}: unexpected method {:#x} from RabbitMQ",
                                                        what, r.reply.id)};
    }
    return Error{Errc::internal, std::string(what)};
}

amqp_basic_properties_t properties(Pool& pool, const Envelope& e, std::int64_t sent_at_ms) {
    amqp_basic_properties_t p{};
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = 2;  // persistent
    if (!e.content_type.empty()) {
        p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p.content_type = pool.bytes(e.content_type);
    }
    if (!e.content_encoding.empty()) {
        p._flags |= AMQP_BASIC_CONTENT_ENCODING_FLAG;
        p.content_encoding = pool.bytes(e.content_encoding);
    }
    if (!e.correlation_id.empty()) {
        p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        p.correlation_id = pool.bytes(e.correlation_id);
    }
    if (!e.reply_to.empty()) {
        p._flags |= AMQP_BASIC_REPLY_TO_FLAG;
        p.reply_to = pool.bytes(e.reply_to);
    }
    if (e.priority > 0) {
        p._flags |= AMQP_BASIC_PRIORITY_FLAG;
        p.priority = std::uint8_t(std::clamp(e.priority, 0, 255));
    }
    if (e.headers.is_object() && !e.headers.empty()) {
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers = sent_at_ms > 0 ? pool.table(e.headers, kSentAtHeader, sent_at_ms)
                                   : pool.table(e.headers);
    }
    return p;
}

amqp_basic_properties_t properties(Pool& pool, const TaskMessage& t, std::int64_t sent_at_ms) {
    amqp_basic_properties_t p{};
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG |
               AMQP_BASIC_CONTENT_ENCODING_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
               AMQP_BASIC_HEADERS_FLAG;
    p.delivery_mode = 2;  // persistent
    p.content_type = pool.bytes(codec::kJson);
    p.content_encoding = pool.bytes("utf-8");
    p.correlation_id = pool.bytes(t.correlation_id.empty() ? t.id : t.correlation_id);
    if (p.correlation_id.len == 0) p._flags &= ~AMQP_BASIC_CORRELATION_ID_FLAG;
    if (!t.reply_to.empty()) {
        p._flags |= AMQP_BASIC_REPLY_TO_FLAG;
        p.reply_to = pool.bytes(t.reply_to);
    }
    if (t.priority > 0) {
        p._flags |= AMQP_BASIC_PRIORITY_FLAG;
        p.priority = std::uint8_t(std::clamp(t.priority, 0, 255));
    }
    p.headers = pool.table(t, sent_at_ms > 0 ? kSentAtHeader : std::string_view(), sent_at_ms);
    return p;
}

Envelope envelope_of(const amqp_basic_properties_t& p, amqp_bytes_t body) {
    Envelope e;
    if (p._flags & AMQP_BASIC_CONTENT_TYPE_FLAG) e.content_type = to_string(p.content_type);
    if (p._flags & AMQP_BASIC_CONTENT_ENCODING_FLAG)
        e.content_encoding = to_string(p.content_encoding);
    if (p._flags & AMQP_BASIC_CORRELATION_ID_FLAG) e.correlation_id = to_string(p.correlation_id);
    if (p._flags & AMQP_BASIC_REPLY_TO_FLAG) e.reply_to = to_string(p.reply_to);
    if (p._flags & AMQP_BASIC_PRIORITY_FLAG) e.priority = p.priority;
    if (p._flags & AMQP_BASIC_HEADERS_FLAG) e.headers = to_json(p.headers);
    e.body = to_string(body);
    return e;
}

Envelope& full_envelope(Received& received) {
    if (!received.headers_in_envelope) {
        received.envelope.headers = to_json(received.headers.table());
        received.headers_in_envelope = true;
    }
    return received.envelope;
}

amqp_rpc_reply_t consume_message(amqp_connection_state_t state, Received& out,
                                 struct timeval* timeout, bool headers_as_table) {
    amqp_rpc_reply_t reply{};
    reply.reply_type = AMQP_RESPONSE_NORMAL;
    auto failed = [&](int status) {
        reply.reply_type = AMQP_RESPONSE_LIBRARY_EXCEPTION;
        reply.library_error = status;
        return reply;
    };
    amqp_frame_t frame;
    int rc = amqp_simple_wait_frame_noblock(state, &frame, timeout);
    if (rc != AMQP_STATUS_OK) return failed(rc);
    if (frame.frame_type != AMQP_FRAME_METHOD ||
        frame.payload.method.id != AMQP_BASIC_DELIVER_METHOD) {
        out.unexpected = frame;
        return failed(AMQP_STATUS_UNEXPECTED_STATE);
    }
    out.unexpected.reset();
    auto* deliver = static_cast<amqp_basic_deliver_t*>(frame.payload.method.decoded);
    out.channel = frame.channel;
    out.consumer_tag = to_string(deliver->consumer_tag);
    out.delivery_tag = deliver->delivery_tag;
    out.redelivered = deliver->redelivered != 0;
    out.exchange = to_string(deliver->exchange);
    out.routing_key = to_string(deliver->routing_key);

    // A message's header and body frames follow its deliver frame on its channel, nothing
    // between them there; this connection uses no other channel while it consumes.
    rc = amqp_simple_wait_frame(state, &frame);
    if (rc != AMQP_STATUS_OK) return failed(rc);
    if (frame.frame_type != AMQP_FRAME_HEADER || frame.channel != out.channel)
        return failed(AMQP_STATUS_BAD_AMQP_DATA);
    auto* props = static_cast<amqp_basic_properties_t*>(frame.payload.properties.decoded);
    const std::uint64_t size = frame.payload.properties.body_size;
    if (headers_as_table) {
        // The headers stay a field table (copied out of the buffers recycled below).
        amqp_basic_properties_t without = *props;
        without._flags &= ~amqp_flags_t(AMQP_BASIC_HEADERS_FLAG);
        out.envelope = envelope_of(without, amqp_empty_bytes);
        out.headers =
            (props->_flags & AMQP_BASIC_HEADERS_FLAG) ? OwnedTable(props->headers) : OwnedTable();
        out.headers_in_envelope = false;
    } else {
        out.envelope = envelope_of(*props, amqp_empty_bytes);
        out.headers_in_envelope = true;
    }
    out.message_id =
        (props->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ? to_string(props->message_id) : std::string();
    amqp_maybe_release_buffers_on_channel(state, out.channel);
    // RabbitMQ bounds a message's size (max_message_size), so the announced size is safe.
    out.envelope.body.reserve(std::size_t(size));
    while (out.envelope.body.size() < size) {
        rc = amqp_simple_wait_frame(state, &frame);
        if (rc != AMQP_STATUS_OK) return failed(rc);
        if (frame.frame_type != AMQP_FRAME_BODY || frame.channel != out.channel)
            return failed(AMQP_STATUS_BAD_AMQP_DATA);
        out.envelope.body.append(static_cast<const char*>(frame.payload.body_fragment.bytes),
                                 frame.payload.body_fragment.len);
        amqp_maybe_release_buffers_on_channel(state, out.channel);
    }
    return reply;
}

Result<std::unique_ptr<Connection>> Connection::open(const ConnectionOptions& o,
                                                     std::string_view name) {
    if (o.failover.empty()) return open_endpoint(o, o, name);
    // A failover list: every broker in turn, from the one that worked last.
    const std::size_t n = o.failover.size() + 1;
    const std::size_t start = o.preferred->load() % n;
    Error last;
    for (std::size_t i = 0; i < n; ++i) {
        std::size_t k = (start + i) % n;
        const Endpoint& ep = k == 0 ? static_cast<const Endpoint&>(o) : o.failover[k - 1];
        auto c = open_endpoint(o, ep, name);
        if (c) {
            o.preferred->store(k);
            return c;
        }
        last = c.error();
        if (last.code != Errc::unavailable && last.code != Errc::timeout) return c;
    }
    return fail(last.code,
                fmt::format("none of the {} brokers could be reached (last: {})", n, last.message));
}

Result<std::unique_ptr<Connection>> Connection::open_endpoint(const ConnectionOptions& opts,
                                                              const Endpoint& o,
                                                              std::string_view name) {
    std::unique_ptr<Connection> c(new Connection());
    c->options_ = opts;
    c->conn_ = amqp_new_connection();
    if (!c->conn_) return fail(Errc::internal, "rabbitmq-c could not allocate a connection");
    amqp_socket_t* s = opts.tls ? amqp_ssl_socket_new(c->conn_) : amqp_tcp_socket_new(c->conn_);
    if (!s) return fail(Errc::internal, "rabbitmq-c could not create a socket");
    std::string where = fmt::format("{}:{}", o.host, o.port);
    if (opts.tls) {
        if (!opts.cacert.empty() &&
            amqp_ssl_socket_set_cacert(s, opts.cacert.c_str()) != AMQP_STATUS_OK)
            return fail(Errc::invalid_argument,
                        fmt::format("amqps CA bundle '{}' cannot be read", opts.cacert));
        if (!opts.cert.empty() &&
            amqp_ssl_socket_set_key(s, opts.cert.c_str(), opts.key.c_str()) != AMQP_STATUS_OK)
            return fail(Errc::invalid_argument,
                        fmt::format("amqps certificate '{}' or key '{}' cannot be read", opts.cert,
                                    opts.key));
        amqp_ssl_socket_set_verify_peer(s, opts.verify ? 1 : 0);
        amqp_ssl_socket_set_verify_hostname(s, opts.verify ? 1 : 0);
        if (opts.verify && is_ip_literal(o.host)) {
            // rabbitmq-c matches DNS names only: an address is checked by OpenSSL against
            // the certificate's IP subject alternative names instead.
            amqp_ssl_socket_set_verify_hostname(s, 0);
            auto* ctx = static_cast<SSL_CTX*>(amqp_ssl_socket_get_context(s));
            if (!ctx || X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(ctx), o.host.c_str()) != 1)
                return fail(Errc::internal, "cannot set up verification of an IP address");
        }
    }
    timeval tv = to_timeval(opts.connect_timeout);
    if (int rc = amqp_socket_open_noblock(s, o.host.c_str(), o.port, &tv); rc != AMQP_STATUS_OK) {
        c->healthy_ = false;
        std::string why = rc == AMQP_STATUS_SOCKET_ERROR
                              ? connect_failure(o.host, o.port, opts.connect_timeout)
                              : std::string(amqp_error_string2(rc));
        return fail(Errc::unavailable, fmt::format("cannot reach RabbitMQ at {}: {}", where, why));
    }
    amqp_set_handshake_timeout(c->conn_, &tv);
    timeval rpc = to_timeval(opts.rpc_timeout);
    amqp_set_rpc_timeout(c->conn_, &rpc);

    Pool pool;
    Json client_props = {{"connection_name", std::string(name)},
                         {"product", "conveyor"},
                         {"capabilities",
                          {{"publisher_confirms", true},
                           {"consumer_cancel_notify", true},
                           {"basic.nack", true},
                           {"connection.blocked", true},
                           {"authentication_failure_close", true}}}};
    amqp_table_t props = pool.table(client_props);
    auto r =
        amqp_login_with_properties(c->conn_, o.vhost.c_str(), 0, 131072, opts.heartbeat, &props,
                                   AMQP_SASL_METHOD_PLAIN, o.user.c_str(), o.password.c_str());
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        c->healthy_ = false;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            (r.library_error == AMQP_STATUS_TIMEOUT ||
             r.library_error == AMQP_STATUS_SOCKET_ERROR ||
             r.library_error == AMQP_STATUS_SSL_ERROR ||
             r.library_error == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED ||
             r.library_error == AMQP_STATUS_SSL_PEER_VERIFY_FAILED ||
             r.library_error == AMQP_STATUS_SSL_CONNECTION_FAILED))
            // Not a refusal: nothing (or no AMQP, or no trusted TLS) answered in time.
            return fail(
                r.library_error == AMQP_STATUS_TIMEOUT ? Errc::timeout : Errc::unavailable,
                fmt::format("RabbitMQ at {} did not complete the AMQP handshake{}: {}", where,
                            r.library_error == AMQP_STATUS_TIMEOUT
                                ? fmt::format(" within the connect timeout of {} s",
                                              opts.connect_timeout.count() / 1000.0)
                                : "",
                            amqp_error_string2(r.library_error)));
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_CONNECTION_CLOSED)
            return fail(Errc::invalid_argument,
                        fmt::format("RabbitMQ at {} refused user '{}' on vhost '{}'", where, o.user,
                                    o.vhost));
        auto e = translate(r, fmt::format("RabbitMQ at {} refused user '{}' on vhost '{}'", where,
                                          o.user, o.vhost));
        if (e.code == Errc::unavailable && r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION)
            e.code = Errc::invalid_argument;
        return std::unexpected(e);
    }
    return c;
}

Connection::~Connection() {
    if (!conn_) return;
    if (healthy_) amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn_);
}

Result<void> Connection::check(amqp_rpc_reply_t r, amqp_channel_t channel, std::string_view what) {
    if (r.reply_type == AMQP_RESPONSE_NORMAL) return {};
    auto e = translate(r, what);
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_ok_t ok{};
            if (amqp_send_method(conn_, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) !=
                AMQP_STATUS_OK)
                healthy_ = false;
            channel_closed(channel);
        } else {
            amqp_connection_close_ok_t ok{};
            amqp_send_method(conn_, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
            healthy_ = false;
        }
    } else {
        healthy_ = false;  // a library failure leaves the protocol state unknown
    }
    return std::unexpected(e);
}

void Connection::channel_closed(amqp_channel_t channel) {
    if (channel < 4) open_channels_[channel] = false;
    if (channel == kPublishChannel) confirm_mode_ = false;
}

bool Connection::pass_unexpected_frame(const amqp_frame_t& f) {
    return f.frame_type != AMQP_FRAME_METHOD ||
           (f.payload.method.id != AMQP_CHANNEL_CLOSE_METHOD &&
            f.payload.method.id != AMQP_CONNECTION_CLOSE_METHOD &&
            f.payload.method.id != AMQP_BASIC_CANCEL_METHOD);
}

Result<void> Connection::ensure_channel(amqp_channel_t channel) {
    if (!healthy_) return fail(Errc::unavailable, "the RabbitMQ connection was lost");
    if (channel < 4 && open_channels_[channel]) return {};
    amqp_channel_open(conn_, channel);
    CONVEYOR_TRY(check(amqp_get_rpc_reply(conn_), channel, "opening a channel"));
    if (channel < 4) open_channels_[channel] = true;
    return {};
}

Result<void> Connection::declare_exchange(std::string_view name, std::string_view type,
                                          ExchangeFlags flags, const Json& arguments) {
    CONVEYOR_TRY(ensure_channel(kAdminChannel));
    pool_.clear();
    amqp_exchange_declare(conn_, kAdminChannel, pool_.bytes(name), pool_.bytes(type),
                          flags.passive ? 1 : 0, flags.durable ? 1 : 0, flags.auto_delete ? 1 : 0,
                          flags.internal ? 1 : 0, pool_.table(arguments));
    return check(amqp_get_rpc_reply(conn_), kAdminChannel,
                 fmt::format("{} exchange '{}'", flags.passive ? "looking up" : "declaring", name));
}

Result<QueueInfo> Connection::declare_queue(std::string_view name, const Json& arguments,
                                            QueueFlags flags) {
    CONVEYOR_TRY(ensure_channel(kAdminChannel));
    pool_.clear();
    auto* r = amqp_queue_declare(conn_, kAdminChannel, pool_.bytes(name), flags.passive ? 1 : 0,
                                 flags.durable ? 1 : 0, flags.exclusive ? 1 : 0,
                                 flags.auto_delete ? 1 : 0, pool_.table(arguments));
    CONVEYOR_TRY(
        check(amqp_get_rpc_reply(conn_), kAdminChannel,
              fmt::format("{} queue '{}'", flags.passive ? "looking up" : "declaring", name)));
    return QueueInfo{r->message_count, r->consumer_count};
}

Result<void> Connection::bind_queue(std::string_view queue, std::string_view exchange,
                                    std::string_view key, const Json& arguments) {
    CONVEYOR_TRY(ensure_channel(kAdminChannel));
    pool_.clear();
    amqp_queue_bind(conn_, kAdminChannel, pool_.bytes(queue), pool_.bytes(exchange),
                    pool_.bytes(key), pool_.table(arguments));
    return check(
        amqp_get_rpc_reply(conn_), kAdminChannel,
        fmt::format("binding queue '{}' to exchange '{}' with key '{}'", queue, exchange, key));
}

Result<void> Connection::bind_exchange(std::string_view destination, std::string_view source,
                                       std::string_view key, const Json& arguments) {
    CONVEYOR_TRY(ensure_channel(kAdminChannel));
    pool_.clear();
    amqp_exchange_bind(conn_, kAdminChannel, pool_.bytes(destination), pool_.bytes(source),
                       pool_.bytes(key), pool_.table(arguments));
    return check(amqp_get_rpc_reply(conn_), kAdminChannel,
                 fmt::format("binding exchange '{}' to exchange '{}' with key '{}'", destination,
                             source, key));
}

Result<std::uint32_t> Connection::purge_queue(std::string_view name) {
    CONVEYOR_TRY(ensure_channel(kAdminChannel));
    pool_.clear();
    auto* r = amqp_queue_purge(conn_, kAdminChannel, pool_.bytes(name));
    CONVEYOR_TRY(
        check(amqp_get_rpc_reply(conn_), kAdminChannel, fmt::format("purging queue '{}'", name)));
    return r->message_count;
}

Result<bool> Connection::dead_letter_oldest(std::string_view name) {
    CONVEYOR_TRY(ensure_channel(kAdminChannel));
    // What the channel decoded (the get's reply, the message's frames) is let go on the way
    // out: a pooled connection lives long, and this runs once a freed slot.
    struct Release {
        amqp_connection_state_t c;
        ~Release() { amqp_maybe_release_buffers_on_channel(c, kAdminChannel); }
    } release{conn_};
    pool_.clear();
    auto r = amqp_basic_get(conn_, kAdminChannel, pool_.bytes(name), 0);
    if (auto ok = check(r, kAdminChannel, fmt::format("taking a message from queue '{}'", name));
        !ok) {
        if (ok.error().code == Errc::not_found && healthy_) return false;  // none ever waited
        return std::unexpected(ok.error());
    }
    if (r.reply.id != AMQP_BASIC_GET_OK_METHOD) return false;  // get-empty
    std::uint64_t tag = static_cast<amqp_basic_get_ok_t*>(r.reply.decoded)->delivery_tag;
    // Its content follows on the channel; read, and let go.
    amqp_message_t m{};
    auto rr = amqp_read_message(conn_, kAdminChannel, &m, 0);
    if (rr.reply_type == AMQP_RESPONSE_NORMAL) amqp_destroy_message(&m);
    CONVEYOR_TRY(check(rr, kAdminChannel, fmt::format("reading a message of queue '{}'", name)));
    if (amqp_basic_reject(conn_, kAdminChannel, tag, 0) != AMQP_STATUS_OK) {
        healthy_ = false;
        return fail(Errc::unavailable,
                    fmt::format("RabbitMQ connection lost rejecting a message of '{}'", name));
    }
    return true;
}

Result<void> Connection::delete_queue(std::string_view name) {
    CONVEYOR_TRY(ensure_channel(kAdminChannel));
    pool_.clear();
    amqp_queue_delete(conn_, kAdminChannel, pool_.bytes(name), 0, 0);
    return check(amqp_get_rpc_reply(conn_), kAdminChannel,
                 fmt::format("deleting queue '{}'", name));
}

Result<void> Connection::publish(std::span<const Wire> messages,
                                 std::chrono::steady_clock::time_point deadline,
                                 std::span<bool> confirmed) {
    using namespace std::chrono;
    const amqp_channel_t ch = kPublishChannel;
    CONVEYOR_TRY(ensure_channel(ch));
    if (!confirm_mode_) {
        amqp_confirm_select(conn_, ch);
        CONVEYOR_TRY(check(amqp_get_rpc_reply(conn_), ch, "enabling publisher confirms"));
        confirm_mode_ = true;
        next_seq_ = 1;
    }
    constexpr std::size_t kWindow = 2048;
    const std::int64_t sent_at =
        duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
    const std::size_t n = messages.size();
    const std::uint64_t base = next_seq_;
    std::vector<char> acked(n, 0);
    std::size_t sent = 0, done = 0;
    std::optional<Error> failure;
    Pool pool;

    std::size_t low = 0;  // every message before `low` is settled
    auto mark = [&](std::uint64_t tag, bool multiple, bool ok) {
        if (tag < base) return;
        std::size_t hi = std::min<std::size_t>(std::size_t(tag - base), n - 1);
        for (std::size_t i = multiple ? low : hi; i <= hi; ++i) {
            if (acked[i]) continue;
            acked[i] = ok ? 1 : 2;
            ++done;
            if (ok && i < confirmed.size()) confirmed[i] = true;
        }
        while (low < n && acked[low]) ++low;
        if (!ok && !failure)
            failure = Error{Errc::unavailable, "RabbitMQ refused (nacked) a published message"};
    };

    // A burst of publishes leaves in one send() (PublishFrames) rather than rabbitmq-c's three
    // per message: the client's system calls were half its CPU time per task. Over TLS, and
    // for a large body (sent from where it is), rabbitmq-c writes; corked, the kernel packs
    // its frames together, which saves the broker a wake-up and a segment per frame.
    const int fd = amqp_get_sockfd(conn_);
    const bool buffered = !options_.tls && fd >= 0;
    const std::size_t frame_max = std::size_t(amqp_get_frame_max(conn_));
    constexpr std::size_t kFlushAt = std::size_t{64} << 10;
    auto cork = [fd](int on) {
        if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on);
    };
    auto flush = [&]() -> Result<void> {
        if (frames_.empty()) return {};
        auto ok = send_all(fd, frames_.bytes(), deadline);
        frames_.clear();
        if (!ok) healthy_ = false;  // a frame may have gone in part
        return ok;
    };
    frames_.clear();
    while (done < n) {
        const bool burst = !buffered && n - sent > 1 && sent - done + 1 < kWindow;
        if (burst) cork(1);
        while (sent < n && sent - done < kWindow) {
            const Wire& w = messages[sent];
            if (sent % 256 == 0) pool.clear();
            auto props = w.task ? properties(pool, *w.task, sent_at)
                                : properties(pool, *w.envelope, sent_at);
            std::string_view text = w.task ? w.body : std::string_view(w.envelope->body);
            amqp_bytes_t body{text.size(), const_cast<char*>(text.data())};
            if (buffered && body.len <= PublishFrames::kMaxCopiedBody &&
                frames_.add(ch, pool.bytes(w.exchange), pool.bytes(w.routing_key), w.mandatory,
                            props, body, frame_max)) {
                if (frames_.size() >= kFlushAt) CONVEYOR_TRY(flush());
            } else {
                CONVEYOR_TRY(flush());  // what came before goes first
                int rc =
                    amqp_basic_publish(conn_, ch, pool.bytes(w.exchange), pool.bytes(w.routing_key),
                                       w.mandatory ? 1 : 0, 0, &props, body);
                if (rc != AMQP_STATUS_OK) {
                    if (burst) cork(0);
                    healthy_ = false;
                    return fail(Errc::unavailable,
                                fmt::format("publishing to RabbitMQ: {}", amqp_error_string2(rc)));
                }
            }
            ++sent;
            ++next_seq_;
        }
        CONVEYOR_TRY(flush());
        if (burst) cork(0);  // uncorking sends what is left at once
        // Read confirms: without blocking while there is room to send more, else until one comes.
        bool room = sent < n && sent - done < kWindow;
        auto left = duration_cast<milliseconds>(deadline - steady_clock::now());
        if (left.count() <= 0)
            return fail(
                Errc::timeout,
                fmt::format("RabbitMQ did not confirm {} of {} messages in time", n - done, n));
        timeval tv = room ? timeval{0, 0} : to_timeval(left);
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(conn_, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT) continue;
        if (rc != AMQP_STATUS_OK) {
            healthy_ = false;
            return fail(Errc::unavailable,
                        fmt::format("waiting for publisher confirms: {}", amqp_error_string2(rc)));
        }
        if (f.frame_type != AMQP_FRAME_METHOD) continue;
        switch (f.payload.method.id) {
            case AMQP_BASIC_ACK_METHOD: {
                auto* a = static_cast<amqp_basic_ack_t*>(f.payload.method.decoded);
                mark(a->delivery_tag, a->multiple, true);
                break;
            }
            case AMQP_BASIC_NACK_METHOD: {
                auto* a = static_cast<amqp_basic_nack_t*>(f.payload.method.decoded);
                mark(a->delivery_tag, a->multiple, false);
                break;
            }
            case AMQP_BASIC_RETURN_METHOD: {
                auto* r = static_cast<amqp_basic_return_t*>(f.payload.method.decoded);
                std::string exchange = to_string(r->exchange), key = to_string(r->routing_key);
                amqp_message_t msg;
                auto rr = amqp_read_message(conn_, ch, &msg, 0);
                if (rr.reply_type == AMQP_RESPONSE_NORMAL) amqp_destroy_message(&msg);
                if (!failure)
                    failure = Error{
                        Errc::not_found,
                        exchange.empty()
                            ? fmt::format("no queue named '{}' exists; the message was not "
                                          "accepted (declare the queue or run `conveyor "
                                          "topology apply`)",
                                          key)
                            : fmt::format("no queue is bound to exchange '{}' with routing key "
                                          "'{}'; the message was not accepted",
                                          exchange, key)};
                if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
                    healthy_ = false;
                    return std::unexpected(*failure);
                }
                break;
            }
            case AMQP_CHANNEL_CLOSE_METHOD: {
                amqp_rpc_reply_t r{};
                r.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION;
                r.reply = f.payload.method;
                return check(r, ch, "publishing");
            }
            case AMQP_CONNECTION_CLOSE_METHOD: {
                amqp_rpc_reply_t r{};
                r.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION;
                r.reply = f.payload.method;
                auto e = check(r, 0, "publishing");
                return fail(Errc::unavailable, e.error().message);
            }
            default:
                break;
        }
        amqp_maybe_release_buffers_on_channel(conn_, ch);
    }
    if (failure && failure->code == Errc::unavailable) {
        // A nack. After a quorum queue's leader died, a channel may go on nacking what it
        // publishes to it: the next attempt uses a new connection.
        healthy_ = false;
    }
    if (failure) return std::unexpected(*failure);
    return {};
}

}  // namespace conveyor::amqp
