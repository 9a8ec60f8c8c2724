// The sqlite engine's task history: finished tasks stay in the tasks table (states 4, 5) until
// the consumers' housekeeping prunes them; per-minute counts in `minutes`; a trigram search
// index over the first bytes of each message body in `task_search`, filled behind the writers
// by whoever searches (the dashboard, in the background).
#include "broker/sqlite/sqlite_history.hpp"

#include <fmt/format.h>

#include <mutex>

#include "broker/sqlite/sqlite_tables.hpp"
#include "conveyor/history.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor::sqlite {

namespace {

using detail::from_epoch_ms;
using detail::to_epoch_ms;

/// How much of a body the search index holds, and a list shows.
constexpr int kIndexedBytes = 512;
constexpr int kListedBytes = 2048;

constexpr std::string_view kColumns =
    "t.seq, t.id, t.queue, t.state, t.name, t.retries, t.deliveries, t.created_at, "
    "t.available_at, t.started_at, t.finished_at, t.lease_owner, t.error, t.reason, t.attempts, "
    "m.props, m.headers";

int state_column(HistoryState s) {
    switch (s) {
        case HistoryState::waiting:
            return kReady;
        case HistoryState::running:
            return kInFlight;
        case HistoryState::dead:
            return kDead;
        case HistoryState::delayed:
            return kDelayed;
        case HistoryState::succeeded:
            return kSucceeded;
        case HistoryState::revoked:
            return kRevoked;
    }
    return kReady;
}

HistoryState history_state(std::int64_t column) {
    switch (column) {
        case kInFlight:
            return HistoryState::running;
        case kDead:
            return HistoryState::dead;
        case kDelayed:
            return HistoryState::delayed;
        case kSucceeded:
            return HistoryState::succeeded;
        case kRevoked:
            return HistoryState::revoked;
        default:
            return HistoryState::waiting;
    }
}

std::optional<TimePoint> time_column(const Stmt& q, int col) {
    if (q.is_null(col)) return std::nullopt;
    return from_epoch_ms(q.i64(col));
}

/// A row of kColumns (and the body at column 17).
TaskRecord record(const Stmt& q) {
    TaskRecord r;
    r.cursor = q.i64(0);
    r.id = q.text(1);
    r.queue = q.text(2);
    r.state = history_state(q.i64(3));
    r.name = q.text(4);
    r.retries = int(q.i64(5));
    r.deliveries = int(q.i64(6));
    r.enqueued = time_column(q, 7);
    r.due = time_column(q, 8);
    r.started = time_column(q, 9);
    r.finished = time_column(q, 10);
    if (r.state != HistoryState::waiting && r.state != HistoryState::delayed) r.worker = q.text(11);
    r.error = q.text(12);
    r.reason = q.text(13);
    if (!q.is_null(14))
        if (auto a = Json::parse(q.text(14), nullptr, false); a.is_array())
            for (auto& x : a) {
                if (!x.is_object()) continue;
                TaskAttempt t;
                t.started = from_epoch_ms(x.value("started", std::int64_t(0)));
                t.finished = from_epoch_ms(x.value("finished", std::int64_t(0)));
                t.worker = x.value("worker", "");
                t.error = x.value("error", "");
                r.attempts.push_back(std::move(t));
            }
    r.envelope = make_envelope(q.text(15), q.text(16), q.text(17));
    if (r.name.empty()) r.name = std::string(task_name_of(r.envelope));
    return r;
}

class SqliteHistory final : public TaskHistory {
  public:
    SqliteHistory(Db db, Statements st, bool from_events)
        : db_(std::move(db)), st_(std::move(st)), from_events_(from_events) {}

