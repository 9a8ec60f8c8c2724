// amqp:// and amqps://: the RabbitMQ engine as a Broker: publishing, results (rpc, Redis),
// queue counts, dead letters, topology; consumers and schedules are in files of their own.
#include "broker/amqp/amqp_broker.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "broker/amqp/amqp_consumer.hpp"
#include "broker/amqp/amqp_control.hpp"
#include "broker/amqp/amqp_engine.hpp"
#include "broker/amqp/amqp_management.hpp"
#include "broker/amqp/amqp_names.hpp"
#include "broker/amqp/amqp_publish.hpp"
#include "broker/amqp/amqp_schedule_store.hpp"
#include "broker/amqp/delay.hpp"
#include "broker/amqp/reply_inbox.hpp"
#include "broker/publish_moved.hpp"
#include "conveyor/log.hpp"
#include "core/codec.hpp"
#include "core/result_meta.hpp"
#include "core/time.hpp"
#include "core/try.hpp"
#include "core/url.hpp"

namespace conveyor::amqp {

namespace {

using namespace std::chrono;

class AmqpBroker final : public Broker, public detail::MovePublisher {
  public:
    explicit AmqpBroker(std::shared_ptr<Engine> e) : e_(std::move(e)), inbox_(e_) {}

    Result<void> publish(std::span<const OutgoingMessage> msgs) override {
        if (e_->results_mode == ResultsMode::rpc) inbox_.sent(msgs);
        return publish_messages(*e_, msgs);
    }

    // Tasks published in this process come as they are; their header tables are written from
    // their fields, without the Celery message's JSON tree (publish_messages).
    detail::TaskForm task_form() const noexcept override { return detail::TaskForm::task; }
    Result<void> publish_moved(std::span<OutgoingMessage> msgs) override {
        return publish(std::span<const OutgoingMessage>(msgs));
    }

    Result<std::unique_ptr<Consumer>> consume(const ConsumerOptions& o) override {
        return open_consumer(e_, o);
    }

    /// The key lives in the Redis result backend: taken there (atomically: of any number of
    /// publishers one takes it) with a lease that covers the publish, then kept until the task
    /// settles (the worker's consumer releases it, kUniqueHeader) or, for a message that never
    /// settles (purged, its queue deleted), until kUniqueLapse after it was due.
    Result<std::string> publish_unique(const OutgoingMessage& m, std::string_view key,
                                       std::optional<TimePoint> hold_until) override {
        if (key.empty() || key.size() > kMaxUniqueKey)
            return fail(Errc::invalid_argument, "a unique key is 1 to 1,024 bytes");
        if (e_->results_mode != ResultsMode::redis)
            return fail(Errc::invalid_argument,
                        fmt::format("unique tasks on RabbitMQ are kept in the Redis result "
                                    "backend: add ?results=redis://HOST:PORT/DB to {}",
                                    url()));
        std::string id = !m.task_id.empty() ? m.task_id
                         : m.task           ? m.task->id
                                            : codec::envelope_id(m.envelope);
        if (id.empty()) id = make_task_id();
        // Long enough for a publish that waits out a reconnect; a publisher that dies holding
        // the key holds it no longer.
        auto lease = std::max<milliseconds>(2 * e_->opts.publish_timeout, 60s);
        auto holder = e_->redis->take_unique(key, id, hold_until, lease);
        CONVEYOR_TRY(holder);
        if (*holder != id) return *holder;
        OutgoingMessage one = m;
        one.task_id = id;
        if (one.task) {  // encoded after all, for the header
            one.envelope = codec::encode(*one.task);
            one.task.reset();
        }
        if (!one.envelope.headers.is_object()) one.envelope.headers = Json::object();
        one.envelope.headers[std::string(kUniqueHeader)] = std::string(key);
        if (auto ok = publish(std::span(&one, 1)); !ok) {
            (void)e_->redis->drop_unique(key, id);
            return std::unexpected(ok.error());
        }
        auto due = std::max(one.not_before.value_or(SystemClock::now()), SystemClock::now());
        auto lapse = detail::add_clamped(due, kUniqueLapse);
        if (hold_until) lapse = std::max(lapse, *hold_until);
        if (auto ok = e_->redis->keep_unique(key, id, lapse); !ok)
            detail::log(LogLevel::warning, "task.unique_not_kept",
                        fmt::format("task {} was published, but its unique key lapses with its "
                                    "lease in {} s: {}",
                                    id, duration_cast<seconds>(lease).count(), ok.error().message),
                        Json{{"id", id}});
        return id;
    }

