#include "broker/amqp/amqp_broker.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <thread>
#include <unordered_map>

#include "broker/amqp/amqp_connection.hpp"
#include "broker/amqp/amqp_control.hpp"
#include "broker/amqp/delay.hpp"
#include "core/codec.hpp"
#include "core/result_meta.hpp"
#include "core/time.hpp"
#include "core/url.hpp"
#include "results/redis_results.hpp"

namespace conveyor::amqp {

namespace {

using namespace std::chrono;

constexpr std::string_view kReasonHeader = "x-conveyor-reason";
constexpr std::string_view kDeadAtHeader = "x-conveyor-dead-at";
constexpr std::string_view kKeyHeader = "x-conveyor-ordering-key";
/// Deliveries of a message without a settlement, counted by Conveyor on classic queues (quorum
/// queues count them as x-delivery-count): a redelivered message is published again with it.
constexpr std::string_view kDeliveriesHeader = "x-conveyor-deliveries";
constexpr std::string_view kDeliveryCountHeader = "x-delivery-count";

/// A message published anew starts its count again.
void forget_deliveries(Envelope& env) {
    if (!env.headers.is_object()) return;
    env.headers.erase(std::string(kDeliveriesHeader));
    env.headers.erase(std::string(kDeliveryCountHeader));
}
constexpr amqp_channel_t kConsumeChannel = 1;
constexpr amqp_channel_t kBrowseChannel = 3;

std::string dead_queue(std::string_view queue) { return std::string(queue) + ".dead"; }
std::string partition_queue(std::string_view queue, int i) {
    return fmt::format("{}.p{}", queue, i);
}

Json queue_arguments(const QueueSpec& q) {
    Json a = q.arguments.is_object() ? q.arguments : Json::object();
    if (q.type != "classic") a["x-queue-type"] = q.type;
    if (q.max_priority > 0) a["x-max-priority"] = q.max_priority;
    if (q.max_length > 0) a["x-max-length"] = q.max_length;
    if (!q.overflow.empty()) a["x-overflow"] = q.overflow;
    return a;
}

/// The configuration key that sets a queue.declare or exchange.declare argument.
std::string config_key_of(std::string_view arg) {
    static const std::map<std::string, std::string, std::less<>> keys = {
        {"durable", "durable"},
        {"auto_delete", "auto_delete"},
        {"exclusive", "exclusive"},
        {"internal", "internal"},
        {"type", "type"},
        {"x-queue-type", "type"},
        {"x-max-priority", "max_priority"},
        {"x-max-length", "max_length"},
        {"x-overflow", "overflow"}};
    if (auto it = keys.find(arg); it != keys.end()) return it->second;
    return fmt::format("arguments = {{ \"{}\" = ... }}", arg);
}

/// A PRECONDITION_FAILED for `entity` `name`, said so that it can be fixed: which argument,
/// both values, and the configuration key that resolves it. Other errors pass unchanged.
Error explain_conflict(const Error& e, std::string_view entity, std::string_view name) {
    if (e.code != Errc::conflict) return e;
    // RabbitMQ: "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/':
    // received 'true' but current is 'false'"
    static const std::regex inequivalent(
        R"(inequivalent arg '([^']+)' for \w+ '[^']*' in vhost '[^']*': received '([^']*)' but current is '([^']*)')");
    std::smatch m;
    std::string text = e.message;
    if (!std::regex_search(text, m, inequivalent)) return e;
    std::string arg = m[1], ours = m[2], theirs = m[3];
    std::string key = config_key_of(arg);
    std::string fix =
        key.starts_with("arguments")
            ? fmt::format("set {} in [[{}]] '{}'", key, entity, name)
            : fmt::format("set {} = {} in [[{}]] '{}'", key,
                          theirs == "true" || theirs == "false" ? theirs : "\"" + theirs + "\"",
                          entity, name);
    return Error{Errc::conflict,
                 fmt::format("{} '{}' exists with {} '{}', and Conveyor declares '{}': {}, or "
                             "passive = true to use it as it is",
                             entity, name, arg, theirs, ours, fix)};
}

enum class ResultsMode { none, rpc, redis };

/// Everything the engine shares between its publishers, consumers and admin calls.
class Engine : public std::enable_shared_from_this<Engine> {
  public:
    Engine(ConnectionOptions o, std::string url) : opts(std::move(o)), url(std::move(url)) {}

    ConnectionOptions opts;
    std::string url;
    ResultsMode results_mode = ResultsMode::rpc;
    std::shared_ptr<results::RedisResults> redis;  ///< results=redis://...

    // ---- connections for publishing and admin calls: checked out by one thread at a time.
    Result<std::unique_ptr<Connection>> checkout() {
        {
            std::lock_guard lk(pool_mu_);
            while (!idle_.empty()) {
                auto c = std::move(idle_.back());
                idle_.pop_back();
                if (c->healthy()) return c;
            }
        }
        return Connection::open(opts, fmt::format("conveyor-{}", getpid()));
    }
    void checkin(std::unique_ptr<Connection> c) {
        if (!c || !c->healthy()) return;
        std::lock_guard lk(pool_mu_);
        if (idle_.size() < 8) idle_.push_back(std::move(c));
    }

    /// Runs `fn` on a pooled connection, reconnecting on connection failures until `deadline`.
    template <class Fn>
    auto with_connection(steady_clock::time_point deadline, Fn&& fn)
        -> decltype(fn(std::declval<Connection&>())) {
        milliseconds backoff(100);
        for (;;) {
            auto c = checkout();
            if (c) {
                auto r = fn(**c);
                bool healthy = (*c)->healthy();
                checkin(std::move(*c));
                if (r || healthy || steady_clock::now() >= deadline) return r;
            } else if (c.error().code != Errc::unavailable || steady_clock::now() >= deadline) {
                return std::unexpected(c.error());
            }
            std::this_thread::sleep_for(
                std::min(backoff, duration_cast<milliseconds>(deadline - steady_clock::now())));
            backoff = std::min(backoff * 2, milliseconds(2000));
        }
    }

    steady_clock::time_point publish_deadline() const {
        return steady_clock::now() + opts.publish_timeout;
    }

    // ---- publishing with confirms; unconfirmed messages are republished after a reconnect.
    Result<void> publish_wires(std::span<const Wire> wires) {
        if (wires.empty()) return {};
        std::vector<bool> confirmed(wires.size(), false);
        auto deadline = publish_deadline();
        milliseconds backoff(100);
        for (;;) {
            auto r = publish_unconfirmed(wires, confirmed, deadline);
            if (r || r.error().code != Errc::unavailable || steady_clock::now() >= deadline)
                return r;
            // Nacked: RabbitMQ could not take them now (a quorum queue electing a new leader
            // after a node died, say). The unconfirmed ones go again, until the deadline.
            std::this_thread::sleep_for(
                std::min(backoff, duration_cast<milliseconds>(deadline - steady_clock::now())));
            backoff = std::min(backoff * 2, milliseconds(1000));
        }
    }

    Result<void> publish_unconfirmed(std::span<const Wire> wires, std::vector<bool>& confirmed,
                                     steady_clock::time_point deadline) {
        return with_connection(deadline, [&](Connection& c) -> Result<void> {
            std::vector<Wire> rest;
            std::vector<std::size_t> index;
            for (std::size_t i = 0; i < wires.size(); ++i)
                if (!confirmed[i]) {
                    rest.push_back(wires[i]);
                    index.push_back(i);
                }
            std::unique_ptr<bool[]> sub(new bool[rest.size()]());
            auto r = c.publish(rest, deadline, std::span<bool>(sub.get(), rest.size()));
            for (std::size_t i = 0; i < rest.size(); ++i)
                if (sub[i]) confirmed[index[i]] = true;
            return r;
        });
    }

    // ---- topology
    Result<void> set_topology(const Topology& t) {
        std::lock_guard lk(topo_mu_);
        topology_ = t;
        specs_.clear();
        for (auto& q : t.queues) {
            if (q.type != "classic" && q.type != "quorum")
                return fail(
                    Errc::invalid_argument,
                    fmt::format("queue '{}' has type '{}'; use classic or quorum", q.name, q.type));
            if (q.type == "quorum" && q.max_priority > 0)
                return fail(Errc::invalid_argument,
                            fmt::format("queue '{}': quorum queues have no priorities "
                                        "(max_priority); use a classic queue",
                                        q.name));
            specs_[q.name] = q;
        }
        return {};
    }

    std::optional<QueueSpec> spec_of(std::string_view queue) {
        std::lock_guard lk(topo_mu_);
        auto it = specs_.find(std::string(queue));
        if (it == specs_.end()) return std::nullopt;
        return it->second;
    }