    Result<TaskPage> tasks(const TaskQuery& query) override {
        std::lock_guard lk(mu_);
        std::size_t limit = std::clamp<std::size_t>(query.limit, 1, 1000);
        // Searches go through the trigram index newest first (and the body is checked, so
        // the index may hold more than it should); everything else through the table's order
        // or an index on the state or the name.
        bool indexed = query.search.size() >= 3 && search_ready_;
        // The page is chosen from the task rows first (their messages read only for a search)
        // and the messages of that page joined after: a filter that sorts many rows then sorts
        // narrow ones.
        std::string sql = "SELECT t.* FROM ";
        std::vector<std::string> where;
        if (indexed) {
            sql +=
                "task_search f CROSS JOIN tasks t ON t.seq = f.rowid CROSS JOIN messages b ON "
                "b.seq = t.seq";
            where.push_back("f.text GLOB ?1");
            where.push_back("instr(b.body, ?2) > 0");
            if (query.before > 0) where.push_back("f.rowid < ?3");
        } else if (!query.search.empty()) {
            sql += "tasks t CROSS JOIN messages b ON b.seq = t.seq";
            where.push_back("instr(b.body, ?2) > 0");
            if (query.before > 0) where.push_back("t.seq < ?3");
        } else {
            sql += "tasks t";
            if (query.before > 0) where.push_back("t.seq < ?3");
        }
        // The state as a literal: the planner uses a partial index (WHERE state=2, ...) only
        // for a state it can see.
        if (query.state) where.push_back(fmt::format("t.state = {}", state_column(*query.state)));
        if (!query.name.empty()) where.push_back("t.name = ?5");
        if (!query.queue.empty()) where.push_back("t.queue = ?6");
        if (query.since) where.push_back("t.created_at >= ?7");
        if (query.until) where.push_back("t.created_at < ?8");
        for (std::size_t i = 0; i < where.size(); ++i)
            sql += (i == 0 ? " WHERE " : " AND ") + where[i];
        sql += indexed ? " ORDER BY f.rowid DESC" : " ORDER BY t.seq DESC";
        sql += " LIMIT ?9";
        sql = fmt::format(
            "SELECT {}, substr(m.body, 1, {}) FROM ({}) t CROSS JOIN messages m ON m.seq = t.seq "
            "ORDER BY t.seq DESC",
            kColumns, kListedBytes, sql);
        auto q = db_.prepare(sql);
        CONVEYOR_TRY(q);
        if (indexed) {
            // A GLOB pattern the trigram index answers: *search*, its wildcards escaped.
            std::string pattern = "*";
            for (char c : query.search) {
                if (c == '*' || c == '?' || c == '[')
                    pattern += fmt::format("[{}]", c);
                else
                    pattern += c;
            }
            pattern += '*';
            q->bind(1, pattern);
        }
        if (!query.search.empty()) q->bind(2, query.search);
        if (query.before > 0) q->bind(3, query.before);
        if (!query.name.empty()) q->bind(5, query.name);
        if (!query.queue.empty()) q->bind(6, query.queue);
        if (query.since) q->bind(7, to_epoch_ms(*query.since));
        if (query.until) q->bind(8, to_epoch_ms(*query.until));
        q->bind(9, std::int64_t(limit + 1));
        TaskPage page;
        for (;;) {
            auto r = q->step();
            CONVEYOR_TRY(r);
            if (!*r) break;
            if (page.tasks.size() == limit) {
                page.next = page.tasks.back().cursor;
                break;
            }
            page.tasks.push_back(record(*q));
        }
        return page;
    }

    Result<TaskRecord> task(std::string_view id) override {
        std::lock_guard lk(mu_);
        auto q =
            db_.prepare(fmt::format("SELECT {}, m.body FROM tasks t CROSS JOIN messages m ON "
                                    "m.seq = t.seq WHERE t.id = ?1",
                                    kColumns));
        CONVEYOR_TRY(q);
        q->bind(1, id);
        auto r = q->step();
        CONVEYOR_TRY(r);
        if (!*r)
            return fail(Errc::not_found,
                        fmt::format("the history has no task '{}' (never seen, or pruned)", id));
        return record(*q);
    }

    Result<std::vector<MinuteCounts>> minutes(TimePoint since, std::string_view queue,
                                              std::string_view name) override {
        std::lock_guard lk(mu_);
        auto q = db_.prepare(
            "SELECT minute, sum(succeeded), sum(failed), sum(retried), sum(dead), sum(run_ms), "
            "sum(waited), sum(wait_ms) FROM minutes WHERE minute >= ?1 "
            "AND (?2 IS NULL OR queue = ?2) AND (?3 IS NULL OR name = ?3) "
            "GROUP BY minute ORDER BY minute");
        CONVEYOR_TRY(q);
        q->bind(1, to_epoch_ms(since) / 60000 * 60000).bind_or_null(2, queue).bind_or_null(3, name);
        std::vector<MinuteCounts> out;
        for (;;) {
            auto r = q->step();
            CONVEYOR_TRY(r);
            if (!*r) break;
            MinuteCounts m;
            m.minute = from_epoch_ms(q->i64(0));
            m.succeeded = q->i64(1);
            m.failed = q->i64(2);
            m.retried = q->i64(3);
            m.dead = q->i64(4);
            m.run_seconds = double(q->i64(5)) / 1000.0;
            m.waited = q->i64(6);
            m.wait_seconds = double(q->i64(7)) / 1000.0;
            out.push_back(m);
        }
        return out;
    }

