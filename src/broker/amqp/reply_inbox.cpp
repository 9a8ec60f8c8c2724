// This process's rpc reply queue: results of the tasks it sent.
#include "broker/amqp/reply_inbox.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include "broker/amqp/amqp_names.hpp"
#include "core/codec.hpp"
#include "core/result_meta.hpp"
#include "core/try.hpp"

namespace conveyor::amqp {

Result<std::string> ReplyInbox::address() {
    std::lock_guard lk(mu_);
    CONVEYOR_TRY(ensure());
    return queue_;
}

void ReplyInbox::sent(std::span<const OutgoingMessage> msgs) {
    std::lock_guard lk(mu_);
    for (auto& m : msgs) {
        const std::string& reply_to = m.task ? m.task->reply_to : m.envelope.reply_to;
        if (reply_to != queue_ || queue_.empty()) continue;
        auto id = !m.task_id.empty() ? m.task_id
                  : m.task           ? m.task->id
                                     : codec::envelope_id(m.envelope);
        if (id.empty() || known_.contains(id)) continue;
        TaskResult r;
        r.id = id;
        known_.emplace(id, std::move(r));
        remember(std::move(id));
    }
}

Result<TaskResult> ReplyInbox::get(std::string_view id) {
    std::lock_guard lk(mu_);
    if (conn_) drain(timeval{0, 0});
    if (auto it = known_.find(std::string(id)); it != known_.end()) return it->second;
    return not_sent(id);
}

Result<TaskResult> ReplyInbox::wait(std::string_view id, milliseconds timeout) {
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
                CONVEYOR_TRY(ensure());
            }
            auto slice = std::min(left, milliseconds(100));
            drain(timeval{time_t(slice.count() / 1000), suseconds_t(slice.count() % 1000 * 1000)});
        }
        std::this_thread::yield();
    }
}

Result<TaskResult> ReplyInbox::not_sent(std::string_view id) {
    return fail(Errc::invalid_argument,
                fmt::format("task {} was not sent by this process: rpc results go only to "
                            "the sender; to read results from anywhere, add "
                            "?results=redis://HOST:PORT/DB to the broker URL",
                            id));
}

Result<void> ReplyInbox::ensure() {
    if (conn_ && conn_->healthy()) return {};
    conn_.reset();
    auto c = Connection::open(e_->opts, "conveyor-replies");
    CONVEYOR_TRY(c);
    if (queue_.empty()) queue_ = make_task_id();
    Json args = {{"x-expires", std::int64_t(e_->opts.result_expires.count()) * 1000}};
    CONVEYOR_TRY((*c)->declare_queue(queue_, args, {.durable = false, .auto_delete = true}));
    auto& conn = **c;
    CONVEYOR_TRY(conn.ensure_channel(kConsumeChannel));
    Pool pool;
    amqp_basic_consume(conn.raw(), kConsumeChannel, pool.bytes(queue_), amqp_empty_bytes, 0, 1, 0,
                       amqp_empty_table);
    CONVEYOR_TRY(conn.check(amqp_get_rpc_reply(conn.raw()), kConsumeChannel,
                            fmt::format("consuming replies from '{}'", queue_)));
    conn_ = std::move(*c);
    return {};
}

void ReplyInbox::drain(timeval first) {
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

void ReplyInbox::remember(std::string id) {
    order_.push_back(std::move(id));
    while (order_.size() > kKeep) {
        known_.erase(order_.front());
        order_.pop_front();
    }
}

}  // namespace conveyor::amqp