    std::vector<std::string> known_queues() {
        std::lock_guard lk(topo_mu_);
        std::set<std::string> names(ensured_.begin(), ensured_.end());
        for (auto& [n, _] : specs_) names.insert(n);
        return {names.begin(), names.end()};
    }

    /// The 28 delay levels, the delivery exchange and the unroutable store.
    Result<void> declare_delay_infrastructure(Connection& c) {
        if (delay_ready_.load()) return {};
        // Declared last, so its presence means the rest exists.
        if (c.declare_queue(kUnroutableQueue, Json::object(), {.passive = true})) {
            delay_ready_ = true;
            return {};
        }
        Json level_args_base = Json::object();
        if (opts.delay_queue_type == "quorum") {
            level_args_base["x-queue-type"] = "quorum";
            level_args_base["x-dead-letter-strategy"] = "at-least-once";
        }
        level_args_base["x-overflow"] = "reject-publish";
        // Every exchange first: a quorum queue whose dead-letter exchange does not exist when
        // its leader starts never forwards its dead letters (RabbitMQ 3.10's at-least-once
        // worker gives up on it), and a delay level's dead-letter exchange is the next level's.
        if (auto ok = c.declare_exchange(kUnroutableExchange, "fanout", {.durable = true},
                                         Json::object());
            !ok)
            return ok;
        if (auto ok =
                c.declare_exchange(kDeliverExchange, "topic", {.durable = true},
                                   {{"alternate-exchange", std::string(kUnroutableExchange)}});
            !ok)
            return ok;
        for (int level = kDelayLevels - 1; level >= 0; --level)
            if (auto ok = c.declare_exchange(delay_level_name(level), "topic", {.durable = true},
                                             Json::object());
                !ok)
                return ok;
        // Exchange-to-exchange bindings once every exchange exists.
        for (int level = kDelayLevels - 1; level >= 0; --level) {
            std::string_view next = level == 0 ? kDeliverExchange : delay_level_name(level - 1);
            if (auto ok =
                    c.bind_exchange(next, delay_level_name(level), delay_binding_key(level, false));
                !ok)
                return ok;
        }
        for (int level = kDelayLevels - 1; level >= 0; --level) {
            std::string_view name = delay_level_name(level);
            std::string_view next = level == 0 ? kDeliverExchange : delay_level_name(level - 1);
            Json args = level_args_base;
            args["x-message-ttl"] = (std::int64_t(1) << level) * 1000;
            args["x-dead-letter-exchange"] = std::string(next);
            if (auto ok = c.declare_queue(name, args); !ok) return std::unexpected(ok.error());
            if (auto ok = c.bind_queue(name, name, delay_binding_key(level, true)); !ok) return ok;
        }
        // Of the delay levels' type: a classic queue is gone while its one node is down, and
        // then nothing could be delayed in a cluster that lost that node. Declared last, so its
        // presence means the rest exists.
        Json unroutable_args = Json::object();
        if (opts.delay_queue_type == "quorum") unroutable_args["x-queue-type"] = "quorum";
        if (auto ok = c.declare_queue(kUnroutableQueue, unroutable_args); !ok)
            return std::unexpected(ok.error());
        if (auto ok = c.bind_queue(kUnroutableQueue, kUnroutableExchange, ""); !ok) return ok;
        delay_ready_ = true;
        return {};
    }

    /// Declares a queue (and its dead-letter queue, partitions, delay binding) once.
    Result<void> declare_queue(Connection& c, const QueueSpec& q) {
        if (q.name.empty()) return fail(Errc::invalid_argument, "a queue needs a name");
        if (auto ok = declare_delay_infrastructure(c); !ok) return ok;
        if (q.partitions > 0) {
            if (auto ok = c.declare_exchange(q.name, "x-consistent-hash", {.durable = true},
                                             Json::object());
                !ok)
                return ok;
            for (int i = 0; i < q.partitions; ++i) {
                Json args = queue_arguments(q);
                args["x-single-active-consumer"] = true;
                auto p = partition_queue(q.name, i);
                if (auto ok = c.declare_queue(p, args); !ok) return std::unexpected(ok.error());
                if (auto ok = c.bind_queue(p, q.name, "1"); !ok) return ok;
            }
        } else if (q.passive) {
            if (auto ok = c.declare_queue(q.name, Json::object(), {.passive = true}); !ok)
                return fail(ok.error().code == Errc::not_found ? Errc::not_found : ok.error().code,
                            ok.error().code == Errc::not_found
                                ? fmt::format("queue '{}' does not exist (it is passive = true "
                                              "in the configuration: Conveyor uses it, never "
                                              "declares it); declare it, or drop passive",
                                              q.name)
                                : ok.error().message);
            if (auto ok = c.bind_queue(q.name, kDeliverExchange, "#." + routing_word(q.name)); !ok)
                return ok;
        } else {
            if (auto ok = c.declare_queue(
                    q.name, queue_arguments(q),
                    {.durable = q.durable, .auto_delete = q.auto_delete, .exclusive = q.exclusive});
                !ok)
                return std::unexpected(explain_conflict(ok.error(), "queue", q.name));
            if (auto ok = c.bind_queue(q.name, kDeliverExchange, "#." + routing_word(q.name)); !ok)
                return ok;
        }
        // The dead letters of a quorum queue outlive a node as the queue does.
        Json dead_args = Json::object();
        if (q.type == "quorum") dead_args["x-queue-type"] = "quorum";
        if (auto ok = c.declare_queue(dead_queue(q.name), dead_args); !ok) {
            // One declared otherwise (a classic one, by an earlier version) is used as it is.
            if (ok.error().code != Errc::conflict ||
                !c.declare_queue(dead_queue(q.name), {}, {.passive = true}))
                return std::unexpected(ok.error());
        }
        return {};
    }

    Result<void> ensure_queues(const std::vector<std::string>& names) {
        std::vector<QueueSpec> todo;
        {
            std::lock_guard lk(topo_mu_);
            for (auto& n : names) {
                if (ensured_.contains(n)) continue;
                auto it = specs_.find(n);
                QueueSpec q;
                if (it != specs_.end())
                    q = it->second;
                else
                    q.name = n;
                todo.push_back(q);
            }
        }
        if (todo.empty()) return {};
        auto r = with_connection(publish_deadline(), [&](Connection& c) -> Result<void> {
            for (auto& q : todo)
                if (auto ok = declare_queue(c, q); !ok) return ok;
            return {};
        });
        if (!r) return r;
        std::lock_guard lk(topo_mu_);
        for (auto& q : todo) ensured_.insert(q.name);
        return {};
    }

    Result<void> declare_topology() {
        Topology t;
        {
            std::lock_guard lk(topo_mu_);
            t = topology_;
        }
        auto r = with_connection(publish_deadline(), [&](Connection& c) -> Result<void> {
            if (auto ok = declare_delay_infrastructure(c); !ok) return ok;
            for (auto& e : t.exchanges)
                if (auto ok = c.declare_exchange(e.name, e.type,
                                                 {.passive = e.passive,
                                                  .durable = e.durable,
                                                  .auto_delete = e.auto_delete,
                                                  .internal = e.internal},
                                                 e.passive ? Json::object() : e.arguments);
                    !ok)
                    return std::unexpected(
                        e.passive && ok.error().code == Errc::not_found
                            ? Error{Errc::not_found,
                                    fmt::format("exchange '{}' does not exist (it is passive = "
                                                "true in the configuration: Conveyor uses it, "
                                                "never declares it); declare it, or drop passive",
                                                e.name)}
                            : explain_conflict(ok.error(), "exchange", e.name));
            for (auto& q : t.queues)
                if (auto ok = declare_queue(c, q); !ok) return ok;
            for (auto& b : t.bindings) {
                auto ok =
                    b.to_exchange.empty()
                        ? c.bind_queue(b.queue, b.exchange, b.routing_key, b.arguments)
                        : c.bind_exchange(b.to_exchange, b.exchange, b.routing_key, b.arguments);
                if (!ok) return ok;
            }
            return {};
        });
        if (!r) return r;
        std::lock_guard lk(topo_mu_);
        for (auto& q : t.queues) ensured_.insert(q.name);
        return {};
    }

