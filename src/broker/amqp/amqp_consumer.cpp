// Consuming from RabbitMQ: deliveries in, settlements out (results, retries through the delay
// levels, dead letters, acks batched), reconnection with back-off.
#include "broker/amqp/amqp_consumer.hpp"

#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "broker/amqp/ack_batcher.hpp"
#include "broker/amqp/amqp_names.hpp"
#include "broker/amqp/amqp_publish.hpp"
#include "conveyor/log.hpp"
#include "core/codec.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor::amqp {

namespace {

using namespace std::chrono;
using Slot = results::RedisResults::Slot;

/// A start reserved no further ahead than this is held here until then (the delay levels count
/// whole seconds); one further ahead waits in the broker until less than a second is left.
constexpr milliseconds kLimitHold{1500};
/// How much earlier than its reserved start a task held back for it comes back at least (a
/// task that comes back after it takes a new start).
constexpr milliseconds kLimitLead{300};
static_assert(kLimitHold > kLimitLead + seconds(1));
/// A task that found every concurrency slot taken and could not be put in its wait queue
/// asks again this much later.
constexpr milliseconds kLimitRecheck{1000};
/// How often a consumer reads the limits anew (`conveyor limit`, `control rate_limit`), and
/// wakes tasks that wait for slots that are free (RedisResults::wakeable).
constexpr milliseconds kLimitsRefresh{1000};
/// The most deliveries of limited tasks asked about in one round trip to Redis.
constexpr std::size_t kAdmitBatch = 256;

/// RabbitMQ's record of a message's trips through dead-letter exchanges (the delay levels, a
/// wait queue): left in a message published again, its next trip would look like a
/// dead-letter cycle, and RabbitMQ would hold the message back for good.
void forget_deaths(Json& headers) {
    for (auto it = headers.begin(); it != headers.end();) {
        const std::string& k = it.key();
        if (k.starts_with("x-death") || k.starts_with("x-first-death") ||
            k.starts_with("x-last-death"))
            it = headers.erase(it);
        else
            ++it;
    }
}

class AmqpConsumer final : public Consumer {
    struct Source {
        std::string queue;     // logical queue
        bool ordered = false;  // a partition of an ordered queue
    };
    struct Admitting {  // a delivery of a limited task, its limits not asked yet
        Received env;
        results::RedisResults::Ask ask;
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
        // What is left goes back to RabbitMQ with the connection, and its slots with it.
        release_slots(held_slots(), conn_ && conn_->healthy());
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
                detail::log(LogLevel::error, "queue.unusable",
                            fmt::format("not consuming from queue '{}': {}", q, ok.error().message),
                            Json{{"queue", q}});
            reported_.insert(q);
            unusable.insert(q);
        }
        if (unusable.size() == opts_.queues.size())
            return fail(Errc::conflict,
                        fmt::format("no queue of this worker can be used ({})", *unusable.begin()));
        auto c = Connection::open(e_->opts, opts_.name.empty() ? "conveyor-worker" : opts_.name);
        CONVEYOR_TRY(c);
        auto& conn = **c;
        CONVEYOR_TRY(conn.ensure_channel(kConsumeChannel));
        amqp_basic_qos(conn.raw(), kConsumeChannel, 0,
                       std::uint16_t(std::clamp<std::size_t>(opts_.prefetch, 1, 65535)), 0);
        CONVEYOR_TRY(
            conn.check(amqp_get_rpc_reply(conn.raw()), kConsumeChannel, "setting prefetch"));
        Pool pool;
        consumer_queue_.clear();
        for (auto& [physical, source] : physical_) {
            if (unusable.contains(source.queue)) continue;
            CONVEYOR_TRY(start_consuming(conn, physical, source));
        }
        conn_ = std::move(*c);
        if (generation_ > 0)
            detail::log(LogLevel::info, "broker.reconnected", "RabbitMQ connection restored");
        ++generation_;
        unsettled_.clear();
        acks_.clear();
        backoff_ = milliseconds(100);
        return {};
    }

    std::optional<std::string> trouble() const override {
        if (conn_ && conn_->healthy()) return std::nullopt;
        return trouble_.empty() ? std::string("not connected to RabbitMQ") : trouble_;
    }

