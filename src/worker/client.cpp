#include "conveyor/client.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <thread>

#include "core/codec.hpp"

namespace conveyor {

Client::Client(std::shared_ptr<Broker> broker, Config config)
    : broker_(std::move(broker)), config_(std::move(config)) {}

Result<OutgoingMessage> Client::prepare(TaskMessage t, const EnqueueOptions& o) const {
    if (t.name.empty()) return fail(Errc::invalid_argument, "task name is empty");
    if (!t.args.is_array()) return fail(Errc::invalid_argument, "args must be a JSON array");
    if (!t.kwargs.is_object()) return fail(Errc::invalid_argument, "kwargs must be a JSON object");
    if (t.id.empty()) t.id = o.id.empty() ? make_task_id() : o.id;
    if (o.priority) t.priority = *o.priority;
    if (t.priority < 0 || t.priority > 255)
        return fail(Errc::invalid_argument, "priority must be 0..255");
    if (o.max_retries) t.max_retries = *o.max_retries;
    if (o.expires) t.expires = *o.expires;
    if (!t.eta) {
        if (o.eta)
            t.eta = *o.eta;
        else if (o.countdown)
            t.eta = SystemClock::now() + *o.countdown;
    }
    if (t.reply_to.empty() && !t.ignore_result) {
        auto reply = broker_->reply_to();
        if (!reply) return std::unexpected(reply.error());
        t.reply_to = std::move(*reply);
    }
    if (t.origin.empty()) {
        static const std::string origin = [] {
            char host[256] = {};
            gethostname(host, sizeof host - 1);
            return fmt::format("conveyor{}@{}", getpid(), host);
        }();
        t.origin = origin;
    }
    OutgoingMessage m;
    m.queue = !o.queue.empty() ? o.queue : config_.queue_for(t.name);
    m.not_before = t.eta;
    m.exchange = o.exchange;
    m.routing_key = o.routing_key;
    m.ordering_key = o.ordering_key;
    if (const QueueConfig* q = m.exchange.empty() ? config_.find_queue(m.queue) : nullptr;
        q && q->format == QueueFormat::raw) {
        auto env = codec::encode_raw(t, m.queue);
        if (!env) return std::unexpected(env.error());
        m.envelope = std::move(*env);
        return m;
    }
    m.envelope = codec::encode(t);
    return m;
}

Result<std::string> Client::enqueue(std::string_view task, Json args, Json kwargs,
                                    const EnqueueOptions& o) {
    TaskMessage t;
    t.name = std::string(task);
    t.args = std::move(args);
    t.kwargs = std::move(kwargs);
    auto m = prepare(std::move(t), o);
    if (!m) return std::unexpected(m.error());
    std::string id = codec::envelope_id(m->envelope);
    if (auto ok = broker_->publish(std::span(&*m, 1)); !ok) return std::unexpected(ok.error());
    return id;
}

Result<std::vector<std::string>> Client::enqueue_many(std::vector<TaskMessage> tasks,
                                                      const EnqueueOptions& o) {
    std::vector<OutgoingMessage> msgs;
    std::vector<std::string> ids;
    msgs.reserve(tasks.size());
    ids.reserve(tasks.size());
    EnqueueOptions common = o;
    common.id.clear();
    for (auto& t : tasks) {
        auto m = prepare(std::move(t), common);
        if (!m) return std::unexpected(m.error());
        ids.push_back(codec::envelope_id(m->envelope));
        msgs.push_back(std::move(*m));
    }
    if (auto ok = broker_->publish(msgs); !ok) return std::unexpected(ok.error());
    return ids;
}

Result<TaskResult> Client::result(std::string_view id) { return broker_->result(id); }

Result<TaskResult> Client::wait(std::string_view id, std::chrono::milliseconds timeout) {
    return broker_->wait_result(id, timeout);
}

}  // namespace conveyor