    Result<void> retry(std::string_view id) override {
        if (from_events_)
            return fail(Errc::invalid_argument,
                        "this history comes from RabbitMQ's task events: the task itself is not "
                        "here to run again; replay a dead letter (conveyor dlq replay) or enqueue "
                        "it anew");
        return change(id, [&](int state) -> Result<void> {
            if (state == kReady || state == kInFlight || state == kLimited)
                return fail(Errc::conflict,
                            fmt::format("task '{}' is {} already", id,
                                        state == kInFlight ? "running" : "waiting"));
            auto fresh = db_.prepare(std::string(kRetriesReset) +
                                     " WHERE seq = (SELECT seq FROM tasks WHERE id=?1)");
            CONVEYOR_TRY(fresh);
            CONVEYOR_TRY(fresh->bind(1, id).run());
            auto up = db_.prepare(
                "UPDATE tasks SET state=0, available_at=?2, lease_owner=NULL, lease_until=NULL, "
                "reason=NULL, dead_at=NULL, finished_at=NULL, started_at=NULL, retries=0, "
                "deliveries=0 WHERE id=?1");
            CONVEYOR_TRY(up);
            up->bind(1, id).bind(2, now_ms());
            CONVEYOR_TRY(up->run());
            return forget_result(id);
        });
    }

    Result<void> revoke(std::string_view id) override {
        if (from_events_)
            return fail(Errc::invalid_argument,
                        "this history comes from RabbitMQ's task events: revoke on the workers "
                        "with `celery control revoke ID`");
        return change(id, [&](int state) -> Result<void> {
            if (state != kReady && state != kDelayed && state != kLimited)
                return fail(Errc::conflict,
                            fmt::format("task '{}' is not waiting: only a waiting or delayed "
                                        "task can be revoked here",
                                        id));
            auto up = db_.prepare(
                "UPDATE tasks SET state=5, finished_at=?2, error='revoked' WHERE id=?1");
            CONVEYOR_TRY(up);
            up->bind(1, id).bind(2, now_ms());
            CONVEYOR_TRY(up->run());
            TaskResult r;
            r.id = std::string(id);
            r.state = TaskState::revoked;
            r.result = Json{{"exc_type", "TaskRevokedError"},
                            {"exc_message", Json::array({"revoked"})},
                            {"exc_module", "celery.exceptions"}};
            r.done_at = SystemClock::now();
            return store_result(st_, r);
        });
    }

    Result<void> remove(std::string_view id) override {
        return change(id, [&](int state) -> Result<void> {
            if (state == kInFlight)
                return fail(
                    Errc::conflict,
                    fmt::format("task '{}' is running; it can be removed once it ends", id));
            auto del = db_.prepare("DELETE FROM tasks WHERE id=?1");
            CONVEYOR_TRY(del);
            del->bind(1, id);
            CONVEYOR_TRY(del->run());
            return forget_result(id);
        });
    }

    Result<std::vector<WorkerRecord>> workers() override {
        std::lock_guard lk(mu_);
        auto q = db_.prepare("SELECT name, info, seen_at FROM workers ORDER BY name");
        CONVEYOR_TRY(q);
        std::vector<WorkerRecord> out;
        auto now = now_ms();
        for (;;) {
            auto r = q->step();
            CONVEYOR_TRY(r);
            if (!*r) break;
            WorkerRecord w;
            w.node = q->text(0);
            w.info = Json::parse(q->text(1), nullptr, false);
            if (!w.info.is_object()) w.info = Json::object();
            w.seen = from_epoch_ms(q->i64(2));
            w.online = now - q->i64(2) < 15000 && !w.info.value("offline", false);
            out.push_back(std::move(w));
        }
        q->reset();
        // What each runs: the tasks leased by its consumer ("<consumer>#<suffix>").
        auto running = db_.prepare(
            "SELECT t.id, t.name, t.queue, t.started_at, m.headers, t.lease_owner FROM tasks t "
            "CROSS JOIN messages m ON m.seq = t.seq WHERE t.state=1 "
            "AND t.lease_owner >= ?1 AND t.lease_owner < ?2 ORDER BY t.seq LIMIT 1000");
        CONVEYOR_TRY(running);
        for (auto& w : out) {
            std::string consumer = w.info.value("consumer", "");
            if (consumer.empty() || !w.online) continue;
            running->reset();
            running->bind(1, consumer + "#").bind(2, consumer + "$");  // '$' follows '#'
            for (;;) {
                auto r = running->step();
                CONVEYOR_TRY(r);
                if (!*r) break;
                WorkerRecord::Running t{running->text(0), running->text(1), running->text(2),
                                        time_column(*running, 3)};
                if (t.name.empty())
                    t.name = std::string(task_name_of(make_envelope("{}", running->text(4), {})));
                w.running.push_back(std::move(t));
            }
        }
        std::stable_sort(out.begin(), out.end(),
                         [](auto& a, auto& b) { return a.online && !b.online; });
        return out;
    }