  private:
    std::atomic<bool> delay_ready_{false};  // the delay levels exist on the broker
    std::mutex pool_mu_;
    std::vector<std::unique_ptr<Connection>> idle_;
    std::mutex topo_mu_;
    Topology topology_;
    std::map<std::string, QueueSpec> specs_;
    std::set<std::string> ensured_;
};

/// Celery's rpc:// reply for a result: JSON body, correlated by task id.
Envelope rpc_reply(const TaskResult& r) {
    Envelope env;
    env.content_type = std::string(codec::kJson);
    env.content_encoding = "utf-8";
    env.correlation_id = r.id;
    env.body = result_meta::encode(r, result_meta::Style::rpc);
    return env;
}

/// Where a message goes: exchange and routing key, delays and ordered queues resolved.
Result<Wire> route(Engine& e, const OutgoingMessage& m, std::string& key_storage) {
    Wire w;
    w.envelope = &m.envelope;
    if (!m.exchange.empty()) {
        if (m.not_before && *m.not_before > SystemClock::now())
            return fail(Errc::invalid_argument,
                        fmt::format("a delayed publish to exchange '{}' is not supported; delay "
                                    "the task per queue",
                                    m.exchange));
        w.exchange = m.exchange;
        w.routing_key = m.routing_key;
        return w;
    }
    if (m.queue.empty()) return fail(Errc::invalid_argument, "message has no queue");
    auto spec = e.spec_of(m.queue);
    bool ordered = spec && spec->partitions > 0;
    auto delay =
        m.not_before
            ? delay_seconds(duration_cast<milliseconds>(*m.not_before - SystemClock::now()))
            : 0;
    if (ordered) {
        if (delay > 0)
            return fail(Errc::invalid_argument,
                        fmt::format("queue '{}' is ordered; a delayed task cannot keep its "
                                    "place in the order",
                                    m.queue));
        w.exchange = m.queue;
        key_storage = m.ordering_key.empty() ? codec::envelope_id(m.envelope) : m.ordering_key;
        if (key_storage.empty()) key_storage = make_task_id();
        w.routing_key = key_storage;
        return w;
    }
    if (delay > 0) {
        auto r = delay_route(delay, m.queue);
        key_storage = std::move(r.routing_key);
        w.exchange = r.exchange;
        w.routing_key = key_storage;
        return w;
    }
    w.exchange = "";
    w.routing_key = m.queue;
    return w;
}

Result<void> publish_messages(Engine& e, std::span<const OutgoingMessage> msgs) {
    std::vector<std::string> queues;
    for (auto& m : msgs)
        if (m.exchange.empty() && !m.queue.empty()) queues.push_back(m.queue);
    std::sort(queues.begin(), queues.end());
    queues.erase(std::unique(queues.begin(), queues.end()), queues.end());
    if (auto ok = e.ensure_queues(queues); !ok) return ok;

    std::deque<std::string> keys;
    std::vector<Wire> wires;
    wires.reserve(msgs.size());
    std::vector<OutgoingMessage> keyed;  // envelopes that need the ordering-key header
    keyed.reserve(msgs.size());
    for (auto& m : msgs) {
        const OutgoingMessage* src = &m;
        if (!m.ordering_key.empty()) {
            keyed.push_back(m);
            keyed.back().envelope.headers[std::string(kKeyHeader)] = m.ordering_key;
            src = &keyed.back();
        }
        auto w = route(e, *src, keys.emplace_back());
        if (!w) return std::unexpected(w.error());
        wires.push_back(*w);
    }
    return e.publish_wires(wires);
}

// ---------------------------------------------------------------------------------------------

class AmqpConsumer final : public Consumer {
    struct Source {
        std::string queue;     // logical queue
        bool ordered = false;  // a partition of an ordered queue
    };

  public:
    AmqpConsumer(std::shared_ptr<Engine> e, ConsumerOptions o)
        : e_(std::move(e)), opts_(std::move(o)) {
        for (auto& q : opts_.queues) {
            auto spec = e_->spec_of(q);
            if (spec && spec->partitions > 0) {
                for (int i = 0; i < spec->partitions; ++i)
                    physical_[partition_queue(q, i)] = Source{q, true};
            } else {
                physical_[q] = Source{q, false};
            }
        }
    }

    ~AmqpConsumer() override {
        // Settled deliveries whose ack waited are acked before the connection goes (otherwise
        // RabbitMQ would deliver them again).
        if (conn_ && conn_->healthy()) flush_acks(true);
    }

    Result<void> connect() {
        // A queue that exists otherwise than configured (or a passive one that does not exist)
        // is reported and left out; the others are served.
        std::set<std::string> unusable;
        for (auto& q : opts_.queues) {
            auto ok = e_->ensure_queues({q});
            if (ok) continue;
            if (ok.error().code != Errc::conflict && ok.error().code != Errc::not_found) return ok;
            if (!reported_.contains(q))
                fmt::print(stderr, "conveyor: not consuming from queue '{}': {}\n", q,
                           ok.error().message);
            reported_.insert(q);
            unusable.insert(q);
        }
        if (unusable.size() == opts_.queues.size())
            return fail(Errc::conflict,
                        fmt::format("no queue of this worker can be used ({})", *unusable.begin()));
        auto c = Connection::open(e_->opts, opts_.name.empty() ? "conveyor-worker" : opts_.name);
        if (!c) return std::unexpected(c.error());
        auto& conn = **c;
        if (auto ok = conn.ensure_channel(kConsumeChannel); !ok) return ok;
        amqp_basic_qos(conn.raw(), kConsumeChannel, 0,
                       std::uint16_t(std::clamp<std::size_t>(opts_.prefetch, 1, 65535)), 0);
        if (auto ok =
                conn.check(amqp_get_rpc_reply(conn.raw()), kConsumeChannel, "setting prefetch");
            !ok)
            return ok;
        Pool pool;
        consumer_queue_.clear();
        for (auto& [physical, source] : physical_) {
            if (unusable.contains(source.queue)) continue;
            if (auto ok = start_consuming(conn, physical, source); !ok) return ok;
        }
        conn_ = std::move(*c);
        ++generation_;
        unsettled_.clear();
        deferred_.clear();
        deferred_since_.reset();
        backoff_ = milliseconds(100);
        return {};
    }

    void drop(std::string_view why) {
        if (conn_)
            fmt::print(stderr, "conveyor: RabbitMQ connection lost ({}); reconnecting\n", why);
        conn_.reset();
        unsettled_.clear();
        deferred_.clear();
        deferred_since_.reset();
        buffered_.clear();
        next_attempt_ = steady_clock::now();
    }

    bool ensure_connected(steady_clock::time_point deadline, Error* last) {
        while (!conn_ || !conn_->healthy()) {
            if (conn_) drop("connection failed");
            auto now = steady_clock::now();
            if (now < next_attempt_) {
                if (next_attempt_ > deadline) {
                    std::this_thread::sleep_until(deadline);
                    return false;
                }
                std::this_thread::sleep_until(next_attempt_);
            }
            auto ok = connect();
            if (ok) return true;
            if (last) *last = ok.error();
            next_attempt_ = steady_clock::now() + backoff_;
            backoff_ = std::min(backoff_ * 2, milliseconds(5000));
            if (steady_clock::now() >= deadline) return false;
        }
        return true;
    }

    Result<void> open_first() {
        Error last;
        if (!ensure_connected(steady_clock::now(), &last) && !conn_) return std::unexpected(last);
        return {};
    }

    Delivery to_delivery(Received& env) {
        Delivery d;
        d.tag = (generation_ << 40) | env.delivery_tag;
        d.envelope = std::move(env.envelope);
        auto it = consumer_queue_.find(env.consumer_tag);
        d.queue = it != consumer_queue_.end() ? it->second.queue : opts_.queues.front();
        if (it != consumer_queue_.end() && it->second.ordered) {
            // The consistent-hash exchange routed it by this key (the publisher's ordering key,
            // or the task id when it gave none).
            auto k = d.envelope.headers.find(kKeyHeader);
            d.ordering_key = k != d.envelope.headers.end() && k->is_string() ? k->get<std::string>()
                                                                             : env.routing_key;
        }
        d.message_id = codec::envelope_id(d.envelope);
        if (d.message_id.empty()) d.message_id = env.message_id;
        d.deliveries = env.redelivered ? 2 : 1;
        if (auto dc = d.envelope.headers.find(kDeliveryCountHeader);
            dc != d.envelope.headers.end() && dc->is_number_integer())
            d.deliveries = std::max<std::int64_t>(
                d.deliveries, std::clamp<std::int64_t>(dc->get<std::int64_t>(), 0, 1 << 20) + 1);
        if (auto dc = d.envelope.headers.find(kDeliveriesHeader);
            dc != d.envelope.headers.end() && dc->is_number_integer())
            d.deliveries = std::max<std::int64_t>(
                d.deliveries, std::clamp<std::int64_t>(dc->get<std::int64_t>(), 0, 1 << 20));
        held_.insert(d.tag);
        unsettled_[env.delivery_tag] = InFlight{d.queue, d.envelope.reply_to,
                                                it != consumer_queue_.end() && it->second.ordered};
        return d;
    }

