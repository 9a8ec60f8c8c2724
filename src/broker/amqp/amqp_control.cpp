#include "broker/amqp/amqp_control.hpp"

#include <fmt/format.h>
#include <fnmatch.h>

#include <algorithm>

#include "conveyor/log.hpp"
#include "core/json_bounds.hpp"
#include "core/try.hpp"

namespace conveyor::amqp {

namespace {

using namespace std::chrono;

constexpr std::string_view kEventExchange = "celeryev";
constexpr std::string_view kPidboxExchange = "celery.pidbox";
constexpr std::string_view kReplyExchange = "reply.celery.pidbox";
constexpr amqp_channel_t kChannel = 1;  // publishing (no confirms) and the pidbox consumer

/// Does a request's destination / pattern select `node`? (kombu's Node.handle_message)
bool addressed_to(const Json& body, const std::string& node) {
    if (auto d = body.find("destination"); d != body.end() && d->is_array() && !d->empty())
        return std::any_of(d->begin(), d->end(),
                           [&](const Json& n) { return n.is_string() && n == node; });
    auto pattern = body.find("pattern");
    if (pattern != body.end() && pattern->is_string()) {
        auto m = body.find("matcher");
        if (m == body.end() || m->is_null() || *m == "glob")
            return fnmatch(pattern->get_ref<const std::string&>().c_str(), node.c_str(), 0) == 0;
        return false;  // pcre matchers are not supported: not for us
    }
    return true;
}

/// A string field of `o`; empty when absent or of another type.
std::string string_field(const Json& o, const char* key) {
    if (!o.is_object()) return {};
    auto it = o.find(key);
    return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
}

/// The request a pidbox message carries; nullopt when it is not for `node` (or not a request
/// at all); Errc::malformed for one that cannot be read.
Result<std::optional<ControlRequest>> request_of(const Envelope& e, const std::string& node) {
    constexpr std::size_t kMaxRequest = 1u << 20;  // Celery's requests are a few hundred bytes
    if (e.body.size() > kMaxRequest)
        return fail(Errc::malformed, fmt::format("the request of {} bytes exceeds {} bytes",
                                                 e.body.size(), kMaxRequest));
    auto body = detail::parse_untrusted(e.body, "the request");
    CONVEYOR_TRY(body);
    if (!body->is_object()) return fail(Errc::malformed, "the request is not a JSON object");
    auto method = body->find("method");
    if (method == body->end() || !method->is_string())
        return fail(Errc::malformed, "the request has no string 'method'");
    if (!addressed_to(*body, node)) return std::optional<ControlRequest>();
    ControlRequest req;
    req.method = method->get<std::string>();
    if (auto a = body->find("arguments"); a != body->end() && a->is_object())
        req.arguments = std::move(*a);
    if (auto c = e.headers.find("clock"); c != e.headers.end() && c->is_number_integer())
        req.clock = c->get<std::int64_t>();
    if (auto rt = body->find("reply_to"); rt != body->end() && rt->is_object()) {
        req.reply_exchange = string_field(*rt, "exchange");
        req.reply_routing_key = string_field(*rt, "routing_key");
    }
    req.ticket = string_field(*body, "ticket");
    return std::optional<ControlRequest>(std::move(req));
}

class AmqpControl final : public ControlChannel {
  public:
    AmqpControl(ConnectionOptions o, std::string node)
        : opts_(std::move(o)), node_(std::move(node)) {}

    Result<void> connect() override { return ensure(); }

    Result<void> publish_events(std::span<const Json> events) override {
        if (events.empty()) return {};
        CONVEYOR_TRY(ensure());
        Pool pool;
        for (auto& e : events) {
            std::string type = e.value("type", "");
            std::string key = type;
            std::replace(key.begin(), key.end(), '-', '.');
            Envelope env;
            env.content_type = "application/json";
            env.content_encoding = "utf-8";
            env.headers = {{"hostname", node_}};
            env.body = e.dump(-1, ' ', true, Json::error_handler_t::replace);
            CONVEYOR_TRY(send(pool, kEventExchange, key, env));
            pool.clear();
        }
        return {};
    }

