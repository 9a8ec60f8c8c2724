// sqlite://PATH: the embedded engine as a Broker: publishing, results, chords, queue counts,
// dead letters; consumers and schedules are in files of their own.
#include "broker/sqlite/sqlite_broker.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>

#include "broker/embedded.hpp"
#include "broker/publish_moved.hpp"
#include "broker/sqlite/sqlite_consumer.hpp"
#include "broker/sqlite/sqlite_history.hpp"
#include "broker/sqlite/sqlite_limits.hpp"
#include "broker/sqlite/sqlite_schedule_store.hpp"
#include "broker/sqlite/sqlite_tables.hpp"
#include "core/codec.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor::sqlite {

namespace {

using detail::from_epoch_ms;
using detail::to_epoch_ms;

class SqliteBroker final : public Broker, public detail::MovePublisher {
  public:
    SqliteBroker(SqliteOptions o, Db db, Statements st)
        : opts_(std::move(o)), db_(std::move(db)), st_(std::move(st)) {}

    Result<void> publish(std::span<const OutgoingMessage> msgs) override {
        if (msgs.empty()) return {};
        for (auto& m : msgs) CONVEYOR_TRY(detail::check_embedded_message(m, "sqlite"));
        std::lock_guard lk(mu_);
        CONVEYOR_TRY(in_transaction(
            db_, st_, [&]() -> Result<void> { return insert_messages(st_, msgs, known_queues_); }));
        known_queues_.committed(msgs);
        return {};
    }

    // Tasks published in this process come as they are, and are stored as text without the
    // Celery message's JSON tree (insert_messages).
    detail::TaskForm task_form() const noexcept override { return detail::TaskForm::task; }
    Result<void> publish_moved(std::span<OutgoingMessage> msgs) override {
        return publish(std::span<const OutgoingMessage>(msgs));
    }