    void drop(std::string_view why) {
        trouble_ = fmt::format("RabbitMQ connection lost ({})", why);
        if (conn_)
            detail::log(LogLevel::warning, "broker.disconnected",
                        fmt::format("RabbitMQ connection lost ({}); reconnecting", why));
        conn_.reset();
        // RabbitMQ delivers them again, perhaps elsewhere: their slots go with them (no task is
        // woken for them now: RabbitMQ is likely away; the fleet wakes them when it is back).
        release_slots(held_slots(), false);
        unsettled_.clear();
        acks_.clear();
        buffered_.clear();
        admitting_.clear();  // not admitted yet: they hold nothing, and come again
        for (auto& [_, d] : pending_) held_.erase(d.tag);
        pending_.clear();
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
            if (ok) {
                trouble_.clear();
                return true;
            }
            trouble_ = ok.error().message;
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

    /// A header of the delivery as a string, or as a whole number; none when it is absent or
    /// of another kind.
    static std::optional<std::string_view> text_header(const Received& env, std::string_view key) {
        const amqp_field_value_t* f = env.headers.find(key);
        if (!f || (f->kind != AMQP_FIELD_KIND_UTF8 && f->kind != AMQP_FIELD_KIND_BYTES))
            return std::nullopt;
        return view(f->value.bytes);
    }
    static std::optional<std::int64_t> integer_header(const Received& env, std::string_view key) {
        const TableHeaders h(env.headers.table());
        auto v = h.find(key);
        if (!v) return std::nullopt;
        using Kind = codec::HeaderValue::Kind;
        if (v->kind == Kind::integer) return v->integer;
        if (v->kind == Kind::unsigned_integer)
            return std::int64_t(std::min<std::uint64_t>(
                v->unsigned_integer, std::uint64_t(std::numeric_limits<std::int64_t>::max())));
        return std::nullopt;
    }

    /// The delivery's task, decoded from the header table as it came (ConsumerOptions::decode);
    /// null where the worker decodes the envelope instead: a raw queue's message, one that does
    /// not decode (the worker dead-letters it with the reason), and one delivered before (the
    /// worker's delivery limit comes before decoding it again).
    std::shared_ptr<const TaskMessage> decoded(const Received& env, const Delivery& d) try {
        if (!opts_.decode || env.headers_in_envelope || d.deliveries > 1 ||
            std::find(opts_.raw_queues.begin(), opts_.raw_queues.end(), d.queue) !=
                opts_.raw_queues.end())
            return nullptr;
        const TableHeaders headers(env.headers.table());
        const Envelope& m = env.envelope;
        auto task = codec::decode(codec::MessageView{.content_type = m.content_type,
                                                     .correlation_id = m.correlation_id,
                                                     .reply_to = m.reply_to,
                                                     .priority = m.priority,
                                                     .headers = headers,
                                                     .body = m.body},
                                  opts_.max_body);
        if (!task) return nullptr;
        return std::make_shared<const TaskMessage>(std::move(*task));
    } catch (const std::exception&) {
        return nullptr;  // the worker meets it again in the envelope, and dead-letters it
    }

    Delivery to_delivery(Received& env) {
        Delivery d;
        d.tag = (generation_ << 40) | env.delivery_tag;
        auto it = consumer_queue_.find(env.consumer_tag);
        d.queue = it != consumer_queue_.end() ? it->second.queue : opts_.queues.front();
        if (it != consumer_queue_.end() && it->second.ordered) {
            // The consistent-hash exchange routed it by this key (the publisher's ordering key,
            // or the task id when it gave none).
            auto k = text_header(env, kKeyHeader);
            d.ordering_key = k ? std::string(*k) : env.routing_key;
        }
        auto id = text_header(env, "id");
        d.message_id = id && !id->empty() ? std::string(*id) : env.envelope.correlation_id;
        if (d.message_id.empty()) d.message_id = env.message_id;
        d.taken = SystemClock::now();
        if (auto ms = integer_header(env, kSentAtHeader)) {
            // From the wire: only a time between 1970 and 9999 counts.
            if (*ms > 0 && *ms < 253402300800000) d.due = detail::from_epoch_ms(*ms);
        }
        d.deliveries = env.redelivered ? 2 : 1;
        if (auto dc = integer_header(env, kDeliveryCountHeader))
            d.deliveries =
                std::max<std::int64_t>(d.deliveries, std::clamp<std::int64_t>(*dc, 0, 1 << 20) + 1);
        if (auto dc = integer_header(env, kDeliveriesHeader))
            d.deliveries =
                std::max<std::int64_t>(d.deliveries, std::clamp<std::int64_t>(*dc, 0, 1 << 20));
        held_.insert(d.tag);
        InFlight& in = unsettled_[env.delivery_tag];
        in = InFlight{d.queue, env.envelope.reply_to,
                      it != consumer_queue_.end() && it->second.ordered};
        // Anyone may set the header: only a string a publisher could have taken counts.
        if (auto u = text_header(env, kUniqueHeader); u && u->size() <= kMaxUniqueKey) {
            in.unique_key = std::string(*u);
            in.task_id = d.message_id;
        }
        d.task = decoded(env, d);
        if (!d.task) {
            d.envelope = std::move(full_envelope(env));
        } else {
            // Kept as it came, for a retry or a dead letter to send on (message()).
            in.message = std::move(env.envelope);
            in.headers = std::move(env.headers);
        }
        return d;
    }

    Result<std::vector<Delivery>> fetch(std::size_t max, milliseconds wait) override {
        auto deadline = steady_clock::now() + wait;
        flush_acks(false);
        refresh_limits();
        room_ = max;
        std::vector<Delivery> out;
        out.reserve(std::min<std::size_t>(max, 32));  // (a Delivery is a large thing to move)
        while (!buffered_.empty() && out.size() < max) {
            out.push_back(std::move(buffered_.front()));
            buffered_.pop_front();
        }
        for (;;) {
            take_due(out, max);
            if (out.size() >= max) break;
            if (!ensure_connected(deadline, nullptr)) break;
            // Wait for a delivery until the deadline, or until a held one is due.
            auto now = steady_clock::now();
            auto until = pending_.empty() ? deadline : std::min(deadline, pending_.begin()->first);
            timeval tv{0, 0};
            if (out.empty() && until > now) {
                auto left = ceil<milliseconds>(until - now).count();
                tv = timeval{time_t(left / 1000), suseconds_t(left % 1000 * 1000)};
            }
            bool got = receive(tv, out);
            if (!conn_) admitting_.clear();
            // A delivery sent back to wait for its limit adds nothing: the deadline bounds
            // the loop, so that settling and renewing (on this thread) go on.
            if ((!got && !out.empty()) || steady_clock::now() >= deadline) {
                take_due(out, max);
                break;
            }
        }
        // Deliveries read but not asked about yet (the batch was full, or more was read).
        if (!admitting_.empty() && conn_) {
            std::vector<Delivery> more;
            admit_waiting(more);
            for (auto& d : more)
                if (out.size() < max)
                    out.push_back(std::move(d));
                else
                    buffered_.push_back(std::move(d));
        }
        return out;
    }

    /// Held deliveries whose reserved start has come, into `out`.
    void take_due(std::vector<Delivery>& out, std::size_t max) {
        auto now = steady_clock::now();
        while (!pending_.empty() && out.size() < max && pending_.begin()->first <= now) {
            auto node = pending_.extract(pending_.begin());
            out.push_back(std::move(node.mapped()));
        }
    }

    /// The limits as the Redis result backend has them, read again every kLimitsRefresh; then
    /// the tasks that wait for concurrency slots that are free now (their holders settled
    /// elsewhere without waking them, or died and their leases ran out) are woken, by one
    /// worker of the fleet a second.
    void refresh_limits() {
        if (!e_->redis) return;
        auto now = steady_clock::now();
        if (now < limits_read_) return;
        limits_read_ = now + kLimitsRefresh;
        auto all = e_->redis->limits(false);
        if (!all) return;  // the last ones stay; a store that is down holds deliveries back
        limits_.clear();
        std::vector<results::RedisResults::WaitingIn> where;  // this worker's queues' waits
        for (auto& x : *all) {
            limits_[x.limit.task] = x.limit;
            if (x.limit.max_concurrency <= 0) continue;
            for (auto& q : opts_.queues)
                if (auto spec = e_->spec_of(q); !spec || spec->partitions == 0)
                    where.push_back({q, x.limit});
        }
        if (where.empty()) return;
        auto n = e_->redis->wakeable(where, kLimitsRefresh - milliseconds(100));
        if (!n) return;
        for (std::size_t i = 0; i < where.size() && i < n->size(); ++i)
            for (std::int64_t left = (*n)[i]; left > 0; --left)
                if (wake(where[i].queue, where[i].limit.task) != Wake::woke) break;
    }

    enum class Wake { woke, none, failed };
    /// Sends the oldest task named `task` that waits for a slot in `queue`'s wait queue back
    /// to `queue` (none when none waited there, or the wait queue does not exist).
    Wake wake(const std::string& queue, const std::string& task) {
        std::string name = wait_queue(queue, task);
        auto woke = e_->wake_one(name);
        if (!woke) {
            detail::log(LogLevel::warning, "task.limit_not_woken",
                        fmt::format("could not wake a task waiting for a slot in '{}' ({}); it "
                                    "comes back within {} s",
                                    name, woke.error().message, kWaitBackstop.count() / 1000));
            return Wake::failed;
        }
        return *woke ? Wake::woke : Wake::none;
    }

    /// The limit of a delivery's task (Celery protocol 2's task header), if it has one; none
    /// for ordered queues, whose order a task sent back to wait would break.
    const TaskLimit* limit_of(const Received& env) const {
        if (limits_.empty()) return nullptr;
        auto t = text_header(env, "task");
        if (!t) return nullptr;
        auto l = limits_.find(std::string(*t));
        if (l == limits_.end()) return nullptr;
        auto it = consumer_queue_.find(env.consumer_tag);
        if (it == consumer_queue_.end() || it->second.ordered) return nullptr;
        return &l->second;
    }

    /// A delivery into `out`, unless its task's limits hold it back (RedisResults::admit):
    /// admitted, it runs now, or after a hold here when a start was reserved for it within
    /// kLimitHold (it holds its concurrency slot from now). Held back, it is published again
    /// and this delivery acked once the copy is confirmed, so that it waits in the broker, not
    /// here: through the delay levels to its reserved start, or, when every slot is taken, to
    /// its wait queue (wait_queue), whence a freed slot wakes it.
    /// Deliveries of limited tasks are asked about together: those that came in one read from
    /// the socket (up to kAdmitBatch) in one round trip to Redis (RedisResults::admit_many).
    void deliver(Received& env, std::vector<Delivery>& out) {
        const TaskLimit* limit = limit_of(env);
        if (!limit) {
            out.push_back(to_delivery(env));
            return;
        }
        Admitting& w = admitting_.emplace_back();
        w.env = std::move(env);
        // It may be sent back to wait in the broker: as the JSON envelope it is published as.
        Envelope& m = full_envelope(w.env);
        w.ask.limit = *limit;
        w.ask.id = codec::envelope_id(m);
        if (w.ask.id.empty()) w.ask.id = w.env.message_id;
        if (!limit->key.empty()) w.ask.key = limit_key_of_body(limit->key, m.body);
        w.ask.slot = fmt::format("{}:{}:{}", instance_, generation_, w.env.delivery_tag);
        if (auto r = m.headers.find(kLimitRateHeader); r != m.headers.end() && r->is_number())
            w.ask.reserved = limit->rate > 0 && r->get<double>() == limit->rate;
        if (admitting_.size() >= kAdmitBatch || !more_buffered()) admit_waiting(out);
    }

    /// Whether more frames are already read from (or waiting in) the connection's buffer.
    bool more_buffered() const {
        return amqp_data_in_buffer(conn_->raw()) || amqp_frames_enqueued(conn_->raw());
    }

    /// The deliveries waiting for their limits' answer, asked in one round trip.
    /// Admitted deliveries beyond what the fetch() under way may return (`room_`) wait in
    /// buffered_ for the next.
    void admit_waiting(std::vector<Delivery>& out) {
        if (admitting_.empty()) return;
        std::vector<results::RedisResults::Ask> asks;
        asks.reserve(admitting_.size());
        for (auto& w : admitting_) asks.push_back(std::move(w.ask));
        auto as = e_->redis->admit_many(asks, lease(), kLimitHold, kWaitBackstop);
        if (!as) {
            // Redis failed part-way: slots the scripts that ran took are given back (giving back
            // one never taken does nothing), not held until their leases lapse.
            std::vector<HeldSlot> taken;
            for (auto& a : asks)
                if (a.limit.max_concurrency > 0)
                    taken.push_back(
                        HeldSlot{results::RedisResults::slot_of(a.limit.task, a.key, a.slot),
                                 std::string(), a.limit.task});
            release_slots(taken, false);
        }
        auto batch = std::move(admitting_);
        admitting_.clear();
        std::size_t before = out.size();
        using Kind = results::RedisResults::Admission::Kind;
        for (std::size_t i = 0; i < batch.size(); ++i) {
            batch[i].ask = std::move(asks[i]);
            if (!conn_) {
                // The connection failed sending one back: the rest go with it, and a slot
                // taken for one is given back now, not when its lease lapses.
                const auto& l = batch[i].ask.limit;
                if (as && (*as)[i] && (*as)[i]->kind == Kind::run && l.max_concurrency > 0) {
                    HeldSlot held{
                        results::RedisResults::slot_of(l.task, batch[i].ask.key, batch[i].ask.slot),
                        std::string(), l.task};
                    release_slots(std::span<const HeldSlot>(&held, 1), false);
                }
                continue;
            }
            if (!as) {
                admitted(batch[i], std::unexpected(as.error()), out);
            } else if (!(*as)[i]) {
                admitted(batch[i], fail(Errc::unavailable, "Redis answered with an error"), out);
            } else {
                admitted(batch[i], *(*as)[i], out);
            }
        }
        std::size_t keep = std::max(before, room_);
        if (out.size() > keep) {
            // (Deliveries of a connection that failed meanwhile are not kept for later: RabbitMQ
            // delivers them again.)
            if (conn_)
                for (std::size_t i = keep; i < out.size(); ++i)
                    buffered_.push_back(std::move(out[i]));
            out.resize(keep);
        }
    }

    /// One delivery of a limited task, as its limits decided.
    void admitted(Admitting& asked, const Result<results::RedisResults::Admission>& a,
                  std::vector<Delivery>& out) {
        Received& env = asked.env;
        Envelope& m = env.envelope;
        const TaskLimit* limit = &asked.ask.limit;
        const std::string& id = asked.ask.id;
        const std::string& key = asked.ask.key;
        const std::string& member = asked.ask.slot;
        if (!a) {
            detail::log(LogLevel::warning, "task.limit_unavailable",
                        fmt::format("task {}: its limits could not be asked ({}); it waits in "
                                    "the broker",
                                    id, a.error().message),
                        Json{{"id", id}});
        }
        using Kind = results::RedisResults::Admission::Kind;
        if (a && a->kind == Kind::run) {
            Delivery d = to_delivery(env);
            d.taken = a->start;  // when the limit counted it (as sqlite's claim does)
            if (limit->max_concurrency > 0) {
                InFlight& in = unsettled_[env.delivery_tag];
                in.slot = results::RedisResults::slot_of(limit->task, key, member);
                in.limited_task = limit->task;
            }
            if (a->wait_ms >= 1) {
                pending_.emplace(
                    steady_clock::now() + microseconds(std::llround(a->wait_ms * 1000)),
                    std::move(d));
            } else {
                out.push_back(std::move(d));
            }
            return;
        }
        auto it = consumer_queue_.find(env.consumer_tag);
        OutgoingMessage back;
        back.queue = it != consumer_queue_.end() ? it->second.queue : opts_.queues.front();
        back.envelope = std::move(m);
        auto& h = back.envelope.headers;
        if (!h.is_object()) h = Json::object();
        forget_deaths(h);
        std::optional<std::string> waits_in;  // every slot taken: its wait queue
        if (a && a->kind == Kind::later) {
            // Back before its start, by kLimitLead to a second and kLimitLead (the levels count
            // whole seconds): then held here until it.
            h[std::string(kLimitRateHeader)] = limit->rate;
            back.not_before = SystemClock::now() +
                              seconds(std::int64_t((a->wait_ms - kLimitLead.count()) / 1000));
        } else {
            h.erase(std::string(kLimitRateHeader));
            std::int64_t waits = 0;
            if (auto w = h.find(kLimitWaitsHeader); w != h.end() && w->is_number_integer())
                waits = std::clamp<std::int64_t>(w->get<std::int64_t>(), 0, 1 << 30);
            h[std::string(kLimitWaitsHeader)] = waits + 1;
            if (a) {
                if (auto q = e_->ensure_wait_queue(back.queue, limit->task)) waits_in = *q;
            }
            // Without its wait queue (or the limits), it asks again later.
            if (!waits_in) back.not_before = SystemClock::now() + kLimitRecheck;
        }
        std::string route_key;
        std::optional<Wire> w;
        if (waits_in)
            w = Wire{"", *waits_in, &back.envelope, true};
        else if (auto r = route(*e_, back, route_key))
            w = *r;
        bool moved = w && e_->publish_wires(std::span<const Wire>(&*w, 1));
        if (!moved && waits_in) e_->forget_wait_queue(*waits_in);  // declared again next time
        if (!moved) {
            // Not published: RabbitMQ keeps it and delivers it again.
            detail::log(LogLevel::warning, "task.limit_not_held",
                        fmt::format("task {}: could not send it back to wait for its limit; it "
                                    "goes back to its queue",
                                    id),
                        Json{{"id", id}});
            if (amqp_basic_nack(conn_->raw(), kConsumeChannel, env.delivery_tag, 0, 1) !=
                AMQP_STATUS_OK)
                drop("nack failed");
            return;
        }
        if (amqp_basic_ack(conn_->raw(), kConsumeChannel, env.delivery_tag, 0) != AMQP_STATUS_OK)
            drop("ack failed");
    }

    /// A concurrency slot held by a delivery, with where a task waiting for it would be.
    struct HeldSlot {
        Slot slot;
        std::string queue;  // the logical queue the delivery came from
        std::string task;   // its task's name
    };
    /// The concurrency slots of the deliveries held now (admitted and not settled).
    std::vector<HeldSlot> held_slots() const {
        std::vector<HeldSlot> out;
        for (auto& [_, in] : unsettled_)
            if (!in.slot.key.empty()) out.push_back(HeldSlot{in.slot, in.queue, in.limited_task});
        return out;
    }

    /// How long a slot lasts without renewal: the worker's lease.
    milliseconds lease() const {
        return opts_.lease.count() > 0 ? opts_.lease : milliseconds(30000);
    }

    /// Concurrency slots given back (their tasks settled, or went with a lost connection), each
    /// waking a task that waits for one of its task's slots, if any; a slot that cannot be
    /// given back lapses with its lease.
    void release_slots(std::span<const HeldSlot> held, bool wake_waiting = true) {
        if (held.empty() || !e_->redis) return;
        std::vector<Slot> slots;
        for (auto& h : held) slots.push_back(h.slot);
        auto waiting = e_->redis->release_slots(slots);
        if (!waiting) {
            detail::log(LogLevel::warning, "task.limit_slots_kept",
                        fmt::format("{} concurrency slot(s) not given back ({}); they lapse with "
                                    "their lease",
                                    slots.size(), waiting.error().message));
            return;
        }
        if (!wake_waiting) return;
        for (std::size_t i = 0; i < held.size() && i < waiting->size(); ++i)
            if ((*waiting)[i] && wake(held[i].queue, held[i].task) == Wake::failed) break;
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
        if (env.headers.find(kDeliveryCountHeader)) return false;
        Envelope& copy = full_envelope(env);
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
        auto r = consume_message(conn_->raw(), env, &tv, true);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            if (!count_redelivery(env)) deliver(env, out);
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

    std::optional<Envelope> message(std::uint64_t tag) const override {
        if ((tag >> 40) != generation_) return std::nullopt;  // of a connection lost since
        auto it = unsettled_.find(tag & ((std::uint64_t(1) << 40) - 1));
        if (it == unsettled_.end() || !it->second.message) return std::nullopt;
        Envelope m = *it->second.message;
        m.headers = to_json(it->second.headers.table());
        return m;
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
        std::vector<std::uint64_t> unique_done;  // unique tasks done for good, once acked
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
                detail::log(LogLevel::warning, "results.not_stored",
                            fmt::format("{}; {} task(s) go back to their queue", ok.error().message,
                                        tags.size()));
                unstored.insert(tags.begin(), tags.end());
            }
        }
        std::vector<HeldSlot> slots;  // given back once the settlements are sent
        for (auto& s : ss) {
            held_.erase(s.tag);
            auto local = local_tag(s);
            if (!local) continue;
            std::uint64_t tag = *local;
            InFlight& from = unsettled_[tag];
            if (!from.slot.key.empty())
                slots.push_back(HeldSlot{std::move(from.slot), from.queue, from.limited_task});
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
            if (!from.unique_key.empty() &&
                (s.kind == Settlement::Kind::ack || s.kind == Settlement::Kind::dead_letter))
                unique_done.push_back(tag);
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
                detail::log(LogLevel::warning, "broker.publish_failed",
                            fmt::format("could not move {} message(s) ({}); they go back to "
                                        "their queue",
                                        wires.size(), ok.error().message));
                requeue.insert(requeue.end(), wire_tags.begin(), wire_tags.end());
                std::erase_if(acks, [&](std::uint64_t t) {
                    return std::find(wire_tags.begin(), wire_tags.end(), t) != wire_tags.end();
                });
            }
        }
        release_unique(unique_done, acks);
        release_slots(slots);
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
            acks_.settled(t);
        }
        flush_acks(ordered);
        return {};
    }

    /// Unique tasks that succeeded, were revoked or dead-lettered give their keys back (those
    /// whose settlement went wrong are delivered again and keep them). A key that cannot be
    /// released lapses by itself (kUniqueLapse).
    void release_unique(const std::vector<std::uint64_t>& done,
                        const std::vector<std::uint64_t>& acked) {
        if (done.empty() || !e_->redis) return;
        for (auto tag : done) {
            if (std::find(acked.begin(), acked.end(), tag) == acked.end()) continue;
            auto it = unsettled_.find(tag);
            if (it == unsettled_.end()) continue;
            if (auto ok = e_->redis->release_unique(it->second.unique_key, it->second.task_id); !ok)
                detail::log(LogLevel::warning, "task.unique_not_released",
                            fmt::format("task {}: its unique key was not released ({}); it "
                                        "lapses by itself",
                                        it->second.task_id, ok.error().message),
                            Json{{"id", it->second.task_id}});
        }
    }

    /// Sends the acks that are due (see AckBatcher).
    void flush_acks(bool all) {
        if (!conn_ || acks_.empty()) return;
        auto due =
            acks_.due(unsettled_.empty() ? std::nullopt : std::optional(unsettled_.begin()->first),
                      all, steady_clock::now());
        auto raw = conn_->raw();
        // Several frames go as one TCP segment (rabbitmq-c writes each frame at once): the
        // broker reads them in one go, and the kernel carries one segment, not one each.
        Corked corked(due.singles.size() + (due.up_to ? 1 : 0) > 1 ? amqp_get_sockfd(raw) : -1);
        // (Uncorked before the connection goes: its descriptor may be another socket's next.)
        auto fail = [&] {
            corked.release();
            drop("ack failed");
        };
        if (due.up_to && amqp_basic_ack(raw, kConsumeChannel, *due.up_to, 1) != AMQP_STATUS_OK) {
            fail();
            return;
        }
        for (auto t : due.singles) {
            if (amqp_basic_ack(raw, kConsumeChannel, t, 0) != AMQP_STATUS_OK) {
                fail();
                return;
            }
        }
    }

    /// TCP_CORK on a socket for its lifetime (none for -1).
    class Corked {
      public:
        explicit Corked(int fd) : fd_(fd) { set(1); }
        ~Corked() { set(0); }
        Corked(const Corked&) = delete;
        Corked& operator=(const Corked&) = delete;
        /// Uncorks now, and leaves the socket alone from then on.
        void release() {
            set(0);
            fd_ = -1;
        }

      private:
        void set(int on) const {
            if (fd_ >= 0) (void)setsockopt(fd_, IPPROTO_TCP, TCP_CORK, &on, sizeof on);
        }
        int fd_;
    };

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
            CONVEYOR_TRY(e_->ensure_queues({queue}));
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
                for (auto& p : added) CONVEYOR_TRY(start_consuming(*conn_, p, physical_[p]));
            return {};
        }
        std::erase(qs, queue);
        std::erase_if(physical_, [&](const auto& kv) { return kv.second.queue == queue; });
        if (conn_ && conn_->healthy()) {
            Pool pool;
            for (auto& [ctag, source] : consumer_queue_) {
                if (source.queue != queue) continue;
                amqp_basic_cancel(conn_->raw(), kConsumeChannel, pool.bytes(ctag));
                CONVEYOR_TRY(conn_->check(amqp_get_rpc_reply(conn_->raw()), kConsumeChannel,
                                          fmt::format("no longer consuming from '{}'", queue)));
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
        // No leases on RabbitMQ, but concurrency slots have theirs (a worker that dies gives its
        // slots back when they lapse).
        if (e_->redis) {
            std::vector<Slot> slots;
            for (auto& h : held_slots()) slots.push_back(std::move(h.slot));
            auto ok = e_->redis->renew_slots(slots, lease());
            if (!ok)
                detail::log(LogLevel::warning, "task.limit_slots_not_renewed",
                            fmt::format("{} concurrency slot(s) not renewed ({})", slots.size(),
                                        ok.error().message));
            else if (*ok > 0)
                detail::log(LogLevel::warning, "task.limit_slots_lapsed",
                            fmt::format("{} concurrency slot(s) lapsed while their tasks ran (the "
                                        "worker did not renew them within its lease, {} ms); "
                                        "other tasks may have taken them",
                                        *ok, lease().count()));
        }
        // Keep the heartbeat going while every slot is busy.
        if (!conn_ || !conn_->healthy()) return lost;
        flush_acks(false);
        std::vector<Delivery> got;
        // What has come in, but not longer than a moment (deliveries sent back to wait for
        // their limits keep coming).
        auto until = steady_clock::now() + milliseconds(50);
        room_ = SIZE_MAX;
        while (receive(timeval{0, 0}, got) && steady_clock::now() < until) {
        }
        if (conn_) admit_waiting(got);
        admitting_.clear();
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
    std::string trouble_;  // why the connection is down (see trouble())
    struct InFlight {
        std::string queue;       // logical queue
        std::string reply_to;    // rpc results go there
        bool ordered = false;    // from a partition of an ordered queue: acked without delay
        std::string unique_key;  // a unique task's key (kUniqueHeader), released when it is done
        std::string task_id;
        Slot slot;  // the concurrency slot it holds (RedisResults::admit), given back when settled
        std::string limited_task;  // the task whose limit that slot counts against
        // A delivery whose task was decoded here (Delivery::task): its message as it came,
        // properties and body, and its headers' table.
        std::optional<Envelope> message;
        OwnedTable headers;
    };
    std::map<std::uint64_t, InFlight> unsettled_;  // delivery tag -> where it came from
    AckBatcher acks_{opts_.prefetch};              // settled, ack not sent yet
    std::deque<Delivery> buffered_;
    std::multimap<steady_clock::time_point, Delivery> pending_;  // admitted, held till then
    std::vector<Admitting> admitting_;  // received, their limits not asked yet
    std::size_t room_ = SIZE_MAX;       // how many deliveries the fetch() under way may return
    std::set<std::uint64_t> held_;      // handed out (generation-tagged) and not settled
    std::map<std::string, TaskLimit> limits_;  // task -> its limits (RedisResults::limits)
    steady_clock::time_point limits_read_{};   // when to read them again
    std::string instance_ = make_task_id();    // names this consumer's concurrency slots
    steady_clock::time_point next_attempt_{};
    milliseconds backoff_{100};
};

}  // namespace

Result<std::unique_ptr<Consumer>> open_consumer(std::shared_ptr<Engine> engine,
                                                const ConsumerOptions& options) {
    if (options.queues.empty()) return fail(Errc::invalid_argument, "a consumer needs queues");
    auto c = std::make_unique<AmqpConsumer>(std::move(engine), options);
    CONVEYOR_TRY(c->open_first());
    return std::unique_ptr<Consumer>(std::move(c));
}

}  // namespace conveyor::amqp
