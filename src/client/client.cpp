#include "conveyor/client.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <thread>

#include "broker/publish_moved.hpp"
#include "client/canvas.hpp"
#include "client/outgoing.hpp"
#include "core/codec.hpp"
#include "core/json_bounds.hpp"
#include "core/node.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor {

Client::Client(std::shared_ptr<Broker> broker, Config config)
    : broker_(std::move(broker)), config_(std::move(config)) {}

Result<OutgoingMessage> Client::prepare(TaskMessage t, const EnqueueOptions& o) const {
    if (t.id.empty()) t.id = o.id;
    if (o.priority) t.priority = *o.priority;
    if (o.max_retries) t.max_retries = *o.max_retries;
    if (o.expires) t.expires = *o.expires;
    if (!t.eta) {
        if (o.eta)
            t.eta = *o.eta;
        else if (o.countdown)
            t.eta = detail::add_clamped(SystemClock::now(), *o.countdown);
    }
    // Times from the caller are checked (times from the wire are taken as they are).
    if (t.eta)
        CONVEYOR_TRY(
            detail::check_time(*t.eta, o.countdown && !o.eta ? "the countdown's end" : "the eta"));
    if (t.expires) CONVEYOR_TRY(detail::check_time(*t.expires, "the expiry time"));
    if (t.reply_to.empty() && !t.ignore_result && !t.name.empty()) {
        auto reply = broker_->reply_to();
        CONVEYOR_TRY(reply);
        t.reply_to = std::move(*reply);
    }
    detail::Destination to;
    to.queue = !o.queue.empty() ? o.queue : config_.queue_for(t.name);
    to.exchange = o.exchange;
    to.routing_key = o.routing_key;
    to.ordering_key = o.ordering_key;
    to.raw = o.raw || config_.publishes_raw(to.exchange, to.queue);
    if (to.raw && !o.content_type.empty()) t.content_type = o.content_type;
    return detail::make_outgoing(std::move(t), to, detail::task_form(*broker_));
}

Result<std::string> Client::enqueue(std::string_view task, Json args, Json kwargs,
                                    const EnqueueOptions& o) {
    TaskMessage t;
    t.name = std::string(task);
    t.args = std::move(args);
    t.kwargs = std::move(kwargs);
    if (o.unique_for && o.unique_key.empty())
        return fail(Errc::invalid_argument, "unique_for needs a unique_key");
    if (o.unique_key.size() > 1024)
        return fail(Errc::invalid_argument, "a unique key is at most 1,024 bytes");
    if (o.unique_for && o.unique_for->count() < 0)
        return fail(Errc::invalid_argument, "unique_for cannot be negative");
    auto m = prepare(std::move(t), o);
    CONVEYOR_TRY(m);
    if (!o.unique_key.empty()) {
        std::optional<TimePoint> hold;
        if (o.unique_for) hold = detail::add_clamped(SystemClock::now(), *o.unique_for);
        return broker_->publish_unique(*m, o.unique_key, hold);
    }
    std::string id = m->task_id;
    CONVEYOR_TRY(detail::publish_moved(*broker_, std::span(&*m, 1)));
    return id;
}

Result<std::vector<std::string>> Client::enqueue_many(std::vector<TaskMessage> tasks,
                                                      const EnqueueOptions& o) {
    std::vector<OutgoingMessage> msgs;
    std::vector<std::string> ids;
    msgs.reserve(tasks.size());
    ids.reserve(tasks.size());
    if (!o.unique_key.empty())
        return fail(Errc::invalid_argument,
                    "a unique key names one task: enqueue unique tasks one at a time");
    EnqueueOptions common = o;
    common.id.clear();
    for (auto& t : tasks) {
        auto m = prepare(std::move(t), common);
        CONVEYOR_TRY(m);
        ids.push_back(m->task_id);
        msgs.push_back(std::move(*m));
    }
    CONVEYOR_TRY(detail::publish_moved(*broker_, msgs));
    return ids;
}

Result<Json> Client::embed(Signature& s) const {
    if (s.task.empty()) return fail(Errc::invalid_argument, "a workflow task has no name");
    if (!s.args.is_array()) return fail(Errc::invalid_argument, "args must be a JSON array");
    if (!s.kwargs.is_object()) return fail(Errc::invalid_argument, "kwargs must be a JSON object");
    if (s.id.empty()) s.id = make_task_id();
    if (s.queue.empty()) s.queue = config_.queue_for(s.task);
    auto reply = broker_->reply_to();
    CONVEYOR_TRY(reply);
    Json options = {{"task_id", s.id}, {"queue", s.queue}};
    if (!reply->empty()) options["reply_to"] = *reply;
    return canvas::signature(s.task, s.args, s.kwargs, std::move(options), s.immutable);
}

namespace {

Result<void> publish_workflow(Broker& broker, const Json& sig) {
    std::vector<OutgoingMessage> out;
    canvas::Context ctx{std::string(kDefaultQueue), {}, {}};
    CONVEYOR_TRY(canvas::apply(broker, sig, std::nullopt, nullptr, ctx, out));
    return broker.publish(out);
}

}  // namespace

Result<std::string> Client::chain(std::vector<Signature> tasks) {
    if (tasks.empty()) return fail(Errc::invalid_argument, "a chain needs at least one task");
    Json members = Json::array();
    for (auto& t : tasks) {
        auto sig = embed(t);
        CONVEYOR_TRY(sig);
        members.push_back(std::move(*sig));
    }
    Json sig = {{"task", "celery.chain"},         {"args", Json::array()},
                {"kwargs", {{"tasks", members}}}, {"options", Json::object()},
                {"subtask_type", "chain"},        {"immutable", false}};
    CONVEYOR_TRY(publish_workflow(*broker_, sig));
    return tasks.back().id;
}

Result<std::vector<std::string>> Client::group(std::vector<Signature> tasks) {
    Json members = Json::array();
    std::vector<std::string> ids;
    for (auto& t : tasks) {
        auto sig = embed(t);
        CONVEYOR_TRY(sig);
        members.push_back(std::move(*sig));
        ids.push_back(t.id);
    }
    Json sig = {{"task", "celery.group"},         {"args", Json::array()},
                {"kwargs", {{"tasks", members}}}, {"options", {{"task_id", make_task_id()}}},
                {"subtask_type", "group"},        {"immutable", false}};
    CONVEYOR_TRY(publish_workflow(*broker_, sig));
    return ids;
}

Result<std::string> Client::chord(std::vector<Signature> header, Signature body) {
    if (header.empty()) return fail(Errc::invalid_argument, "a chord needs header tasks");
    Json members = Json::array();
    for (auto& t : header) {
        auto sig = embed(t);
        CONVEYOR_TRY(sig);
        members.push_back(std::move(*sig));
    }
    auto body_sig = embed(body);
    CONVEYOR_TRY(body_sig);
    Json sig = {{"task", "celery.chord"},
                {"args", Json::array()},
                {"kwargs", {{"header", members}, {"body", *body_sig}}},
                {"options", Json::object()},
                {"subtask_type", "chord"},
                {"immutable", false}};
    CONVEYOR_TRY(publish_workflow(*broker_, sig));
    return body.id;
}

Result<TaskResult> Client::result(std::string_view id) { return broker_->result(id); }

Result<TaskResult> Client::wait(std::string_view id, std::chrono::milliseconds timeout) {
    return broker_->wait_result(id, timeout);
}

}  // namespace conveyor