    Result<std::string> publish_unique(const OutgoingMessage& m, std::string_view key,
                                       std::optional<TimePoint> hold_until) override {
        CONVEYOR_TRY(detail::check_embedded_message(m, "sqlite"));
        if (key.empty() || key.size() > 1024)
            return fail(Errc::invalid_argument, "a unique key is 1 to 1,024 bytes");
        std::string id = !m.task_id.empty() ? m.task_id
                         : m.task           ? m.task->id
                                            : codec::envelope_id(m.envelope);
        if (id.empty()) id = make_task_id();
        OutgoingMessage one = m;
        one.task_id = id;
        std::lock_guard lk(mu_);
        std::string holder;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            // Writes are one at a time (the transaction holds the write lock), so what this
            // finds cannot change before the insert; tasks_unique would refuse a second one.
            auto now = now_ms();
            auto held = db_.prepare(
                "SELECT id FROM tasks WHERE unique_key=?1 AND state IN (0, 1, 3, 6) "
                "UNION ALL SELECT task_id FROM unique_keys WHERE key=?1 AND until>=?2 LIMIT 1");
            CONVEYOR_TRY(held);
            held->bind(1, key).bind(2, now);
            auto found = held->step();
            CONVEYOR_TRY(found);
            if (*found) {
                holder = held->text(0);
                return {};
            }
            CONVEYOR_TRY(insert_messages(st_, std::span(&one, 1), known_queues_, key));
            if (hold_until) {
                auto keep = db_.prepare(
                    "INSERT OR REPLACE INTO unique_keys(key, task_id, until) VALUES(?1, ?2, ?3)");
                CONVEYOR_TRY(keep);
                CONVEYOR_TRY(
                    keep->bind(1, key).bind(2, id).bind(3, to_epoch_ms(*hold_until)).run());
            }
            holder = id;
            return {};
        });
        CONVEYOR_TRY(ok);
        if (holder == id) known_queues_.committed(std::span(&one, 1));
        return holder;
    }

    Result<std::unique_ptr<ScheduleStore>> schedule_store() override {
        return open_schedule_store(opts_);
    }

    Result<std::unique_ptr<TaskHistory>> history() override { return open_history(opts_); }

    Result<void> report_worker(std::string_view node, const Json& info) override {
        std::lock_guard lk(mu_);
        return in_transaction(db_, st_, [&]() -> Result<void> {
            auto up = db_.prepare(
                "INSERT INTO workers(name, info, seen_at) VALUES(?1, ?2, ?3) ON CONFLICT(name) "
                "DO UPDATE SET info=excluded.info, seen_at=excluded.seen_at");
            CONVEYOR_TRY(up);
            auto now = now_ms();
            up->bind(1, node)
                .bind(2, info.dump(-1, ' ', false, Json::error_handler_t::replace))
                .bind(3, now);
            CONVEYOR_TRY(up->run());
            // Workers gone for a day are forgotten.
            auto old = db_.prepare("DELETE FROM workers WHERE seen_at < ?1");
            CONVEYOR_TRY(old);
            old->bind(1, now - 86400000);
            CONVEYOR_TRY(old->run());
            return {};
        });
    }

    Result<std::unique_ptr<Consumer>> consume(const ConsumerOptions& o) override {
        return open_consumer(opts_, o);
    }

    Result<std::vector<QueueStats>> stats() override {
        std::lock_guard lk(mu_);
        std::map<std::string, QueueStats> by_queue;
        auto names = db_.prepare("SELECT name, paused FROM queues");
        CONVEYOR_TRY(names);
        for (;;) {
            auto r = names->step();
            CONVEYOR_TRY(r);
            if (!*r) break;
            auto n = names->text(0);
            by_queue[n].queue = n;
            by_queue[n].paused = names->i64(1) != 0;
        }
        // From the counts the writers keep (a row per queue and state, whatever the queues
        // hold); tasks in flight, as many as the workers hold, from their index; delayed tasks
        // already due and not yet made ready count as ready (only those are read).
        auto q = db_.prepare(
            "SELECT queue, state, 0, n FROM counts WHERE n<>0 "
            "UNION ALL SELECT queue, 1, 0, count(*) FROM tasks WHERE state=1 GROUP BY queue "
            "UNION ALL SELECT queue, 3, 1, count(*) FROM tasks "
            "WHERE state=3 AND available_at<=?1 GROUP BY queue");
        CONVEYOR_TRY(q);
        q->bind(1, now_ms());
        for (;;) {
            auto r = q->step();
            CONVEYOR_TRY(r);
            if (!*r) break;
            auto& s = by_queue[q->text(0)];
            s.queue = q->text(0);
            auto count = q->i64(3);
            switch (q->i64(1)) {
                case kReady:
                    s.ready += count;
                    break;
                case kInFlight:
                    s.in_flight += count;
                    break;
                case kDead:
                    s.dead += count;
                    break;
                case kLimited:
                    s.limited += count;
                    break;
                case kDelayed:
                    if (q->i64(2) != 0) {  // due: taken from the delayed ones
                        s.ready += count;
                        s.delayed -= count;
                    } else {
                        s.delayed += count;
                    }
                    break;
            }
        }
        std::vector<QueueStats> out;
        for (auto& [_, s] : by_queue) out.push_back(s);
        return out;
    }

    Result<void> set_limit(const TaskLimit& limit) override {
        CONVEYOR_TRY(check_limit(limit));
        std::lock_guard lk(mu_);
        return in_transaction(db_, st_, [&] { return store_limit(db_, limit); });
    }

    Result<std::vector<LimitStats>> limits() override {
        std::lock_guard lk(mu_);
        return limit_stats(db_);
    }

    Result<void> pause_queue(std::string_view queue, bool paused) override {
        std::lock_guard lk(mu_);
        if (queue.empty()) return fail(Errc::invalid_argument, "a queue name is empty");
        auto up = db_.prepare(
            "INSERT INTO queues(name, paused) VALUES(?1, ?2) "
            "ON CONFLICT(name) DO UPDATE SET paused=excluded.paused");
        CONVEYOR_TRY(up);
        up->bind(1, queue).bind(2, std::int64_t(paused ? 1 : 0));
        CONVEYOR_TRY(up->run());
        return {};
    }

    Result<TaskResult> result(std::string_view id) override {
        std::lock_guard lk(mu_);
        TaskResult r;
        r.id = std::string(id);
        // One statement, so one snapshot: a task dead-lettered between two reads would seem
        // to have failed without its exception.
        auto q = db_.prepare(
            "SELECT r.state, r.result, r.traceback, r.retries, r.done_at, t.state, t.retries, "
            "r.children "
            "FROM (SELECT ?1 AS id) k LEFT JOIN results r ON r.id = k.id "
            "LEFT JOIN tasks t ON t.id = k.id LIMIT 1");
        CONVEYOR_TRY(q);
        q->bind(1, id);
        auto row = q->step();
        CONVEYOR_TRY(row);
        if (!*row) return r;
        if (!q->is_null(0)) {
            r.state = TaskState(q->i64(0));
            r.result = Json::parse(q->text(1), nullptr, false);
            if (r.result.is_discarded()) r.result = nullptr;
            r.traceback = q->text(2);
            r.retries = int(q->i64(3));
            r.done_at = from_epoch_ms(q->i64(4));
            if (!q->is_null(7))
                if (auto c = Json::parse(q->text(7), nullptr, false); c.is_array())
                    for (auto& id : c)
                        if (id.is_string()) r.children.push_back(id.get<std::string>());
            return r;
        }
        if (!q->is_null(5)) {
            r.retries = int(q->i64(6));
            switch (q->i64(5)) {
                case kInFlight:
                    r.state = TaskState::started;
                    break;
                case kDead:
                    r.state = TaskState::failure;
                    break;
                case kSucceeded:
                    r.state = TaskState::success;
                    break;
                case kRevoked:
                    r.state = TaskState::revoked;
                    break;
                default:
                    r.state = r.retries > 0 ? TaskState::retry : TaskState::pending;
                    break;
            }
        }
        return r;
    }

    Result<void> store_results(std::span<const TaskResult> results, std::string_view) override {
        std::lock_guard lk(mu_);
        return in_transaction(db_, st_, [&]() -> Result<void> {
            for (auto& r : results) CONVEYOR_TRY(store_result(st_, r));
            return {};
        });
    }

    Result<void> begin_chord(std::string_view group_id, std::size_t size) override {
        std::lock_guard lk(mu_);
        return in_transaction(db_, st_, [&]() -> Result<void> {
            auto q = db_.prepare(
                "INSERT OR REPLACE INTO chords(group_id, size, created_at) VALUES(?1, ?2, ?3)");
            CONVEYOR_TRY(q);
            q->bind(1, group_id).bind(2, std::int64_t(size)).bind(3, now_ms());
            CONVEYOR_TRY(q->run());
            return {};
        });
    }

    Result<ChordParts> chord_part_done(std::string_view group_id, int index,
                                       const TaskResult& part) override {
        std::lock_guard lk(mu_);
        ChordParts out;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            auto size = db_.prepare("SELECT size FROM chords WHERE group_id=?1");
            CONVEYOR_TRY(size);
            size->bind(1, group_id);
            auto row = size->step();
            CONVEYOR_TRY(row);
            if (!*row) return {};  // unknown or already completed: nothing to do
            auto n = size->i64(0);
            auto ins = db_.prepare(
                "INSERT OR REPLACE INTO chord_parts(group_id, idx, task_id, state, result) "
                "VALUES(?1, ?2, ?3, ?4, ?5)");
            CONVEYOR_TRY(ins);
            ins->bind(1, group_id).bind(2, index).bind(3, part.id).bind(4, int(part.state));
            ins->bind(5, part.result.dump(-1, ' ', false, Json::error_handler_t::replace));
            CONVEYOR_TRY(ins->run());
            auto parts = db_.prepare(
                "SELECT task_id, state, result FROM chord_parts WHERE group_id=?1 ORDER BY idx");
            CONVEYOR_TRY(parts);
            parts->bind(1, group_id);
            std::vector<TaskResult> got;
            for (;;) {
                auto r = parts->step();
                CONVEYOR_TRY(r);
                if (!*r) break;
                TaskResult t;
                t.id = parts->text(0);
                t.state = TaskState(parts->i64(1));
                t.result = Json::parse(parts->text(2), nullptr, false);
                got.push_back(std::move(t));
            }
            if (std::int64_t(got.size()) < n) return {};
            out.complete = true;
            out.parts = std::move(got);
            for (auto sql : {"DELETE FROM chord_parts WHERE group_id=?1",
                             "DELETE FROM chords WHERE group_id=?1"}) {
                auto del = db_.prepare(sql);
                CONVEYOR_TRY(del);
                del->bind(1, group_id);
                CONVEYOR_TRY(del->run());
            }
            return {};
        });
        CONVEYOR_TRY(ok);
        return out;
    }

    Result<std::vector<DeadLetter>> dead_letters(std::string_view queue,
                                                 std::size_t limit) override {
        std::lock_guard lk(mu_);
        auto q = db_.prepare(
            "SELECT t.id, t.queue, m.props, m.headers, m.body, t.reason, t.dead_at FROM tasks t "
            "CROSS JOIN messages m ON m.seq = t.seq "
            "WHERE t.state=2 AND t.queue=?1 ORDER BY t.seq LIMIT ?2");
        CONVEYOR_TRY(q);
        q->bind(1, queue).bind(2, std::int64_t(limit));
        std::vector<DeadLetter> out;
        for (;;) {
            auto r = q->step();
            CONVEYOR_TRY(r);
            if (!*r) break;
            out.push_back(DeadLetter{q->text(0), q->text(1),
                                     make_envelope(q->text(2), q->text(3), q->text(4)), q->text(5),
                                     from_epoch_ms(q->i64(6))});
        }
        return out;
    }

    Result<std::size_t> replay_dead(std::string_view queue,
                                    std::span<const std::string> ids) override {
        std::lock_guard lk(mu_);
        std::size_t moved = 0;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            moved = 0;
            std::string where = "state=2 AND queue=?1";
            if (!ids.empty()) where += " AND id=?2";
            auto clear = db_.prepare(
                "DELETE FROM results WHERE id IN (SELECT id FROM tasks WHERE " + where + ")");
            CONVEYOR_TRY(clear);
            auto fresh = db_.prepare(std::string(kRetriesReset) +
                                     " WHERE seq IN (SELECT seq FROM tasks WHERE " + where + ")");
            CONVEYOR_TRY(fresh);
            auto upd = db_.prepare(
                "UPDATE tasks SET state=0, reason=NULL, dead_at=NULL, retries=0, deliveries=0, "
                "finished_at=NULL, started_at=NULL, available_at=?3 WHERE " +
                where);
            CONVEYOR_TRY(upd);
            auto one = [&](std::optional<std::string_view> id) -> Result<void> {
                clear->reset();
                clear->bind(1, queue);
                if (id) clear->bind(2, *id);
                CONVEYOR_TRY(clear->run());
                fresh->reset();
                fresh->bind(1, queue);
                if (id) fresh->bind(2, *id);
                CONVEYOR_TRY(fresh->run());
                upd->reset();
                upd->bind(1, queue).bind(3, now_ms());
                if (id) upd->bind(2, *id);
                auto r = upd->run();
                CONVEYOR_TRY(r);
                moved += std::size_t(*r);
                return {};
            };
            if (ids.empty()) {
                CONVEYOR_TRY(one(std::nullopt));
            } else {
                for (auto& id : ids) CONVEYOR_TRY(one(id));
            }
            CountDeltas counts;
            counts.add(queue, kDead, -std::int64_t(moved));
            counts.add(queue, kReady, std::int64_t(moved));
            return counts.write(st_);
        });
        CONVEYOR_TRY(ok);
        return moved;
    }

    Result<std::size_t> purge_dead(std::string_view queue) override {
        std::lock_guard lk(mu_);
        std::size_t n = 0;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            auto del = db_.prepare("DELETE FROM tasks WHERE state=2 AND queue=?1");
            CONVEYOR_TRY(del);
            del->bind(1, queue);
            auto r = del->run();
            CONVEYOR_TRY(r);
            n = std::size_t(*r);
            CountDeltas counts;
            counts.add(queue, kDead, -std::int64_t(n));
            return counts.write(st_);
        });
        CONVEYOR_TRY(ok);
        return n;
    }

    Result<void> set_topology(const Topology& t) override {
        CONVEYOR_TRY(detail::check_embedded_topology(t, "sqlite"));
        std::lock_guard lk(mu_);
        topology_queues_.clear();
        for (auto& q : t.queues) topology_queues_.push_back(q.name);
        // Fair queues are the file's, for every publisher and worker: recorded now (a write
        // only when one changed).
        auto differ = fair_keys_differ(db_, t);
        CONVEYOR_TRY(differ);
        if (!*differ) return {};
        return in_transaction(db_, st_, [&] { return set_fair_keys(db_, t); });
    }

    Result<void> declare_topology() override {
        std::lock_guard lk(mu_);
        return in_transaction(db_, st_, [&]() -> Result<void> {
            for (auto& q : topology_queues_) {
                st_.insert_queue.reset();
                CONVEYOR_TRY(st_.insert_queue.bind(1, q).run());
                known_queues_.rows.insert(q);
            }
            return {};
        });
    }

    std::string url() const override { return "sqlite://" + opts_.path; }

    /// Deletes results past result_expires; `wait` false: not at all while another process
    /// holds the write lock (the workers' housekeeping does it later).
    Result<void> expire_results(bool wait = true) {
        std::lock_guard lk(mu_);
        st_.expire_results.reset();
        if (!wait) db_.wait_for_locks(false);
        auto r =
            st_.expire_results.bind(1, now_ms() - std::int64_t(opts_.result_expires.count()) * 1000)
                .run();
        st_.expire_results.reset();
        if (!wait) db_.wait_for_locks(true);
        CONVEYOR_TRY(r);
        return {};
    }

  private:
    SqliteOptions opts_;
    std::mutex mu_;
    Db db_;
    Statements st_;
    KnownQueues known_queues_;
    std::vector<std::string> topology_queues_;
};

}  // namespace

Result<std::shared_ptr<Broker>> open_sqlite_broker(const SqliteOptions& o) {
    if (o.path.empty())
        return fail(Errc::invalid_argument,
                    "sqlite broker URL needs a file path, e.g. sqlite://conveyor.db");
    auto db = Db::open(o.path, o.synchronous, o.busy_timeout);
    CONVEYOR_TRY(db);
    CONVEYOR_TRY(create_schema(*db));
    auto st = Statements::prepare(*db);
    CONVEYOR_TRY(st);
    auto b = std::make_shared<SqliteBroker>(o, std::move(*db), std::move(*st));
    // Housekeeping: a lock held elsewhere or a full disk must not keep the broker closed, nor
    // make opening it wait.
    if (auto ok = b->expire_results(false); !ok && ok.error().code != Errc::unavailable)
        return std::unexpected(ok.error());
    return std::shared_ptr<Broker>(std::move(b));
}

}  // namespace conveyor::sqlite
