// Schedules on RabbitMQ: an exclusive queue for leadership, a direct exchange that routes
// each fire to the task's queue and to the schedule's record at once.
#include "broker/amqp/amqp_schedule_store.hpp"

#include <fmt/format.h>

#include <deque>
#include <map>

#include "broker/amqp/amqp_names.hpp"
#include "broker/amqp/amqp_publish.hpp"
#include "core/codec.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor::amqp {

namespace {

using namespace std::chrono;

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
        CONVEYOR_TRY(connect());
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
        CONVEYOR_TRY(connect());
        std::map<std::string, Mark> out;
        for (auto& name : names) {
            if (!leading_ || !marks_.contains(name)) {
                // Not known yet (or not leading): the schedule's record says.
                CONVEYOR_TRY(ensure_record(name));
                auto rec = read_one(record_queue(name), 1);
                CONVEYOR_TRY(rec);
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
        CONVEYOR_TRY(still);
        if (!*still) return false;
        std::deque<Envelope> envs;
        std::deque<std::string> keys;
        std::vector<Wire> wires;
        std::map<std::string, Mark> next;
        for (auto& f : fires) {
            CONVEYOR_TRY(ensure_record(f.schedule));
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
                CONVEYOR_TRY(ensure_route(f.schedule, f.message->queue));
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
        CONVEYOR_TRY(cfg);
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
        CONVEYOR_TRY(cfg);
        (*cfg)["added"][schedule.value("name", "")] = schedule;
        return write_config(*cfg);
    }

    Result<bool> remove(std::string_view name) override {
        auto cfg = config();
        CONVEYOR_TRY(cfg);
        auto& a = (*cfg)["added"];
        bool had = a.is_object() && a.contains(std::string(name));
        if (had) a.erase(std::string(name));
        if (auto p = cfg->find("paused"); p != cfg->end() && p->is_object())
            p->erase(std::string(name));
        CONVEYOR_TRY(write_config(*cfg));
        return had;
    }

    Result<void> set_paused(std::string_view name, bool paused) override {
        auto cfg = config();
        CONVEYOR_TRY(cfg);
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
        CONVEYOR_TRY(c);
        CONVEYOR_TRY((*c)->declare_queue(kConfigQueue, one_message()));
        CONVEYOR_TRY(
            (*c)->declare_exchange(kFiresExchange, "direct", {.durable = true}, Json::object()));
        conn_ = std::move(*c);
        return {};
    }

    Result<void> ensure_record(const std::string& name) {
        if (records_.contains(name)) return {};
        auto q = record_queue(name);
        CONVEYOR_TRY(conn_->declare_queue(q, one_message()));
        for (auto key : {"run:" + name, "mark:" + name})
            CONVEYOR_TRY(conn_->bind_queue(q, kFiresExchange, key));
        records_.insert(name);
        return {};
    }

    Result<void> ensure_route(const std::string& name, const std::string& queue) {
        if (routes_.contains({name, queue})) return {};
        CONVEYOR_TRY(e_->ensure_queues({queue}));
        CONVEYOR_TRY(conn_->bind_queue(queue, kFiresExchange, "run:" + name));
        routes_.insert({name, queue});
        return {};
    }

    /// The CLI's schedules and pause flags. Writers look harder: an empty read may only mean
    /// that another reader holds the message for a moment.
    Result<Json> config(int attempts = 5) {
        CONVEYOR_TRY(connect());
        auto j = read_one(kConfigQueue, attempts, /*body=*/true);
        CONVEYOR_TRY(j);
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
            CONVEYOR_TRY(conn_->ensure_channel(kBrowseChannel));
            Pool pool;
            auto r = amqp_basic_get(conn_->raw(), kBrowseChannel, pool.bytes(queue), 0);
            CONVEYOR_TRY(conn_->check(r, kBrowseChannel, "reading schedules"));
            if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) continue;
            auto tag = static_cast<amqp_basic_get_ok_t*>(r.reply.decoded)->delivery_tag;
            amqp_message_t msg;
            auto rr = amqp_read_message(conn_->raw(), kBrowseChannel, &msg, 0);
            CONVEYOR_TRY(conn_->check(rr, kBrowseChannel, "reading schedules"));
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

}  // namespace

std::unique_ptr<ScheduleStore> make_schedule_store(std::shared_ptr<Engine> engine) {
    return std::make_unique<AmqpScheduleStore>(std::move(engine));
}

}  // namespace conveyor::amqp