    Result<std::optional<ControlRequest>> next_request(milliseconds wait) override {
        CONVEYOR_TRY(ensure());
        auto deadline = steady_clock::now() + wait;
        for (;;) {
            auto left = duration_cast<microseconds>(deadline - steady_clock::now());
            if (left.count() < 0) left = microseconds(0);
            timeval tv{time_t(left.count() / 1000000), suseconds_t(left.count() % 1000000)};
            amqp_maybe_release_buffers(conn_->raw());
            Received env;
            auto r = consume_message(conn_->raw(), env, &tv);
            if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                r.library_error == AMQP_STATUS_TIMEOUT)
                return std::optional<ControlRequest>();
            if (r.reply_type != AMQP_RESPONSE_NORMAL) {
                if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                    r.library_error == AMQP_STATUS_UNEXPECTED_STATE && env.unexpected &&
                    Connection::pass_unexpected_frame(*env.unexpected))
                    continue;
                conn_.reset();
                return fail(Errc::unavailable, "the remote-control connection was lost");
            }
            const Envelope& e = env.envelope;
            // Anyone on the vhost may publish here: a request that is not well-formed is
            // ignored (with a line), never trusted.
            auto req = request_of(e, node_);
            if (!req) {
                detail::log(
                    LogLevel::warning, "control.ignored",
                    fmt::format("ignored a remote-control message: {}", req.error().message));
            } else if (*req) {
                return req;
            }
            if (steady_clock::now() >= deadline) return std::optional<ControlRequest>();
        }
    }

    Result<void> reply(const ControlRequest& req, const Json& value, std::int64_t clock) override {
        if (req.reply_exchange.empty() && req.reply_routing_key.empty()) return {};
        CONVEYOR_TRY(ensure());
        if (!req.reply_exchange.empty() && !reply_exchange_declared_) {
            CONVEYOR_TRY(conn_->declare_exchange(req.reply_exchange, "direct", {.durable = false},
                                                 Json::object()));
            reply_exchange_declared_ = true;
        }
        Envelope env;
        env.content_type = "application/json";
        env.content_encoding = "utf-8";
        env.headers = {{"ticket", req.ticket}, {"clock", clock}};
        env.body = Json{{node_, value}}.dump(-1, ' ', true, Json::error_handler_t::replace);
        Pool pool;
        return send(pool, req.reply_exchange, req.reply_routing_key, env);
    }

  private:
    Result<void> ensure() {
        if (conn_ && conn_->healthy()) return {};
        conn_.reset();
        reply_exchange_declared_ = false;
        auto c = Connection::open(opts_, "conveyor-control " + node_);
        CONVEYOR_TRY(c);
        auto& conn = **c;
        // Exactly Celery's flags, or Python peers get PRECONDITION_FAILED.
        CONVEYOR_TRY(
            conn.declare_exchange(kEventExchange, "topic", {.durable = true}, Json::object()));
        CONVEYOR_TRY(
            conn.declare_exchange(kPidboxExchange, "fanout", {.durable = false}, Json::object()));
        std::string queue = node_ + ".celery.pidbox";
        Json args = {{"x-message-ttl", 300000}, {"x-expires", 10000}};
        CONVEYOR_TRY(conn.declare_queue(queue, args, {.durable = false, .auto_delete = true}));
        CONVEYOR_TRY(conn.bind_queue(queue, kPidboxExchange, ""));
        CONVEYOR_TRY(conn.ensure_channel(kChannel));
        Pool pool;
        amqp_basic_consume(conn.raw(), kChannel, pool.bytes(queue), amqp_empty_bytes, 0, 1, 0,
                           amqp_empty_table);
        CONVEYOR_TRY(conn.check(amqp_get_rpc_reply(conn.raw()), kChannel,
                                fmt::format("consuming from '{}'", queue)));
        conn_ = std::move(*c);
        return {};
    }

    /// Transient publish, no confirm (events and replies are best-effort, as in Celery).
    Result<void> send(Pool& pool, std::string_view exchange, std::string_view key,
                      const Envelope& env) {
        auto props = properties(pool, env);
        props.delivery_mode = 1;
        props._flags |= AMQP_BASIC_PRIORITY_FLAG;
        props.priority = 0;
        amqp_bytes_t body{env.body.size(), const_cast<char*>(env.body.data())};
        if (amqp_basic_publish(conn_->raw(), kChannel, pool.bytes(exchange), pool.bytes(key), 0, 0,
                               &props, body) != AMQP_STATUS_OK) {
            conn_.reset();
            return fail(Errc::unavailable, "publishing on the remote-control connection failed");
        }
        return {};
    }

