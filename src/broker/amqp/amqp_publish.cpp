// Publishing tasks on RabbitMQ: routing and confirmed publishing of outgoing messages.
#include "broker/amqp/amqp_publish.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <deque>

#include "broker/amqp/amqp_names.hpp"
#include "broker/amqp/delay.hpp"
#include "core/codec.hpp"
#include "core/result_meta.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor::amqp {

Envelope rpc_reply(const TaskResult& r) {
    Envelope env;
    env.content_type = std::string(codec::kJson);
    env.content_encoding = "utf-8";
    env.correlation_id = r.id;
    env.body = result_meta::encode(r, result_meta::Style::rpc);
    return env;
}

Result<Wire> route(Engine& e, const OutgoingMessage& m, std::string& key_storage) {
    Wire w;
    w.envelope = &m.envelope;
    w.task = m.task.get();
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
        key_storage = !m.ordering_key.empty() ? m.ordering_key
                      : !m.task_id.empty()    ? m.task_id
                      : m.task                ? m.task->id
                                              : codec::envelope_id(m.envelope);
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
    CONVEYOR_TRY(e.ensure_queues(queues));

    std::deque<std::string> keys;
    std::deque<std::string> bodies;  // of tasks passed as they are (OutgoingMessage::task)
    std::vector<Wire> wires;
    wires.reserve(msgs.size());
    std::vector<OutgoingMessage> keyed;  // envelopes that need the ordering-key header
    keyed.reserve(msgs.size());
    for (auto& m : msgs) {
        const OutgoingMessage* src = &m;
        if (!m.ordering_key.empty()) {
            keyed.push_back(m);
            auto& k = keyed.back();
            if (k.task) {  // encoded after all, for the header
                k.envelope = codec::encode(*k.task);
                k.task.reset();
            }
            k.envelope.headers[std::string(kKeyHeader)] = m.ordering_key;
            src = &k;
        }
        auto w = route(e, *src, keys.emplace_back());
        CONVEYOR_TRY(w);
        if (w->task) w->body = bodies.emplace_back(codec::encode_body(*w->task));
        wires.push_back(*w);
    }
    return e.publish_wires(wires);
}

}  // namespace conveyor::amqp