    Result<std::vector<Delivery>> fetch(std::size_t max, milliseconds wait) override {
        auto deadline = steady_clock::now() + wait;
        flush_acks(false);
        std::vector<Delivery> out;
        while (!buffered_.empty() && out.size() < max) {
            out.push_back(std::move(buffered_.front()));
            buffered_.pop_front();
        }
        while (out.size() < max) {
            if (!ensure_connected(deadline, nullptr)) break;
            auto left = duration_cast<milliseconds>(deadline - steady_clock::now());
            timeval tv{0, 0};
            if (out.empty() && left.count() > 0)
                tv = timeval{time_t(left.count() / 1000), suseconds_t(left.count() % 1000 * 1000)};
            if (!receive(tv, out)) break;
        }
        return out;
    }

    /// A message redelivered by a classic queue carries no count of its deliveries, only a
    /// flag: it is published again to its queue with its count in a header (confirmed), and
    /// the redelivery acked, so that the worker's delivery limit sees how often it came back
    /// without being settled. True when that happened (the copy comes later). Quorum queues
    /// count by themselves (x-delivery-count); ordered queues keep their order instead.
    bool count_redelivery(Received& env) {
        if (!env.redelivered) return false;
        auto it = consumer_queue_.find(env.consumer_tag);
        if (it == consumer_queue_.end() || it->second.ordered) return false;
        Envelope& copy = env.envelope;
        if (!copy.headers.is_object() || copy.headers.contains(kDeliveryCountHeader)) return false;
        std::int64_t seen = 1;
        if (auto dc = copy.headers.find(kDeliveriesHeader);
            dc != copy.headers.end() && dc->is_number_integer())
            seen = std::clamp<std::int64_t>(dc->get<std::int64_t>(), 1, 1 << 20);
        copy.headers[std::string(kDeliveriesHeader)] = seen + 1;
        Wire w{"", it->second.queue, &copy, true};
        if (!e_->publish_wires(std::span<const Wire>(&w, 1))) {
            copy.headers[std::string(kDeliveriesHeader)] = seen;  // delivered anyway, as is
            return false;
        }
        if (amqp_basic_ack(conn_->raw(), kConsumeChannel, env.delivery_tag, 0) != AMQP_STATUS_OK)
            drop("ack failed");
        return true;
    }

    /// One delivery into `out`; false when none came in time (or the connection failed).
    bool receive(timeval tv, std::vector<Delivery>& out) {
        amqp_maybe_release_buffers(conn_->raw());
        Received env;
        auto r = consume_message(conn_->raw(), env, &tv);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            if (!count_redelivery(env)) out.push_back(to_delivery(env));
            return true;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            return false;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE && env.unexpected) {
            const amqp_frame_t& f = *env.unexpected;
            if (f.frame_type == AMQP_FRAME_METHOD) {
                switch (f.payload.method.id) {
                    case AMQP_CHANNEL_CLOSE_METHOD:
                    case AMQP_CONNECTION_CLOSE_METHOD: {
                        amqp_rpc_reply_t rr{};
                        rr.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION;
                        rr.reply = f.payload.method;
                        auto e = conn_->check(rr, kConsumeChannel, "consuming");
                        drop(e ? "closed" : e.error().message);
                        return false;
                    }
                    case AMQP_BASIC_CANCEL_METHOD:
                        drop("the queue was deleted");
                        return false;
                    default:
                        break;
                }
            }
            return true;  // something else (ignored): look again
        }
        drop(translate(r, "consuming").message);
        return false;
    }

    Result<void> settle(std::span<Settlement> ss) override {
        if (ss.empty()) {  // nothing new: acks that waited may be due
            flush_acks(false);
            return {};
        }
        std::vector<std::uint64_t> acks, requeue;
        std::vector<Wire> wires;
        std::vector<std::uint64_t> wire_tags;  // delivery acked once its messages are confirmed
        std::deque<Envelope> envs;             // dead letters, rpc results (stable addresses)
        std::deque<OutgoingMessage> retries;   // retries on their way to the delay levels
        std::deque<std::string> keys;
        auto now = SystemClock::now();
        auto local_tag = [&](const Settlement& s) -> std::optional<std::uint64_t> {
            if ((s.tag >> 40) != generation_ || !conn_) return std::nullopt;  // stale
            std::uint64_t tag = s.tag & ((std::uint64_t(1) << 40) - 1);
            if (!unsettled_.contains(tag)) return std::nullopt;
            return tag;
        };
        // Results first (redis: stored before anything is acked; a failure hands the
        // deliveries back, so no outcome is ever acked without its result).
        std::set<std::uint64_t> unstored;
        if (e_->results_mode == ResultsMode::redis) {
            std::vector<TaskResult> rs;
            std::vector<std::uint64_t> tags;
            for (auto& s : ss)
                if (auto tag = local_tag(s);
                    tag && s.result && s.kind != Settlement::Kind::release) {
                    rs.push_back(*s.result);
                    tags.push_back(*tag);
                }
            if (auto ok = e_->redis->store(rs); !ok) {
                fmt::print(stderr, "conveyor: {}; {} task(s) go back to their queue\n",
                           ok.error().message, tags.size());
                unstored.insert(tags.begin(), tags.end());
            }
        }
        for (auto& s : ss) {
            held_.erase(s.tag);
            auto local = local_tag(s);
            if (!local) continue;
            std::uint64_t tag = *local;
            const InFlight& from = unsettled_[tag];
            if (unstored.contains(tag)) {
                requeue.push_back(tag);
                continue;
            }
            if (e_->results_mode == ResultsMode::rpc && s.result && !from.reply_to.empty() &&
                s.kind != Settlement::Kind::release) {
                // Celery's rpc backend: to the sender's reply queue, correlated by task id.
                Envelope& env = envs.emplace_back(rpc_reply(*s.result));
                Wire w;
                w.exchange = "";
                w.routing_key = from.reply_to;
                w.envelope = &env;
                w.mandatory = false;  // a sender that went away loses only its own reply
                wires.push_back(w);
                wire_tags.push_back(tag);
            }
            switch (s.kind) {
                case Settlement::Kind::ack:
                    acks.push_back(tag);
                    break;
                case Settlement::Kind::release:
                    requeue.push_back(tag);
                    break;
                case Settlement::Kind::retry: {
                    if (auto spec = e_->spec_of(from.queue); spec && spec->partitions > 0) {
                        // Ordered queues keep their order: back to the head of the partition.
                        requeue.push_back(tag);
                        break;
                    }
                    auto& m = retries.emplace_back();
                    m.queue = from.queue;
                    m.envelope = std::move(s.envelope);
                    forget_deliveries(m.envelope);
                    m.not_before = s.not_before;
                    auto w = route(*e_, m, keys.emplace_back());
                    if (!w) {
                        requeue.push_back(tag);
                        break;
                    }
                    wires.push_back(*w);
                    wire_tags.push_back(tag);
                    break;
                }
                case Settlement::Kind::dead_letter: {
                    Envelope& env = envs.emplace_back(std::move(s.envelope));
                    forget_deliveries(env);
                    env.headers[std::string(kReasonHeader)] = s.reason;
                    env.headers[std::string(kDeadAtHeader)] = detail::to_epoch_ms(now);
                    keys.push_back(dead_queue(from.queue));
                    Wire w;
                    w.exchange = "";
                    w.routing_key = keys.back();
                    w.envelope = &env;
                    wires.push_back(w);
                    wire_tags.push_back(tag);
                    break;
                }
            }
        }
        // Messages first, confirmed; only then the deliveries they replace are acked.
        if (!wires.empty()) {
            if (auto ok = e_->publish_wires(wires); ok) {
                acks.insert(acks.end(), wire_tags.begin(), wire_tags.end());
            } else {
                fmt::print(stderr,
                           "conveyor: could not move {} message(s) ({}); they go back "
                           "to their queue\n",
                           wires.size(), ok.error().message);
                requeue.insert(requeue.end(), wire_tags.begin(), wire_tags.end());
                std::erase_if(acks, [&](std::uint64_t t) {
                    return std::find(wire_tags.begin(), wire_tags.end(), t) != wire_tags.end();
                });
            }
        }
        if (!conn_) return {};
        auto raw = conn_->raw();
        std::sort(requeue.begin(), requeue.end());
        requeue.erase(std::unique(requeue.begin(), requeue.end()), requeue.end());
        for (auto t : requeue) {
            unsettled_.erase(t);
            if (amqp_basic_nack(raw, kConsumeChannel, t, 0, 1) != AMQP_STATUS_OK) {
                drop("nack failed");
                return {};
            }
        }
        bool ordered = false;
        for (auto t : acks) {
            auto it = unsettled_.find(t);
            if (it == unsettled_.end()) continue;
            // After a crash, an ordered queue may run again its last task of a key, never
            // several: its acks do not wait.
            ordered = ordered || it->second.ordered;
            unsettled_.erase(it);
            deferred_.insert(t);
        }
        flush_acks(ordered);
        return {};
    }