    ConnectionOptions opts_;
    std::string node_;
    std::unique_ptr<Connection> conn_;
    bool reply_exchange_declared_ = false;
};

/// Celery events from every worker: a queue of the receiver's own bound to celeryev with '#'.
class AmqpEvents final : public EventStream {
  public:
    AmqpEvents(ConnectionOptions o, std::string name)
        : opts_(std::move(o)), queue_("conveyor.events." + std::move(name)) {}

    Result<std::vector<Json>> next(milliseconds wait) override {
        std::vector<Json> out;
        CONVEYOR_TRY(ensure());
        auto deadline = steady_clock::now() + wait;
        constexpr std::size_t kMaxEvent = 1u << 20;
        for (;;) {
            auto left = duration_cast<microseconds>(deadline - steady_clock::now());
            if (left.count() < 0 || out.size() >= 1000) left = microseconds(0);
            timeval tv{time_t(left.count() / 1000000), suseconds_t(left.count() % 1000000)};
            amqp_maybe_release_buffers(conn_->raw());
            Received env;
            auto r = consume_message(conn_->raw(), env, &tv);
            if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                r.library_error == AMQP_STATUS_TIMEOUT)
                return out;
            if (r.reply_type != AMQP_RESPONSE_NORMAL) {
                if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                    r.library_error == AMQP_STATUS_UNEXPECTED_STATE && env.unexpected &&
                    Connection::pass_unexpected_frame(*env.unexpected))
                    continue;
                conn_.reset();
                if (!out.empty()) return out;
                return fail(Errc::unavailable, "the events connection was lost");
            }
            // Anyone on the vhost may publish events: what is not an object (or a list of
            // them, as Celery groups some) is dropped.
            const std::string& body = env.envelope.body;
            if (body.size() <= kMaxEvent)
                if (auto j = detail::parse_untrusted(body, "an event")) {
                    if (j->is_object()) {
                        out.push_back(std::move(*j));
                    } else if (j->is_array()) {
                        for (auto& e : *j)
                            if (e.is_object()) out.push_back(std::move(e));
                    }
                }
            if (steady_clock::now() >= deadline && out.size() > 0) return out;
        }
    }

  private:
    Result<void> ensure() {
        if (conn_ && conn_->healthy()) return {};
        conn_.reset();
        auto c = Connection::open(opts_, "conveyor-events " + queue_);
        CONVEYOR_TRY(c);
        auto& conn = **c;
        CONVEYOR_TRY(
            conn.declare_exchange(kEventExchange, "topic", {.durable = true}, Json::object()));
        // Kept while the receiver restarts (an hour unused, then gone), bounded in size.
        Json args = {{"x-message-ttl", 3600000}, {"x-expires", 3600000}, {"x-max-length", 1000000}};
        CONVEYOR_TRY(conn.declare_queue(queue_, args, {.durable = false, .auto_delete = false}));
        CONVEYOR_TRY(conn.bind_queue(queue_, kEventExchange, "#"));
        CONVEYOR_TRY(conn.ensure_channel(kChannel));
        Pool pool;
        amqp_basic_qos(conn.raw(), kChannel, 0, 2000, 0);
        amqp_basic_consume(conn.raw(), kChannel, pool.bytes(queue_), amqp_empty_bytes, 0, 1, 0,
                           amqp_empty_table);
        CONVEYOR_TRY(conn.check(amqp_get_rpc_reply(conn.raw()), kChannel,
                                fmt::format("consuming from '{}'", queue_)));
        conn_ = std::move(*c);
        return {};
    }

    ConnectionOptions opts_;
    std::string queue_;
    std::unique_ptr<Connection> conn_;
};

}  // namespace

std::unique_ptr<EventStream> make_event_stream(const ConnectionOptions& options, std::string name) {
    return std::make_unique<AmqpEvents>(options, std::move(name));
}

std::unique_ptr<ControlChannel> make_control_channel(const ConnectionOptions& options,
                                                     std::string node) {
    return std::make_unique<AmqpControl>(options, std::move(node));
}

}  // namespace conveyor::amqp
