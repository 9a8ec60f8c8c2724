// What the amqp engine declares on RabbitMQ: the delay levels, each queue with its dead-letter
// queue and partitions, the configured exchanges and bindings; and what a conflict means.
#include <fmt/format.h>

#include <map>
#include <regex>

#include "broker/amqp/amqp_engine.hpp"
#include "broker/amqp/amqp_names.hpp"
#include "broker/amqp/delay.hpp"
#include "core/try.hpp"

namespace conveyor::amqp {

namespace {

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

}  // namespace

Json queue_arguments(const QueueSpec& q) {
    Json a = q.arguments.is_object() ? q.arguments : Json::object();
    if (q.type != "classic") a["x-queue-type"] = q.type;
    if (q.max_priority > 0) a["x-max-priority"] = q.max_priority;
    if (q.max_length > 0) a["x-max-length"] = q.max_length;
    if (!q.overflow.empty()) a["x-overflow"] = q.overflow;
    return a;
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

Result<void> Engine::set_topology(const Topology& t) {
    std::lock_guard lk(topo_mu_);
    topology_ = t;
    specs_.clear();
    for (auto& q : t.queues) {
        if (!q.fair_key.empty())
            return fail(Errc::invalid_argument,
                        fmt::format("fair queue '{}' (fair_key) needs the sqlite engine; on "
                                    "RabbitMQ an ordered queue (partitions) keeps keys apart, "
                                    "without turns",
                                    q.name));
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

std::optional<QueueSpec> Engine::spec_of(std::string_view queue) {
    std::lock_guard lk(topo_mu_);
    auto it = specs_.find(std::string(queue));
    if (it == specs_.end()) return std::nullopt;
    return it->second;
}

std::vector<std::string> Engine::known_queues() {
    std::lock_guard lk(topo_mu_);
    std::set<std::string> names(ensured_.begin(), ensured_.end());
    for (auto& [n, _] : specs_) names.insert(n);
    return {names.begin(), names.end()};
}

Result<void> Engine::declare_delay_infrastructure(Connection& c) {
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
    CONVEYOR_TRY(
        c.declare_exchange(kUnroutableExchange, "fanout", {.durable = true}, Json::object()));
    CONVEYOR_TRY(c.declare_exchange(kDeliverExchange, "topic", {.durable = true},
                                    {{"alternate-exchange", std::string(kUnroutableExchange)}}));
    for (int level = kDelayLevels - 1; level >= 0; --level)
        CONVEYOR_TRY(c.declare_exchange(delay_level_name(level), "topic", {.durable = true},
                                        Json::object()));
    // Exchange-to-exchange bindings once every exchange exists.
    for (int level = kDelayLevels - 1; level >= 0; --level) {
        std::string_view next = level == 0 ? kDeliverExchange : delay_level_name(level - 1);
        CONVEYOR_TRY(
            c.bind_exchange(next, delay_level_name(level), delay_binding_key(level, false)));
    }
    for (int level = kDelayLevels - 1; level >= 0; --level) {
        std::string_view name = delay_level_name(level);
        std::string_view next = level == 0 ? kDeliverExchange : delay_level_name(level - 1);
        Json args = level_args_base;
        args["x-message-ttl"] = (std::int64_t(1) << level) * 1000;
        args["x-dead-letter-exchange"] = std::string(next);
        CONVEYOR_TRY(c.declare_queue(name, args));
        CONVEYOR_TRY(c.bind_queue(name, name, delay_binding_key(level, true)));
    }
    // Of the delay levels' type: a classic queue is gone while its one node is down, and
    // then nothing could be delayed in a cluster that lost that node. Declared last, so its
    // presence means the rest exists.
    Json unroutable_args = Json::object();
    if (opts.delay_queue_type == "quorum") unroutable_args["x-queue-type"] = "quorum";
    CONVEYOR_TRY(c.declare_queue(kUnroutableQueue, unroutable_args));
    CONVEYOR_TRY(c.bind_queue(kUnroutableQueue, kUnroutableExchange, ""));
    delay_ready_ = true;
    return {};
}

Result<void> Engine::declare_queue(Connection& c, const QueueSpec& q) {
    if (q.name.empty()) return fail(Errc::invalid_argument, "a queue needs a name");
    CONVEYOR_TRY(declare_delay_infrastructure(c));
    if (q.partitions > 0) {
        CONVEYOR_TRY(
            c.declare_exchange(q.name, "x-consistent-hash", {.durable = true}, Json::object()));
        for (int i = 0; i < q.partitions; ++i) {
            Json args = queue_arguments(q);
            args["x-single-active-consumer"] = true;
            auto p = partition_queue(q.name, i);
            CONVEYOR_TRY(c.declare_queue(p, args));
            CONVEYOR_TRY(c.bind_queue(p, q.name, "1"));
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
        CONVEYOR_TRY(c.bind_queue(q.name, kDeliverExchange, "#." + routing_word(q.name)));
    } else {
        if (auto ok = c.declare_queue(
                q.name, queue_arguments(q),
                {.durable = q.durable, .auto_delete = q.auto_delete, .exclusive = q.exclusive});
            !ok)
            return std::unexpected(explain_conflict(ok.error(), "queue", q.name));
        CONVEYOR_TRY(c.bind_queue(q.name, kDeliverExchange, "#." + routing_word(q.name)));
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

Result<void> Engine::ensure_queues(const std::vector<std::string>& names) {
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
        for (auto& q : todo) CONVEYOR_TRY(declare_queue(c, q));
        return {};
    });
    if (!r) return r;
    std::lock_guard lk(topo_mu_);
    for (auto& q : todo) ensured_.insert(q.name);
    return {};
}

Result<std::string> Engine::ensure_wait_queue(std::string_view queue, std::string_view task) {
    std::string name = wait_queue(queue, task);
    {
        std::lock_guard lk(topo_mu_);
        if (waits_.contains(name)) return name;
    }
    Json args = Json::object();
    if (opts.delay_queue_type == "quorum") {
        args["x-queue-type"] = "quorum";
        args["x-dead-letter-strategy"] = "at-least-once";
        args["x-overflow"] = "reject-publish";
    }
    args["x-message-ttl"] = std::int64_t(kWaitBackstop.count());
    args["x-dead-letter-exchange"] = "";
    args["x-dead-letter-routing-key"] = std::string(queue);
    auto r = with_connection(publish_deadline(), [&](Connection& c) -> Result<void> {
        if (auto ok = c.declare_queue(name, args); !ok)
            return std::unexpected(explain_conflict(ok.error(), "queue", name));
        return {};
    });
    CONVEYOR_TRY(r);
    std::lock_guard lk(topo_mu_);
    waits_.insert(name);
    return name;
}

void Engine::forget_wait_queue(const std::string& name) {
    std::lock_guard lk(topo_mu_);
    waits_.erase(name);
}

Result<bool> Engine::wake_one(const std::string& wait_queue) {
    // Not for long: a task not woken comes back by itself (kWaitBackstop), and the caller is
    // settling or fetching.
    return with_connection(
        steady_clock::now() + milliseconds(500),
        [&](Connection& c) -> Result<bool> { return c.dead_letter_oldest(wait_queue); });
}

Result<void> Engine::declare_topology() {
    Topology t;
    {
        std::lock_guard lk(topo_mu_);
        t = topology_;
    }
    auto r = with_connection(publish_deadline(), [&](Connection& c) -> Result<void> {
        CONVEYOR_TRY(declare_delay_infrastructure(c));
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
        for (auto& q : t.queues) CONVEYOR_TRY(declare_queue(c, q));
        for (auto& b : t.bindings) {
            auto ok = b.to_exchange.empty()
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

}  // namespace conveyor::amqp