    /// Acks what is settled: one multiple-ack for every settled tag below the oldest delivery
    /// still held (most of them, as handlers finish roughly in order); the others wait for the
    /// next call, but at most kAckDelay, kAckBacklog tags or a quarter of the prefetch window,
    /// then they are acked one by one.
    void flush_acks(bool all) {
        constexpr auto kAckDelay = milliseconds(100);
        constexpr std::size_t kAckBacklog = 512;
        constexpr auto kAckLinger = milliseconds(5);
        constexpr std::size_t kAckBatch = 128;
        if (!conn_ || deferred_.empty()) return;
        auto raw = conn_->raw();
        std::uint64_t oldest_held = unsettled_.empty() ? UINT64_MAX : unsettled_.begin()->first;
        auto covered = deferred_.lower_bound(oldest_held);
        auto now = steady_clock::now();
        if (!deferred_since_) deferred_since_ = now;
        // Covered acks go in one frame per kAckBatch tags (or kAckLinger), not per call.
        // Settled deliveries not yet acked still count against the prefetch window: never let
        // them take more than a quarter of it.
        const std::size_t window_share = std::max<std::size_t>(1, opts_.prefetch / 4);
        const std::size_t batch = std::min(kAckBatch, window_share);
        std::size_t n_covered = 0;  // counted up to `batch` only
        for (auto it = deferred_.begin(); it != covered && n_covered < batch; ++it) ++n_covered;
        bool linger =
            !all && !unsettled_.empty() && n_covered < batch && now - *deferred_since_ < kAckLinger;
        if (covered != deferred_.begin() && !linger) {
            std::uint64_t last = *std::prev(covered);
            deferred_.erase(deferred_.begin(), covered);
            if (amqp_basic_ack(raw, kConsumeChannel, last, 1) != AMQP_STATUS_OK) {
                drop("ack failed");
                return;
            }
        }
        if (deferred_.empty()) {
            deferred_since_.reset();
            return;
        }
        if (!all && deferred_.size() < std::min(kAckBacklog, window_share) &&
            now - *deferred_since_ < kAckDelay)
            return;
        for (auto t : deferred_) {
            if (amqp_basic_ack(raw, kConsumeChannel, t, 0) != AMQP_STATUS_OK) {
                drop("ack failed");
                return;
            }
        }
        deferred_.clear();
        deferred_since_.reset();
    }

    /// basic.consume on `physical`, under a consumer tag of its own.
    Result<void> start_consuming(Connection& conn, const std::string& physical,
                                 const Source& source) {
        std::string ctag =
            fmt::format("{}.{}", opts_.name.empty() ? "conveyor" : opts_.name, next_ctag_++);
        consumer_queue_[ctag] = source;
        Pool pool;
        amqp_basic_consume(conn.raw(), kConsumeChannel, pool.bytes(physical), pool.bytes(ctag), 0,
                           0, 0, amqp_empty_table);
        return conn.check(amqp_get_rpc_reply(conn.raw()), kConsumeChannel,
                          fmt::format("consuming from queue '{}'", physical));
    }

    Result<void> set_consuming(const std::string& queue, bool consume) override {
        auto& qs = opts_.queues;
        bool has = std::find(qs.begin(), qs.end(), queue) != qs.end();
        if (consume == has) return {};
        if (consume) {
            if (auto ok = e_->ensure_queues({queue}); !ok) return ok;
            qs.push_back(queue);
            std::vector<std::string> added;
            auto spec = e_->spec_of(queue);
            if (spec && spec->partitions > 0) {
                for (int i = 0; i < spec->partitions; ++i) {
                    physical_[partition_queue(queue, i)] = Source{queue, true};
                    added.push_back(partition_queue(queue, i));
                }
            } else {
                physical_[queue] = Source{queue, false};
                added.push_back(queue);
            }
            if (conn_ && conn_->healthy())
                for (auto& p : added)
                    if (auto ok = start_consuming(*conn_, p, physical_[p]); !ok) return ok;
            return {};
        }
        std::erase(qs, queue);
        std::erase_if(physical_, [&](const auto& kv) { return kv.second.queue == queue; });
        if (conn_ && conn_->healthy()) {
            Pool pool;
            for (auto& [ctag, source] : consumer_queue_) {
                if (source.queue != queue) continue;
                amqp_basic_cancel(conn_->raw(), kConsumeChannel, pool.bytes(ctag));
                if (auto ok = conn_->check(amqp_get_rpc_reply(conn_->raw()), kConsumeChannel,
                                           fmt::format("no longer consuming from '{}'", queue));
                    !ok)
                    return ok;
            }
        }
        return {};
    }

    Result<std::vector<std::uint64_t>> renew() override {
        // Deliveries of a connection that is gone are RabbitMQ's again (delivered anew,
        // perhaps to another worker): whoever still runs them should stop.
        std::vector<std::uint64_t> lost;
        for (auto it = held_.begin(); it != held_.end();) {
            if (!conn_ || (*it >> 40) != generation_) {
                lost.push_back(*it);
                it = held_.erase(it);
            } else {
                ++it;
            }
        }
        // No leases on RabbitMQ; keep the heartbeat going while every slot is busy.
        if (!conn_ || !conn_->healthy()) return lost;
        flush_acks(false);
        std::vector<Delivery> got;
        while (receive(timeval{0, 0}, got)) {
        }
        for (auto& d : got) buffered_.push_back(std::move(d));
        return lost;
    }

  private:
    std::shared_ptr<Engine> e_;
    ConsumerOptions opts_;
    std::map<std::string, Source> physical_;        // physical queue -> where it belongs
    std::map<std::string, Source> consumer_queue_;  // consumer tag -> where it belongs
    std::set<std::string> reported_;                // queues said to be unusable
    int next_ctag_ = 0;                             // consumer tags are NAME.N
    std::unique_ptr<Connection> conn_;
    std::uint64_t generation_ = 0;
    struct InFlight {
        std::string queue;     // logical queue
        std::string reply_to;  // rpc results go there
        bool ordered = false;  // from a partition of an ordered queue: acked without delay
    };
    std::map<std::uint64_t, InFlight> unsettled_;  // delivery tag -> where it came from
    std::set<std::uint64_t> deferred_;             // settled, ack not sent yet (flush_acks)
    std::optional<steady_clock::time_point> deferred_since_;
    std::deque<Delivery> buffered_;
    std::set<std::uint64_t> held_;  // handed out (generation-tagged) and not settled
    steady_clock::time_point next_attempt_{};
    milliseconds backoff_{100};
};

// ---------------------------------------------------------------------------------------------

/// This process's rpc reply queue: results of the tasks it sent come back here (Celery's rpc://
/// backend). Auto-deleted when the process goes; `x-expires` = result_expires otherwise.
class ReplyInbox {
  public:
    explicit ReplyInbox(std::shared_ptr<Engine> e) : e_(std::move(e)) {}

    Result<std::string> address() {
        std::lock_guard lk(mu_);
        if (auto ok = ensure(); !ok) return std::unexpected(ok.error());
        return queue_;
    }
    const std::string& name() const { return queue_; }

    /// Remembers ids sent with this reply queue, so their result reads PENDING until it comes.
    void sent(std::span<const OutgoingMessage> msgs) {
        std::lock_guard lk(mu_);
        for (auto& m : msgs) {
            if (m.envelope.reply_to != queue_ || queue_.empty()) continue;
            auto id = codec::envelope_id(m.envelope);
            if (id.empty() || known_.contains(id)) continue;
            TaskResult r;
            r.id = id;
            known_.emplace(id, std::move(r));
            remember(std::move(id));
        }
    }

    Result<TaskResult> get(std::string_view id) {
        std::lock_guard lk(mu_);
        if (conn_) drain(timeval{0, 0});
        if (auto it = known_.find(std::string(id)); it != known_.end()) return it->second;
        return not_sent(id);
    }

    Result<TaskResult> wait(std::string_view id, milliseconds timeout) {
        auto deadline = steady_clock::now() + timeout;
        for (;;) {
            {
                std::lock_guard lk(mu_);
                auto it = known_.find(std::string(id));
                if (it == known_.end()) {
                    // Not sent from here, but it may still come here: a later link of a
                    // workflow this process started replies to this queue too.
                    TaskResult pending;
                    pending.id = std::string(id);
                    it = known_.emplace(std::string(id), std::move(pending)).first;
                    remember(std::string(id));
                }
                if (it->second.ready()) return it->second;
                auto left = ceil<milliseconds>(deadline - steady_clock::now());
                if (left.count() <= 0)
                    return fail(Errc::timeout, fmt::format("task {} is still {} after the wait", id,
                                                           to_string(it->second.state)));
                if (!conn_ || !conn_->healthy()) {
                    // The reply queue went with the connection; results sent meanwhile are
                    // lost (rpc semantics). Declare it again for the ones still coming.
                    if (auto ok = ensure(); !ok) return std::unexpected(ok.error());
                }
                auto slice = std::min(left, milliseconds(100));
                drain(timeval{time_t(slice.count() / 1000),
                              suseconds_t(slice.count() % 1000 * 1000)});
            }
            std::this_thread::yield();
        }
    }