    Result<std::size_t> index(std::size_t max) override {
        std::lock_guard lk(mu_);
        std::size_t added = 0;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            added = 0;
            CONVEYOR_TRY(
                db_.exec("CREATE VIRTUAL TABLE IF NOT EXISTS task_search USING fts5(text, "
                         "tokenize='trigram', detail='none'); "
                         "CREATE TABLE IF NOT EXISTS task_search_state(id INTEGER PRIMARY KEY "
                         "CHECK(id=1), last_seq INTEGER NOT NULL, cleaned_at INTEGER NOT NULL); "
                         "INSERT OR IGNORE INTO task_search_state VALUES(1, 0, 0)"));
            auto last = db_.prepare("SELECT last_seq, cleaned_at FROM task_search_state");
            CONVEYOR_TRY(last);
            CONVEYOR_TRY(last->step());
            std::int64_t from = last->i64(0), cleaned = last->i64(1);
            auto ins = db_.prepare(fmt::format(
                "INSERT INTO task_search(rowid, text) SELECT seq, CAST(substr(body, 1, {}) AS "
                "TEXT) FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2 RETURNING rowid",
                kIndexedBytes));
            CONVEYOR_TRY(ins);
            ins->bind(1, from).bind(2, std::int64_t(max));
            std::int64_t top = from;
            for (;;) {
                auto r = ins->step();
                CONVEYOR_TRY(r);
                if (!*r) break;
                top = std::max(top, ins->i64(0));
                added++;
            }
            ins->reset();
            // Entries of pruned tasks (older than the oldest task) go now and then.
            auto now = now_ms();
            if (now - cleaned > 600000) {
                CONVEYOR_TRY(db_.exec(
                    "DELETE FROM task_search WHERE rowid < (SELECT coalesce(min(seq), 0) FROM "
                    "tasks)"));
                cleaned = now;
            }
            auto up = db_.prepare("UPDATE task_search_state SET last_seq=?1, cleaned_at=?2");
            CONVEYOR_TRY(up);
            up->bind(1, top).bind(2, cleaned);
            CONVEYOR_TRY(up->run());
            return {};
        });
        CONVEYOR_TRY(ok);
        search_ready_ = true;
        return added;
    }

  private:
    /// Runs `fn(state)` in a transaction on the task's row; Errc::not_found without one.
    template <class Fn>
    Result<void> change(std::string_view id, Fn&& fn) {
        std::lock_guard lk(mu_);
        return in_transaction(db_, st_, [&]() -> Result<void> {
            auto q = db_.prepare("SELECT state, queue FROM tasks WHERE id=?1");
            CONVEYOR_TRY(q);
            q->bind(1, id);
            auto r = q->step();
            CONVEYOR_TRY(r);
            if (!*r)
                return fail(
                    Errc::not_found,
                    fmt::format("the history has no task '{}' (never seen, or pruned)", id));
            int state = int(q->i64(0));
            std::string queue = q->text(1);
            q->reset();
            CONVEYOR_TRY(fn(state));
            // The queue's counts: from the state it had to the one it has (or none).
            r = q->bind(1, id).step();
            CONVEYOR_TRY(r);
            int now = *r ? int(q->i64(0)) : -1;
            q->reset();
            if (now == state) return {};
            CountDeltas counts;
            counts.move(queue, state, now);
            return counts.write(st_);
        });
    }

    Result<void> forget_result(std::string_view id) {
        auto del = db_.prepare("DELETE FROM results WHERE id=?1");
        CONVEYOR_TRY(del);
        del->bind(1, id);
        CONVEYOR_TRY(del->run());
        return {};
    }

    std::mutex mu_;
    Db db_;
    Statements st_;
    bool from_events_;
    bool search_ready_ = false;  // index() ran: the search index exists
};

}  // namespace

Result<std::unique_ptr<TaskHistory>> open_history(const SqliteOptions& sqlite, bool from_events) {
    auto db = Db::open(sqlite.path, sqlite.synchronous, sqlite.busy_timeout);
    CONVEYOR_TRY(db);
    auto st = Statements::prepare(*db);
    CONVEYOR_TRY(st);
    return std::unique_ptr<TaskHistory>(
        std::make_unique<SqliteHistory>(std::move(*db), std::move(*st), from_events));
}

}  // namespace conveyor::sqlite