    /// Limits live in the Redis result backend too, and each consumer admits the deliveries of
    /// a limited task there (amqp_consumer.cpp, RedisResults::admit).
    Result<void> set_limit(const TaskLimit& limit) override {
        CONVEYOR_TRY(check_limit(limit));
        if (e_->results_mode != ResultsMode::redis) {
            if (!limit.limited()) return {};  // nothing to remove
            return fail(
                Errc::invalid_argument,
                fmt::format("task '{}': rate and concurrency limits on RabbitMQ are kept "
                            "in the Redis result backend: add ?results=redis://HOST:PORT/DB "
                            "to {}",
                            limit.task, url()));
        }
        return e_->redis->set_limit(limit);
    }

    Result<std::vector<LimitStats>> limits() override {
        if (e_->results_mode != ResultsMode::redis) return std::vector<LimitStats>{};
        return e_->redis->limits();
    }

    Result<std::vector<QueueStats>> stats() override {
        if (!e_->opts.management.empty()) {
            // Every queue of the vhost, configured or not; passive declares when it fails.
            auto managed = management_queues(e_->opts);
            if (managed)
                return fold_queues(*managed, [this](const std::string& q) {
                    auto spec = e_->spec_of(q);
                    return spec && spec->partitions > 0;
                });
            detail::log(LogLevel::warning, "broker.management_unavailable",
                        fmt::format("queue counts without the management API: {}",
                                    managed.error().message));
        }
        auto names = e_->known_queues();
        // Tasks waiting for a concurrency slot are in wait queues, one per queue and task.
        std::vector<std::string> slotted;
        if (e_->redis)
            if (auto all = e_->redis->limits(false))
                for (auto& x : *all)
                    if (x.limit.max_concurrency > 0) slotted.push_back(x.limit.task);
        return e_->with_connection(
            e_->publish_deadline(), [&](Connection& c) -> Result<std::vector<QueueStats>> {
                std::vector<QueueStats> out;
                for (auto& n : names) {
                    QueueStats s;
                    s.queue = n;
                    s.in_flight = -1;  // not visible over AMQP 0-9-1
                    s.delayed = -1;    // in the shared delay levels (the row below)
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
                    if (!spec || spec->partitions == 0)
                        for (auto& task : slotted)
                            if (auto w = c.declare_queue(wait_queue(n, task), Json::object(),
                                                         {.passive = true}))
                                s.limited += w->messages;
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
                CONVEYOR_TRY(c.ensure_channel(kBrowseChannel));
                Pool pool;
                std::size_t n = 0, acted = 0;
                Result<std::size_t> out = std::size_t{0};
                while (n < limit) {
                    auto r = amqp_basic_get(c.raw(), kBrowseChannel, pool.bytes(dq), 0);
                    CONVEYOR_TRY(c.check(r, kBrowseChannel, fmt::format("reading '{}'", dq)));
                    if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) break;
                    auto* ok = static_cast<amqp_basic_get_ok_t*>(r.reply.decoded);
                    std::uint64_t tag = ok->delivery_tag;
                    amqp_message_t msg;
                    auto rr = amqp_read_message(c.raw(), kBrowseChannel, &msg, 0);
                    CONVEYOR_TRY(c.check(rr, kBrowseChannel, "reading a dead letter"));
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
        CONVEYOR_TRY(r);
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
            CONVEYOR_TRY(publish_messages(*e_, std::span(&m, 1)));
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
        return make_schedule_store(e_);
    }

    Result<std::unique_ptr<EventStream>> events(std::string_view name) override {
        if (name.empty()) return fail(Errc::invalid_argument, "an event stream needs a name");
        return make_event_stream(e_->opts, std::string(name));
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
    CONVEYOR_TRY(o);
    auto e = std::make_shared<Engine>(*o, std::move(url_text));
    if (o->results == "none") {
        e->results_mode = ResultsMode::none;
    } else if (o->results.starts_with("redis://")) {
        auto ro = results::parse_redis_url(o->results);
        CONVEYOR_TRY(ro);
        ro->expires = o->result_expires;
        e->redis = std::make_shared<results::RedisResults>(*ro);
        CONVEYOR_TRY(e->redis->check());
        e->results_mode = ResultsMode::redis;
    }
    auto c = e->checkout();
    CONVEYOR_TRY(c);
    e->checkin(std::move(*c));
    return std::shared_ptr<Broker>(std::make_shared<AmqpBroker>(e));
}

}  // namespace conveyor::amqp