  private:
    static Result<TaskResult> not_sent(std::string_view id) {
        return fail(Errc::invalid_argument,
                    fmt::format("task {} was not sent by this process: rpc results go only to "
                                "the sender; to read results from anywhere, add "
                                "?results=redis://HOST:PORT/DB to the broker URL",
                                id));
    }

    Result<void> ensure() {
        if (conn_ && conn_->healthy()) return {};
        conn_.reset();
        auto c = Connection::open(e_->opts, "conveyor-replies");
        if (!c) return std::unexpected(c.error());
        if (queue_.empty()) queue_ = make_task_id();
        Json args = {{"x-expires", std::int64_t(e_->opts.result_expires.count()) * 1000}};
        if (auto q = (*c)->declare_queue(queue_, args, {.durable = false, .auto_delete = true}); !q)
            return std::unexpected(q.error());
        auto& conn = **c;
        if (auto ok = conn.ensure_channel(kConsumeChannel); !ok) return ok;
        Pool pool;
        amqp_basic_consume(conn.raw(), kConsumeChannel, pool.bytes(queue_), amqp_empty_bytes, 0, 1,
                           0, amqp_empty_table);
        if (auto ok = conn.check(amqp_get_rpc_reply(conn.raw()), kConsumeChannel,
                                 fmt::format("consuming replies from '{}'", queue_));
            !ok)
            return ok;
        conn_ = std::move(*c);
        return {};
    }

    /// Reads every reply that arrives within `first` (then whatever is already there).
    void drain(timeval first) {
        timeval tv = first;
        while (conn_ && conn_->healthy()) {
            amqp_maybe_release_buffers(conn_->raw());
            Received env;
            auto r = consume_message(conn_->raw(), env, &tv);
            tv = timeval{0, 0};
            if (r.reply_type == AMQP_RESPONSE_NORMAL) {
                auto res = result_meta::decode(env.envelope.body);
                if (res) {
                    if (res->id.empty()) res->id = env.envelope.correlation_id;
                    if (!res->id.empty()) {
                        auto [it, fresh] = known_.insert_or_assign(res->id, *res);
                        if (fresh) remember(res->id);
                    }
                }
                continue;
            }
            if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                r.library_error == AMQP_STATUS_TIMEOUT)
                return;
            if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                r.library_error == AMQP_STATUS_UNEXPECTED_STATE && env.unexpected &&
                Connection::pass_unexpected_frame(*env.unexpected))
                continue;
            conn_.reset();
            return;
        }
    }

    void remember(std::string id) {
        order_.push_back(std::move(id));
        while (order_.size() > kKeep) {
            known_.erase(order_.front());
            order_.pop_front();
        }
    }

    static constexpr std::size_t kKeep = 100000;
    std::shared_ptr<Engine> e_;
    std::mutex mu_;
    std::unique_ptr<Connection> conn_;
    std::string queue_;
    std::unordered_map<std::string, TaskResult> known_;
    std::deque<std::string> order_;
};

/// Schedules on RabbitMQ. Leadership: an exclusive queue, which only one connection can hold
/// and which goes when that connection dies. Each fire is one publish to the direct exchange
/// `conveyor.scheduler.fires`, which routes it both to the task's queue and to the schedule's
/// record (`conveyor.scheduler.state.NAME`, a durable queue keeping its newest message), so a
/// fire is published and recorded at once, or not at all. CLI schedules and pause flags live
/// in `conveyor.scheduler.schedules` (also newest message wins).
class AmqpScheduleStore final : public ScheduleStore {
  public:
    explicit AmqpScheduleStore(std::shared_ptr<Engine> e) : e_(std::move(e)) {}

    Result<bool> lead(std::string_view, milliseconds) override {
        if (leading_ && conn_ && conn_->healthy()) {
            // Still ours while the connection lives; look at it (heartbeats, closes).
            amqp_frame_t f;
            timeval zero{0, 0};
            int rc = amqp_simple_wait_frame_noblock(conn_->raw(), &f, &zero);
            bool closed = rc == AMQP_STATUS_OK && f.frame_type == AMQP_FRAME_METHOD &&
                          (f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD ||
                           f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD);
            if ((rc == AMQP_STATUS_OK || rc == AMQP_STATUS_TIMEOUT) && !closed) return true;
            conn_.reset();
        }
        leading_ = false;
        marks_.clear();  // read again from the records: another leader may have fired since
        if (auto ok = connect(); !ok) return std::unexpected(ok.error());
        auto q = conn_->declare_queue(kLeaderQueue, Json::object(),
                                      {.durable = false, .exclusive = true});
        if (!q) {
            if (q.error().code == Errc::conflict) return false;  // another scheduler leads
            return std::unexpected(q.error());
        }
        leading_ = true;
        return true;
    }

    Result<void> resign(std::string_view) override {
        leading_ = false;
        conn_.reset();  // the exclusive queue goes with the connection
        return {};
    }

    Result<std::map<std::string, Mark>> last_fires(const std::vector<std::string>& names) override {
        if (auto ok = connect(); !ok) return std::unexpected(ok.error());
        std::map<std::string, Mark> out;
        for (auto& name : names) {
            if (!leading_ || !marks_.contains(name)) {
                // Not known yet (or not leading): the schedule's record says.
                if (auto ok = ensure_record(name); !ok) return std::unexpected(ok.error());
                auto rec = read_one(record_queue(name), 1);
                if (!rec) return std::unexpected(rec.error());
                std::optional<Mark> m;
                if (rec->is_object()) m = mark_of(*rec);
                if (!leading_) {
                    if (m) out[name] = *m;
                    continue;
                }
                marks_[name] = m;
            }
            if (auto& m = marks_[name]) out[name] = *m;
        }
        return out;
    }

    Result<bool> fire(std::string_view owner, std::span<const ScheduleFire> fires) override {
        auto still = lead(owner, milliseconds(0));
        if (!still) return std::unexpected(still.error());
        if (!*still) return false;
        std::deque<Envelope> envs;
        std::deque<std::string> keys;
        std::vector<Wire> wires;
        std::map<std::string, Mark> next;
        for (auto& f : fires) {
            if (auto ok = ensure_record(f.schedule); !ok) return std::unexpected(ok.error());
            Mark m = next.contains(f.schedule) ? next[f.schedule]
                     : marks_[f.schedule]      ? *marks_[f.schedule]
                                               : Mark{};
            m.last_fire = std::max(m.last_fire, f.at);
            Envelope* env = nullptr;
            if (f.message) {
                auto spec = e_->spec_of(f.message->queue);
                if (f.message->queue.empty() || (spec && spec->partitions > 0))
                    return fail(
                        Errc::invalid_argument,
                        fmt::format("schedule '{}': its queue must be a plain queue", f.schedule));
                if (auto ok = ensure_route(f.schedule, f.message->queue); !ok)
                    return std::unexpected(ok.error());
                m.last_run = f.at;
                env = &envs.emplace_back(f.message->envelope);
                keys.push_back("run:" + f.schedule);
            } else {
                env = &envs.emplace_back();
                env->content_type = std::string(codec::kJson);
                env->body = "{}";
                keys.push_back("mark:" + f.schedule);
            }
            env->headers["x-conveyor-schedule"] = f.schedule;
            env->headers["x-conveyor-last-fire"] = detail::to_epoch_ms(m.last_fire);
            if (m.last_run) env->headers["x-conveyor-last-run"] = detail::to_epoch_ms(*m.last_run);
            wires.push_back(Wire{kFiresExchange, keys.back(), env, true});
            next[f.schedule] = m;
        }
        if (auto ok = e_->publish_wires(wires); !ok) {
            marks_.clear();  // unknown which were published: read the records again
            return std::unexpected(ok.error());
        }
        for (auto& [name, m] : next) marks_[name] = m;
        return true;
    }

    Result<Overrides> overrides() override {
        auto cfg = config(1);
        if (!cfg) return std::unexpected(cfg.error());
        Overrides out;
        Json all = cfg->value("added", Json::object());
        for (auto& [_, v] : all.items()) out.added.push_back(v);
        Json flags = cfg->value("paused", Json::object());
        for (auto& [k, v] : flags.items())
            if (v.is_boolean()) out.paused[k] = v.get<bool>();
        return out;
    }

    Result<void> add(const Json& schedule) override {
        auto cfg = config();
        if (!cfg) return std::unexpected(cfg.error());
        (*cfg)["added"][schedule.value("name", "")] = schedule;
        return write_config(*cfg);
    }

    Result<bool> remove(std::string_view name) override {
        auto cfg = config();
        if (!cfg) return std::unexpected(cfg.error());
        auto& a = (*cfg)["added"];
        bool had = a.is_object() && a.contains(std::string(name));
        if (had) a.erase(std::string(name));
        if (auto p = cfg->find("paused"); p != cfg->end() && p->is_object())
            p->erase(std::string(name));
        if (auto ok = write_config(*cfg); !ok) return std::unexpected(ok.error());
        return had;
    }

    Result<void> set_paused(std::string_view name, bool paused) override {
        auto cfg = config();
        if (!cfg) return std::unexpected(cfg.error());
        (*cfg)["paused"][std::string(name)] = paused;
        return write_config(*cfg);
    }

  private:
    static constexpr std::string_view kLeaderQueue = "conveyor.scheduler.leader";
    static constexpr std::string_view kFiresExchange = "conveyor.scheduler.fires";
    static constexpr std::string_view kConfigQueue = "conveyor.scheduler.schedules";

    static std::string record_queue(std::string_view name) {
        return fmt::format("conveyor.scheduler.state.{}", name);
    }
    static Json one_message() { return {{"x-max-length", 1}, {"x-overflow", "drop-head"}}; }

    static Mark mark_of(const Json& headers) {
        Mark m;
        if (auto f = headers.find("x-conveyor-last-fire"); f != headers.end() && f->is_number())
            m.last_fire = detail::from_epoch_ms(f->get<std::int64_t>());
        if (auto r = headers.find("x-conveyor-last-run"); r != headers.end() && r->is_number())
            m.last_run = detail::from_epoch_ms(r->get<std::int64_t>());
        return m;
    }

    Result<void> connect() {
        if (conn_ && conn_->healthy()) return {};
        conn_.reset();
        leading_ = false;
        records_.clear();
        routes_.clear();
        auto c = Connection::open(e_->opts, "conveyor-scheduler");
        if (!c) return std::unexpected(c.error());
        if (auto d = (*c)->declare_queue(kConfigQueue, one_message()); !d)
            return std::unexpected(d.error());
        if (auto x =
                (*c)->declare_exchange(kFiresExchange, "direct", {.durable = true}, Json::object());
            !x)
            return x;
        conn_ = std::move(*c);
        return {};
    }

    Result<void> ensure_record(const std::string& name) {
        if (records_.contains(name)) return {};
        auto q = record_queue(name);
        if (auto d = conn_->declare_queue(q, one_message()); !d) return std::unexpected(d.error());
        for (auto key : {"run:" + name, "mark:" + name})
            if (auto ok = conn_->bind_queue(q, kFiresExchange, key); !ok) return ok;
        records_.insert(name);
        return {};
    }

    Result<void> ensure_route(const std::string& name, const std::string& queue) {
        if (routes_.contains({name, queue})) return {};
        if (auto ok = e_->ensure_queues({queue}); !ok) return ok;
        if (auto ok = conn_->bind_queue(queue, kFiresExchange, "run:" + name); !ok) return ok;
        routes_.insert({name, queue});
        return {};
    }

    /// The CLI's schedules and pause flags. Writers look harder: an empty read may only mean
    /// that another reader holds the message for a moment.
    Result<Json> config(int attempts = 5) {
        if (auto ok = connect(); !ok) return std::unexpected(ok.error());
        auto j = read_one(kConfigQueue, attempts, /*body=*/true);
        if (!j) return std::unexpected(j.error());
        // Nothing there: never written, or held by another reader right now. The last one
        // seen stands (a removal writes an object, never nothing).
        if (j->is_object()) config_ = *j;
        return config_;
    }

    Result<void> write_config(const Json& value) {
        Envelope env;
        env.content_type = std::string(codec::kJson);
        env.body = value.dump();
        Wire w{"", kConfigQueue, &env, true};
        return e_->publish_wires(std::span<const Wire>(&w, 1));
    }

    /// The newest message of a one-message queue, left in place: its body (`body`) or its
    /// headers; null when the queue is empty.
    Result<Json> read_one(std::string_view queue, int attempts, bool body = false) {
        for (int i = 0; i < attempts; ++i) {
            if (i > 0) std::this_thread::sleep_for(milliseconds(20));
            if (auto ok = conn_->ensure_channel(kBrowseChannel); !ok)
                return std::unexpected(ok.error());
            Pool pool;
            auto r = amqp_basic_get(conn_->raw(), kBrowseChannel, pool.bytes(queue), 0);
            if (auto ok = conn_->check(r, kBrowseChannel, "reading schedules"); !ok)
                return std::unexpected(ok.error());
            if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) continue;
            auto tag = static_cast<amqp_basic_get_ok_t*>(r.reply.decoded)->delivery_tag;
            amqp_message_t msg;
            auto rr = amqp_read_message(conn_->raw(), kBrowseChannel, &msg, 0);
            if (auto ok = conn_->check(rr, kBrowseChannel, "reading schedules"); !ok)
                return std::unexpected(ok.error());
            Envelope env = envelope_of(msg.properties, msg.body);
            amqp_destroy_message(&msg);
            amqp_basic_nack(conn_->raw(), kBrowseChannel, tag, 0, 1);  // back in place
            if (!body) return env.headers;
            Json j = Json::parse(env.body, nullptr, false);
            return j.is_discarded() ? Json() : j;
        }
        return Json();
    }

    std::shared_ptr<Engine> e_;
    std::unique_ptr<Connection> conn_;
    bool leading_ = false;
    std::map<std::string, std::optional<Mark>> marks_;  // while leading: what was recorded
    std::set<std::string> records_;
    std::set<std::pair<std::string, std::string>> routes_;
    Json config_ = Json::object();
};

class AmqpBroker final : public Broker {
  public:
    explicit AmqpBroker(std::shared_ptr<Engine> e) : e_(std::move(e)), inbox_(e_) {}

    Result<void> publish(std::span<const OutgoingMessage> msgs) override {
        if (e_->results_mode == ResultsMode::rpc) inbox_.sent(msgs);
        return publish_messages(*e_, msgs);
    }

    Result<std::unique_ptr<Consumer>> consume(const ConsumerOptions& o) override {
        if (o.queues.empty()) return fail(Errc::invalid_argument, "a consumer needs queues");
        auto c = std::make_unique<AmqpConsumer>(e_, o);
        if (auto ok = c->open_first(); !ok) return std::unexpected(ok.error());
        return std::unique_ptr<Consumer>(std::move(c));
    }

    Result<std::vector<QueueStats>> stats() override {
        auto names = e_->known_queues();
        return e_->with_connection(
            e_->publish_deadline(), [&](Connection& c) -> Result<std::vector<QueueStats>> {
                std::vector<QueueStats> out;
                for (auto& n : names) {
                    QueueStats s;
                    s.queue = n;
                    s.in_flight = -1;  // not visible over AMQP 0-9-1
                    auto spec = e_->spec_of(n);
                    bool found = false;
                    if (spec && spec->partitions > 0) {
                        for (int i = 0; i < spec->partitions; ++i)
                            if (auto q = c.declare_queue(partition_queue(n, i), Json::object(),
                                                         {.passive = true})) {
                                s.ready += q->messages;
                                found = true;
                            }
                    } else if (auto q = c.declare_queue(n, Json::object(), {.passive = true})) {
                        s.ready = q->messages;
                        found = true;
                    }
                    if (!c.healthy()) return fail(Errc::unavailable, "RabbitMQ connection lost");
                    if (auto d = c.declare_queue(dead_queue(n), Json::object(), {.passive = true}))
                        s.dead = d->messages;
                    if (found) out.push_back(s);
                }
                // Delayed messages wait in the shared delay levels, not per queue.
                QueueStats delayed;
                delayed.queue = "(delayed, all queues)";
                delayed.in_flight = -1;
                bool any = false;
                for (int level = 0; level < kDelayLevels; ++level)
                    if (auto q = c.declare_queue(delay_level_name(level), Json::object(),
                                                 {.passive = true})) {
                        delayed.delayed += q->messages;
                        any = true;
                    }
                if (auto q = c.declare_queue(kUnroutableQueue, Json::object(), {.passive = true}))
                    delayed.dead = q->messages;
                if (any) out.push_back(delayed);
                return out;
            });
    }

    Result<TaskResult> result(std::string_view id) override {
        switch (e_->results_mode) {
            case ResultsMode::redis:
                return e_->redis->get(id);
            case ResultsMode::rpc:
                return inbox_.get(id);
            case ResultsMode::none:
                break;
        }
        return results_off();
    }

    Result<TaskResult> wait_result(std::string_view id, milliseconds timeout) override {
        switch (e_->results_mode) {
            case ResultsMode::redis:
                return e_->redis->wait(id, timeout);
            case ResultsMode::rpc:
                return inbox_.wait(id, timeout);
            case ResultsMode::none:
                break;
        }
        return results_off();
    }

    Result<void> store_results(std::span<const TaskResult> results,
                               std::string_view reply_to) override {
        switch (e_->results_mode) {
            case ResultsMode::redis:
                return e_->redis->store(results);
            case ResultsMode::rpc: {
                if (reply_to.empty()) return {};
                std::vector<Envelope> envs;
                envs.reserve(results.size());
                std::vector<Wire> wires;
                for (auto& r : results) {
                    envs.push_back(rpc_reply(r));
                }
                for (auto& env : envs)
                    wires.push_back(Wire{"", reply_to, &env, /*mandatory=*/false});
                return e_->publish_wires(wires);
            }
            case ResultsMode::none:
                break;
        }
        return {};
    }

    Result<void> begin_chord(std::string_view group_id, std::size_t size) override {
        if (e_->results_mode != ResultsMode::redis) return Broker::begin_chord(group_id, size);
        return e_->redis->begin_chord(group_id, size);
    }

    Result<ChordParts> chord_part_done(std::string_view group_id, int index,
                                       const TaskResult& part) override {
        if (e_->results_mode != ResultsMode::redis)
            return Broker::chord_part_done(group_id, index, part);
        return e_->redis->chord_part_done(group_id, index, part);
    }

    Result<std::string> reply_to() override {
        if (e_->results_mode != ResultsMode::rpc) return std::string();
        return inbox_.address();
    }

    static Result<TaskResult> results_off() {
        return fail(Errc::invalid_argument,
                    "results are off for this broker (results=none); use results=rpc or "
                    "results=redis://HOST:PORT/DB");
    }

    /// Takes up to `limit` messages from a dead-letter queue without settling them; closing
    /// the channel afterwards puts back whatever was not acked, in order.
    template <class Fn>
    Result<std::size_t> browse_dead(std::string_view queue, std::size_t limit, Fn&& fn) {
        return e_->with_connection(
            e_->publish_deadline(), [&](Connection& c) -> Result<std::size_t> {
                auto dq = dead_queue(queue);
                if (auto q = c.declare_queue(dq, Json::object(), {.passive = true}); !q)
                    return q.error().code == Errc::not_found ? Result<std::size_t>(0)
                                                             : std::unexpected(q.error());
                if (auto ok = c.ensure_channel(kBrowseChannel); !ok)
                    return std::unexpected(ok.error());
                Pool pool;
                std::size_t n = 0, acted = 0;
                Result<std::size_t> out = std::size_t{0};
                while (n < limit) {
                    auto r = amqp_basic_get(c.raw(), kBrowseChannel, pool.bytes(dq), 0);
                    if (auto ok = c.check(r, kBrowseChannel, fmt::format("reading '{}'", dq)); !ok)
                        return std::unexpected(ok.error());
                    if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) break;
                    auto* ok = static_cast<amqp_basic_get_ok_t*>(r.reply.decoded);
                    std::uint64_t tag = ok->delivery_tag;
                    amqp_message_t msg;
                    auto rr = amqp_read_message(c.raw(), kBrowseChannel, &msg, 0);
                    if (auto ok2 = c.check(rr, kBrowseChannel, "reading a dead letter"); !ok2)
                        return std::unexpected(ok2.error());
                    Envelope env = envelope_of(msg.properties, msg.body);
                    amqp_destroy_message(&msg);
                    ++n;
                    auto act = fn(env);
                    if (!act) {
                        out = std::unexpected(act.error());
                        break;
                    }
                    if (*act) {
                        if (amqp_basic_ack(c.raw(), kBrowseChannel, tag, 0) != AMQP_STATUS_OK)
                            return fail(Errc::unavailable, "acking a dead letter failed");
                        ++acted;
                    }
                    amqp_maybe_release_buffers_on_channel(c.raw(), kBrowseChannel);
                }
                amqp_channel_close(c.raw(), kBrowseChannel, AMQP_REPLY_SUCCESS);
                c.channel_closed(kBrowseChannel);
                if (!out) return out;
                return acted;
            });
    }

    static DeadLetter to_dead_letter(std::string_view queue, const Envelope& env) {
        DeadLetter d;
        d.queue = std::string(queue);
        d.envelope = env;
        d.message_id = codec::envelope_id(env);
        if (auto it = env.headers.find(kReasonHeader); it != env.headers.end() && it->is_string())
            d.reason = it->get<std::string>();
        if (auto it = env.headers.find(kDeadAtHeader);
            it != env.headers.end() && it->is_number_integer())
            d.dead_at = detail::from_epoch_ms(it->get<std::int64_t>());
        d.envelope.headers.erase(std::string(kReasonHeader));
        d.envelope.headers.erase(std::string(kDeadAtHeader));
        return d;
    }

    Result<std::vector<DeadLetter>> dead_letters(std::string_view queue,
                                                 std::size_t limit) override {
        std::vector<DeadLetter> out;
        auto r = browse_dead(queue, limit, [&](const Envelope& env) -> Result<bool> {
            out.push_back(to_dead_letter(queue, env));
            return false;
        });
        if (!r) return std::unexpected(r.error());
        return out;
    }

    Result<std::size_t> replay_dead(std::string_view queue,
                                    std::span<const std::string> ids) override {
        std::set<std::string> wanted(ids.begin(), ids.end());
        std::size_t limit = std::size_t(-1);
        return browse_dead(queue, limit, [&](const Envelope& env) -> Result<bool> {
            auto d = to_dead_letter(queue, env);
            if (!wanted.empty() && !wanted.contains(d.message_id)) return false;
            OutgoingMessage m;
            m.queue = std::string(queue);
            m.envelope = std::move(d.envelope);
            if (m.envelope.headers.contains("retries")) m.envelope.headers["retries"] = 0;
            forget_deliveries(m.envelope);
            if (auto k = m.envelope.headers.find(kKeyHeader);
                k != m.envelope.headers.end() && k->is_string())
                m.ordering_key = k->get<std::string>();
            if (auto ok = publish_messages(*e_, std::span(&m, 1)); !ok)
                return std::unexpected(ok.error());
            return true;
        });
    }

    Result<std::size_t> purge_dead(std::string_view queue) override {
        return e_->with_connection(
            e_->publish_deadline(), [&](Connection& c) -> Result<std::size_t> {
                auto n = c.purge_queue(dead_queue(queue));
                if (!n)
                    return n.error().code == Errc::not_found ? Result<std::size_t>(0)
                                                             : std::unexpected(n.error());
                return std::size_t(*n);
            });
    }

    Result<std::unique_ptr<ScheduleStore>> schedule_store() override {
        return std::unique_ptr<ScheduleStore>(std::make_unique<AmqpScheduleStore>(e_));
    }

    Result<std::unique_ptr<ControlChannel>> control(std::string_view node) override {
        return make_control_channel(e_->opts, std::string(node));
    }

    Result<void> set_topology(const Topology& t) override { return e_->set_topology(t); }
    Result<void> declare_topology() override { return e_->declare_topology(); }
    std::string url() const override { return detail::redact_url(e_->url); }

  private:
    std::shared_ptr<Engine> e_;
    ReplyInbox inbox_;
};

}  // namespace

Result<std::shared_ptr<Broker>> open_amqp_broker(const detail::BrokerUrl& url,
                                                 std::string url_text) {
    (void)url;  // the text may hold a failover list: parsed whole
    auto o = parse_connection_options(url_text);
    if (!o) return std::unexpected(o.error());
    auto e = std::make_shared<Engine>(*o, std::move(url_text));
    if (o->results == "none") {
        e->results_mode = ResultsMode::none;
    } else if (o->results.starts_with("redis://")) {
        auto ro = results::parse_redis_url(o->results);
        if (!ro) return std::unexpected(ro.error());
        ro->expires = o->result_expires;
        e->redis = std::make_shared<results::RedisResults>(*ro);
        if (auto ok = e->redis->check(); !ok) return std::unexpected(ok.error());
        e->results_mode = ResultsMode::redis;
    }
    auto c = e->checkout();
    if (!c) return std::unexpected(c.error());
    e->checkin(std::move(*c));
    return std::shared_ptr<Broker>(std::make_shared<AmqpBroker>(e));
}

}  // namespace conveyor::amqp
