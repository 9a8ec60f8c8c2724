#include "broker/sqlite/sqlite_broker.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_set>

#include "broker/embedded.hpp"
#include "broker/sqlite/sqlite_db.hpp"
#include "core/codec.hpp"
#include "core/time.hpp"

namespace conveyor::sqlite {

namespace {

using detail::from_epoch_ms;
using detail::to_epoch_ms;

// A task's state column.
constexpr int kReady = 0;
constexpr int kInFlight = 1;
constexpr int kDead = 2;
constexpr int kDelayed = 3;

constexpr std::string_view kSchema = R"sql(
CREATE TABLE IF NOT EXISTS tasks(
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  queue TEXT NOT NULL,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL DEFAULT 0,
  available_at INTEGER NOT NULL DEFAULT 0,
  lease_owner TEXT,
  lease_until INTEGER,
  deliveries INTEGER NOT NULL DEFAULT 0,
  retries INTEGER NOT NULL DEFAULT 0,
  props TEXT NOT NULL,
  headers TEXT NOT NULL,
  body BLOB NOT NULL,
  reason TEXT,
  dead_at INTEGER);
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks(queue, priority DESC, seq) WHERE state=0;
CREATE INDEX IF NOT EXISTS tasks_delayed ON tasks(available_at) WHERE state=3;
CREATE INDEX IF NOT EXISTS tasks_leased ON tasks(lease_until) WHERE state=1;
CREATE INDEX IF NOT EXISTS tasks_dead ON tasks(queue, seq) WHERE state=2;
CREATE TABLE IF NOT EXISTS results(
  id TEXT PRIMARY KEY, state INTEGER NOT NULL, result TEXT, traceback TEXT,
  retries INTEGER NOT NULL DEFAULT 0, done_at INTEGER NOT NULL, children TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_done ON results(done_at);
CREATE TABLE IF NOT EXISTS queues(name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scheduler_lease(id INTEGER PRIMARY KEY CHECK(id=1), owner TEXT,
  until INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS schedule_state(name TEXT PRIMARY KEY, last_fire INTEGER,
  last_run INTEGER, paused INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS schedules(name TEXT PRIMARY KEY, spec TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chords(group_id TEXT PRIMARY KEY, size INTEGER NOT NULL,
  created_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chord_parts(group_id TEXT NOT NULL, idx INTEGER NOT NULL,
  task_id TEXT NOT NULL, state INTEGER NOT NULL, result TEXT,
  PRIMARY KEY(group_id, idx)) WITHOUT ROWID;
)sql";

std::int64_t now_ms() { return to_epoch_ms(SystemClock::now()); }

std::string props_json(const Envelope& e) {
    Json p = Json::object();
    if (!e.content_type.empty()) p["content_type"] = e.content_type;
    if (!e.content_encoding.empty()) p["content_encoding"] = e.content_encoding;
    if (!e.correlation_id.empty()) p["correlation_id"] = e.correlation_id;
    if (!e.reply_to.empty()) p["reply_to"] = e.reply_to;
    if (e.priority) p["priority"] = e.priority;
    return p.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Envelope make_envelope(const std::string& props, const std::string& headers, std::string body) {
    Envelope e;
    Json p = Json::parse(props, nullptr, false);
    if (p.is_object()) {
        e.content_type = p.value("content_type", "");
        e.content_encoding = p.value("content_encoding", "");
        e.correlation_id = p.value("correlation_id", "");
        e.reply_to = p.value("reply_to", "");
        e.priority = p.value("priority", 0);
    }
    e.headers = Json::parse(headers, nullptr, false);
    if (e.headers.is_discarded()) e.headers = Json::object();
    e.body = std::move(body);
    return e;
}

std::string headers_json(const Envelope& e) {
    if (!e.headers.is_object()) return "{}";
    // Null headers mean the same as absent ones: they are not stored, which makes rows smaller
    // and reading them back cheaper. Conveyor's own messages have none (the codec leaves them
    // out); other publishers' may.
    auto is_null = [](const Json& v) {
        return v.is_null() ||
               (v.is_array() && !v.empty() &&  // timelimit [null, null]
                std::all_of(v.begin(), v.end(), [](const Json& x) { return x.is_null(); }));
    };
    if (std::none_of(e.headers.begin(), e.headers.end(), is_null))
        return e.headers.dump(-1, ' ', false, Json::error_handler_t::replace);
    Json h = Json::object();
    for (auto& [k, v] : e.headers.items())
        if (!is_null(v)) h.emplace(k, v);
    return h.dump(-1, ' ', false, Json::error_handler_t::replace);
}

int retries_of(const Envelope& e) {
    if (e.headers.is_object()) {
        auto it = e.headers.find("retries");
        if (it != e.headers.end() && it->is_number_integer()) return it->get<int>();
    }
    return 0;
}

/// Prepared statements of one connection.
struct Statements {
    Stmt insert_task, insert_queue, promote, reclaim, claim, ack, retry, dead, release, renew,
        store_result, probe_ready, next_delayed, next_lease, data_version, expire_results;

    static Result<Statements> prepare(Db& db) {
        Statements s;
        struct Def {
            Stmt* stmt;
            std::string_view sql;
        };
        Def defs[] = {
            {&s.insert_task,
             "INSERT OR IGNORE INTO "
             "tasks(id,queue,state,priority,available_at,retries,props,headers,body) "
             "SELECT ?1,?2,?3,?4,?5,?6,?7,?8,?9 WHERE NOT EXISTS (SELECT 1 FROM results WHERE "
             "id=?1)"},
            {&s.insert_queue, "INSERT OR IGNORE INTO queues(name) VALUES(?1)"},
            {&s.promote, "UPDATE tasks SET state=0 WHERE state=3 AND available_at<=?1"},
            {&s.reclaim,
             "UPDATE tasks SET state=0, lease_owner=NULL, lease_until=NULL "
             "WHERE state=1 AND lease_until<?1"},
            {&s.claim,
             "UPDATE tasks SET state=1, lease_owner=?1, lease_until=?2, deliveries=deliveries+1 "
             "WHERE seq IN (SELECT seq FROM tasks WHERE state=0 AND queue=?3 "
             "ORDER BY priority DESC, seq LIMIT ?4) "
             "RETURNING seq, id, queue, deliveries, priority, props, headers, body"},
            {&s.ack, "DELETE FROM tasks WHERE seq=?1 AND lease_owner=?2 AND state=1"},
            {&s.retry,
             "UPDATE tasks SET state=?3, available_at=?4, props=?5, headers=?6, body=?7, "
             "retries=retries+1, lease_owner=NULL, lease_until=NULL "
             "WHERE seq=?1 AND lease_owner=?2 AND state=1"},
            {&s.dead,
             "UPDATE tasks SET state=2, reason=?3, dead_at=?4, lease_owner=NULL, lease_until=NULL "
             "WHERE seq=?1 AND lease_owner=?2 AND state=1"},
            {&s.release,
             "UPDATE tasks SET state=0, lease_owner=NULL, lease_until=NULL, "
             "deliveries=max(deliveries-1,0) WHERE seq=?1 AND lease_owner=?2 AND state=1"},
            {&s.renew,
             "UPDATE tasks SET lease_until=?2 WHERE lease_owner=?1 AND state=1 RETURNING seq"},
            {&s.store_result,
             "INSERT OR REPLACE INTO results(id,state,result,traceback,retries,done_at,children) "
             "VALUES(?1,?2,?3,?4,?5,?6,?7)"},
            {&s.probe_ready, "SELECT 1 FROM tasks WHERE state=0 AND queue=?1 LIMIT 1"},
            {&s.next_delayed, "SELECT min(available_at) FROM tasks WHERE state=3"},
            {&s.next_lease, "SELECT min(lease_until) FROM tasks WHERE state=1"},
            {&s.data_version, "PRAGMA data_version"},
            {&s.expire_results, "DELETE FROM results WHERE done_at<?1"},
        };
        for (auto& d : defs) {
            auto st = db.prepare(d.sql);
            if (!st) return std::unexpected(st.error());
            *d.stmt = std::move(*st);
        }
        return s;
    }
};

Result<void> store_result(Statements& s, const TaskResult& r) {
    s.store_result.reset();
    s.store_result.bind(1, r.id).bind(2, int(r.state));
    std::string result = r.result.dump(-1, ' ', false, Json::error_handler_t::replace);
    s.store_result.bind(3, result);
    if (r.traceback.empty())
        s.store_result.bind_null(4);
    else
        s.store_result.bind(4, r.traceback);
    s.store_result.bind(5, r.retries).bind(6, r.done_at ? to_epoch_ms(*r.done_at) : now_ms());
    if (r.children.empty())
        s.store_result.bind_null(7);
    else
        s.store_result.bind(7, Json(r.children).dump());
    auto ok = s.store_result.run();
    if (!ok) return std::unexpected(ok.error());
    return {};
}

/// A write-ahead log someone deleted is copied into the database and the connection reopened
/// with fresh statements before this connection writes again (see Db::recover_replaced_wal).
Result<void> keep_wal(Db& db, Statements& st) {
    auto replaced = db.recover_replaced_wal();
    if (!replaced) return std::unexpected(replaced.error());
    if (!*replaced) return {};
    st = Statements{};
    auto fresh = Statements::prepare(db);
    if (!fresh) return std::unexpected(fresh.error());
    st = std::move(*fresh);
    fmt::print(stderr,
               "conveyor: the write-ahead log beside the sqlite database was deleted by another "
               "process; what it held is now in the database and a new log is in use\n");
    return {};
}

/// Runs `fn` inside BEGIN IMMEDIATE, retrying when another process holds the lock past the
/// busy timeout.
template <class Fn>
auto in_transaction(Db& db, Statements& st, Fn&& fn) -> decltype(fn()) {
    if (auto ok = keep_wal(db, st); !ok) return std::unexpected(ok.error());
    for (int attempt = 0;; ++attempt) {
        auto tx = Transaction::begin(db);
        if (!tx) {
            if (tx.error().code == Errc::unavailable && attempt < 5) continue;
            return std::unexpected(tx.error());
        }
        auto r = fn();
        if (!r) return r;
        if (auto c = tx->commit(); !c) {
            if (c.error().code == Errc::unavailable && attempt < 5) continue;
            return std::unexpected(c.error());
        }
        return r;
    }
}

/// Inserts messages (inside a transaction); an id already known is dropped.
Result<void> insert_messages(Statements& st, std::span<const OutgoingMessage> msgs,
                             std::set<std::string>& known_queues) {
    auto now = now_ms();
    for (auto& m : msgs) {
        if (m.queue.empty()) return fail(Errc::invalid_argument, "message has no queue");
        if (!known_queues.contains(m.queue)) {
            st.insert_queue.reset();
            if (auto r = st.insert_queue.bind(1, m.queue).run(); !r)
                return std::unexpected(r.error());
        }
        std::string id = codec::envelope_id(m.envelope);
        if (id.empty()) id = make_task_id();
        auto at = m.not_before ? to_epoch_ms(*m.not_before) : now;
        st.insert_task.reset();
        st.insert_task.bind(1, id)
            .bind(2, m.queue)
            .bind(3, at > now ? int(kDelayed) : int(kReady))
            .bind(4, m.envelope.priority)
            .bind(5, at)
            .bind(6, retries_of(m.envelope))
            .bind(7, props_json(m.envelope))
            .bind(8, headers_json(m.envelope))
            .bind_blob(9, m.envelope.body);
        if (auto r = st.insert_task.run(); !r) return std::unexpected(r.error());
    }
    for (auto& m : msgs) known_queues.insert(m.queue);
    return {};
}

class SqliteConsumer final : public Consumer {
  public:
    SqliteConsumer(Db db, Statements st, ConsumerOptions o)
        : db_(std::move(db)), st_(std::move(st)), opts_(std::move(o)) {
        owner_ = fmt::format("{}#{}", opts_.name.empty() ? "consumer" : opts_.name,
                             make_task_id().substr(0, 8));
    }

    ~SqliteConsumer() override {
        // Hand back whatever is still held so that others need not wait for the lease.
        if (held_.empty()) return;
        (void)in_transaction(db_, st_, [&]() -> Result<void> {
            auto st = db_.prepare(
                "UPDATE tasks SET state=0, lease_owner=NULL, lease_until=NULL, "
                "deliveries=max(deliveries-1,0) WHERE lease_owner=?1 AND state=1");
            if (!st) return std::unexpected(st.error());
            st->bind(1, owner_);
            auto r = st->run();
            if (!r) return std::unexpected(r.error());
            return {};
        });
    }

    Result<std::vector<Delivery>> fetch(std::size_t max, std::chrono::milliseconds wait) override {
        auto deadline = std::chrono::steady_clock::now() + wait;
        auto sleep = std::chrono::microseconds(500);
        for (;;) {
            auto probe = claimable();
            if (!probe) return std::unexpected(probe.error());
            if (*probe) {
                auto got = claim(max);
                if (!got) return got;
                if (!got->empty()) return got;
            }
            auto now = std::chrono::steady_clock::now();
            if (now >= deadline) return std::vector<Delivery>{};
            std::this_thread::sleep_for(
                std::min<std::chrono::steady_clock::duration>(sleep, deadline - now));
            sleep = std::min(sleep * 2, std::chrono::microseconds(4000));
        }
    }

    Result<void> settle(std::span<Settlement> batch) override {
        if (batch.empty()) return {};
        auto ok = settle_batch(batch);
        // Settled, or already taken by another consumer (its lease was lost): not held either way.
        if (ok)
            for (auto& s : batch) held_.erase(s.tag);
        return ok;
    }

    Result<void> settle_batch(std::span<Settlement> batch) {
        return in_transaction(db_, st_, [&]() -> Result<void> {
            auto now = now_ms();
            for (auto& s : batch) {
                Result<int> r;
                switch (s.kind) {
                    case Settlement::Kind::ack:
                        st_.ack.reset();
                        r = st_.ack.bind(1, std::int64_t(s.tag)).bind(2, owner_).run();
                        break;
                    case Settlement::Kind::retry: {
                        auto nb = to_epoch_ms(s.not_before);
                        st_.retry.reset();
                        r = st_.retry.bind(1, std::int64_t(s.tag))
                                .bind(2, owner_)
                                .bind(3, nb > now ? int(kDelayed) : int(kReady))
                                .bind(4, nb)
                                .bind(5, props_json(s.envelope))
                                .bind(6, headers_json(s.envelope))
                                .bind_blob(7, s.envelope.body)
                                .run();
                        break;
                    }
                    case Settlement::Kind::dead_letter:
                        st_.dead.reset();
                        r = st_.dead.bind(1, std::int64_t(s.tag))
                                .bind(2, owner_)
                                .bind(3, s.reason)
                                .bind(4, now)
                                .run();
                        break;
                    case Settlement::Kind::release:
                        st_.release.reset();
                        r = st_.release.bind(1, std::int64_t(s.tag)).bind(2, owner_).run();
                        break;
                }
                if (!r) return std::unexpected(r.error());
                // A lost lease (r == 0) means another worker owns the task now; its result wins.
                if (*r > 0 && s.result) {
                    if (auto ok = store_result(st_, *s.result); !ok) return ok;
                }
            }
            return {};
        });
    }

    Result<std::vector<std::uint64_t>> renew() override {
        std::vector<std::uint64_t> lost;
        if (held_.empty()) return lost;
        st_.renew.reset();
        st_.renew.bind(1, owner_).bind(2, now_ms() + opts_.lease.count());
        std::unordered_set<std::uint64_t> still;
        for (;;) {
            auto r = st_.renew.step();
            if (!r) return std::unexpected(r.error());
            if (!*r) break;
            still.insert(std::uint64_t(st_.renew.i64(0)));
        }
        // What is not ours any more: the lease ran out and another consumer reclaimed it.
        for (auto it = held_.begin(); it != held_.end();) {
            if (still.contains(*it)) {
                ++it;
            } else {
                lost.push_back(*it);
                it = held_.erase(it);
            }
        }
        return lost;
    }

    Result<void> set_consuming(const std::string& queue, bool consume) override {
        auto& qs = opts_.queues;
        bool has = std::find(qs.begin(), qs.end(), queue) != qs.end();
        if (consume && !has) qs.push_back(queue);
        if (!consume && has) std::erase(qs, queue);
        next_check_ = {};
        return {};
    }

  private:
    // Cheap read-only check, so idle consumers do not take the write lock.
    Result<bool> claimable() {
        auto now = std::chrono::steady_clock::now();
        st_.data_version.reset();
        auto dv = st_.data_version.step();
        if (!dv) return std::unexpected(dv.error());
        std::int64_t version = st_.data_version.i64(0);
        st_.data_version.reset();
        if (version == last_version_ && now < next_check_) return false;
        // Idle or not, a deleted write-ahead log is noticed within one check period.
        if (auto ok = keep_wal(db_, st_); !ok) return std::unexpected(ok.error());
        last_version_ = version;
        next_check_ = now + std::chrono::milliseconds(200);
        auto wall = now_ms();
        for (auto& q : opts_.queues) {
            st_.probe_ready.reset();
            auto r = st_.probe_ready.bind(1, q).step();
            if (!r) return std::unexpected(r.error());
            st_.probe_ready.reset();
            if (*r) return true;
        }
        for (Stmt* s : {&st_.next_delayed, &st_.next_lease}) {
            s->reset();
            auto r = s->step();
            if (!r) return std::unexpected(r.error());
            bool due = false;
            if (*r && !s->is_null(0)) {
                auto at = s->i64(0);
                if (at <= wall)
                    due = true;
                else
                    next_check_ = std::min(next_check_, now + std::chrono::milliseconds(at - wall));
            }
            s->reset();
            if (due) return true;
        }
        return false;
    }

    Result<std::vector<Delivery>> claim(std::size_t max) {
        std::vector<Delivery> out;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            out.clear();
            auto now = now_ms();
            st_.promote.reset();
            if (auto r = st_.promote.bind(1, now).run(); !r) return std::unexpected(r.error());
            st_.reclaim.reset();
            if (auto r = st_.reclaim.bind(1, now).run(); !r) return std::unexpected(r.error());
            std::size_t n = opts_.queues.size();
            for (std::size_t i = 0; i < n && out.size() < max; ++i) {
                auto& q = opts_.queues[(rr_ + i) % n];
                st_.claim.reset();
                st_.claim.bind(1, owner_)
                    .bind(2, now + opts_.lease.count())
                    .bind(3, q)
                    .bind(4, std::int64_t(max - out.size()));
                std::vector<std::pair<std::pair<int, std::int64_t>, Delivery>> rows;
                for (;;) {
                    auto r = st_.claim.step();
                    if (!r) return std::unexpected(r.error());
                    if (!*r) break;
                    Delivery d;
                    d.tag = std::uint64_t(st_.claim.i64(0));
                    d.message_id = st_.claim.text(1);
                    d.queue = st_.claim.text(2);
                    d.deliveries = int(st_.claim.i64(3));
                    int prio = int(st_.claim.i64(4));
                    d.envelope =
                        make_envelope(st_.claim.text(5), st_.claim.text(6), st_.claim.text(7));
                    // (Braces here would pick pair's copying constructor: a copy of the body.)
                    rows.emplace_back(std::pair{-prio, st_.claim.i64(0)}, std::move(d));
                }
                std::sort(rows.begin(), rows.end(),
                          [](auto& a, auto& b) { return a.first < b.first; });
                for (auto& r : rows) out.push_back(std::move(r.second));
            }
            rr_++;
            return {};
        });
        if (!ok) return std::unexpected(ok.error());
        for (auto& d : out) held_.insert(d.tag);
        if (out.size() == max) next_check_ = {};  // more may be waiting
        return out;
    }

    Db db_;
    Statements st_;
    ConsumerOptions opts_;
    std::string owner_;
    std::unordered_set<std::uint64_t> held_;  // claimed and not settled
    std::size_t rr_ = 0;
    std::int64_t last_version_ = -1;
    std::chrono::steady_clock::time_point next_check_{};
};

class SqliteBroker final : public Broker {
  public:
    SqliteBroker(SqliteOptions o, Db db, Statements st)
        : opts_(std::move(o)), db_(std::move(db)), st_(std::move(st)) {}

    Result<void> publish(std::span<const OutgoingMessage> msgs) override {
        if (msgs.empty()) return {};
        for (auto& m : msgs)
            if (auto ok = detail::check_embedded_message(m, "sqlite"); !ok) return ok;
        std::lock_guard lk(mu_);
        return in_transaction(
            db_, st_, [&]() -> Result<void> { return insert_messages(st_, msgs, known_queues_); });
    }

    Result<std::unique_ptr<ScheduleStore>> schedule_store() override;

    Result<std::unique_ptr<Consumer>> consume(const ConsumerOptions& o) override {
        if (o.queues.empty())
            return fail(Errc::invalid_argument, "a consumer needs at least one queue");
        auto db = Db::open(opts_.path, opts_.synchronous, opts_.busy_timeout);
        if (!db) return std::unexpected(db.error());
        auto st = Statements::prepare(*db);
        if (!st) return std::unexpected(st.error());
        return std::unique_ptr<Consumer>(
            std::make_unique<SqliteConsumer>(std::move(*db), std::move(*st), o));
    }

    Result<std::vector<QueueStats>> stats() override {
        std::lock_guard lk(mu_);
        std::map<std::string, QueueStats> by_queue;
        auto names = db_.prepare("SELECT name FROM queues");
        if (!names) return std::unexpected(names.error());
        for (;;) {
            auto r = names->step();
            if (!r) return std::unexpected(r.error());
            if (!*r) break;
            auto n = names->text(0);
            by_queue[n].queue = n;
        }
        auto q = db_.prepare(
            "SELECT queue, state, (state=3 AND available_at<=?1) AS due, count(*) FROM tasks "
            "GROUP BY queue, state, due");
        if (!q) return std::unexpected(q.error());
        q->bind(1, now_ms());
        for (;;) {
            auto r = q->step();
            if (!r) return std::unexpected(r.error());
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
                case kDelayed:
                    (q->i64(2) ? s.ready : s.delayed) += count;
                    break;
            }
        }
        std::vector<QueueStats> out;
        for (auto& [_, s] : by_queue) out.push_back(s);
        return out;
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
        if (!q) return std::unexpected(q.error());
        q->bind(1, id);
        auto row = q->step();
        if (!row) return std::unexpected(row.error());
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
            for (auto& r : results)
                if (auto ok = store_result(st_, r); !ok) return ok;
            return {};
        });
    }

    Result<void> begin_chord(std::string_view group_id, std::size_t size) override {
        std::lock_guard lk(mu_);
        return in_transaction(db_, st_, [&]() -> Result<void> {
            auto q = db_.prepare(
                "INSERT OR REPLACE INTO chords(group_id, size, created_at) VALUES(?1, ?2, ?3)");
            if (!q) return std::unexpected(q.error());
            q->bind(1, group_id).bind(2, std::int64_t(size)).bind(3, now_ms());
            if (auto r = q->run(); !r) return std::unexpected(r.error());
            return {};
        });
    }

    Result<ChordParts> chord_part_done(std::string_view group_id, int index,
                                       const TaskResult& part) override {
        std::lock_guard lk(mu_);
        ChordParts out;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            auto size = db_.prepare("SELECT size FROM chords WHERE group_id=?1");
            if (!size) return std::unexpected(size.error());
            size->bind(1, group_id);
            auto row = size->step();
            if (!row) return std::unexpected(row.error());
            if (!*row) return {};  // unknown or already completed: nothing to do
            auto n = size->i64(0);
            auto ins = db_.prepare(
                "INSERT OR REPLACE INTO chord_parts(group_id, idx, task_id, state, result) "
                "VALUES(?1, ?2, ?3, ?4, ?5)");
            if (!ins) return std::unexpected(ins.error());
            ins->bind(1, group_id).bind(2, index).bind(3, part.id).bind(4, int(part.state));
            ins->bind(5, part.result.dump(-1, ' ', false, Json::error_handler_t::replace));
            if (auto r = ins->run(); !r) return std::unexpected(r.error());
            auto parts = db_.prepare(
                "SELECT task_id, state, result FROM chord_parts WHERE group_id=?1 ORDER BY idx");
            if (!parts) return std::unexpected(parts.error());
            parts->bind(1, group_id);
            std::vector<TaskResult> got;
            for (;;) {
                auto r = parts->step();
                if (!r) return std::unexpected(r.error());
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
                if (!del) return std::unexpected(del.error());
                del->bind(1, group_id);
                if (auto r = del->run(); !r) return std::unexpected(r.error());
            }
            return {};
        });
        if (!ok) return std::unexpected(ok.error());
        return out;
    }

    Result<std::vector<DeadLetter>> dead_letters(std::string_view queue,
                                                 std::size_t limit) override {
        std::lock_guard lk(mu_);
        auto q = db_.prepare(
            "SELECT id, queue, props, headers, body, reason, dead_at FROM tasks "
            "WHERE state=2 AND queue=?1 ORDER BY seq LIMIT ?2");
        if (!q) return std::unexpected(q.error());
        q->bind(1, queue).bind(2, std::int64_t(limit));
        std::vector<DeadLetter> out;
        for (;;) {
            auto r = q->step();
            if (!r) return std::unexpected(r.error());
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
            if (!clear) return std::unexpected(clear.error());
            auto upd = db_.prepare(
                "UPDATE tasks SET state=0, reason=NULL, dead_at=NULL, retries=0, deliveries=0, "
                "available_at=?3, headers=CASE WHEN json_valid(headers) AND "
                "json_type(headers,'$.retries') IS NOT NULL THEN json_set(headers,'$.retries',0) "
                "ELSE headers END WHERE " +
                where);
            if (!upd) return std::unexpected(upd.error());
            auto one = [&](std::optional<std::string_view> id) -> Result<void> {
                clear->reset();
                clear->bind(1, queue);
                if (id) clear->bind(2, *id);
                if (auto r = clear->run(); !r) return std::unexpected(r.error());
                upd->reset();
                upd->bind(1, queue).bind(3, now_ms());
                if (id) upd->bind(2, *id);
                auto r = upd->run();
                if (!r) return std::unexpected(r.error());
                moved += std::size_t(*r);
                return {};
            };
            if (ids.empty()) return one(std::nullopt);
            for (auto& id : ids) {
                if (auto r = one(id); !r) return r;
            }
            return {};
        });
        if (!ok) return std::unexpected(ok.error());
        return moved;
    }

    Result<std::size_t> purge_dead(std::string_view queue) override {
        std::lock_guard lk(mu_);
        std::size_t n = 0;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            auto del = db_.prepare("DELETE FROM tasks WHERE state=2 AND queue=?1");
            if (!del) return std::unexpected(del.error());
            del->bind(1, queue);
            auto r = del->run();
            if (!r) return std::unexpected(r.error());
            n = std::size_t(*r);
            return {};
        });
        if (!ok) return std::unexpected(ok.error());
        return n;
    }

    Result<void> set_topology(const Topology& t) override {
        if (auto ok = detail::check_embedded_topology(t, "sqlite"); !ok) return ok;
        std::lock_guard lk(mu_);
        topology_queues_.clear();
        for (auto& q : t.queues) topology_queues_.push_back(q.name);
        return {};
    }

    Result<void> declare_topology() override {
        std::lock_guard lk(mu_);
        return in_transaction(db_, st_, [&]() -> Result<void> {
            for (auto& q : topology_queues_) {
                st_.insert_queue.reset();
                if (auto r = st_.insert_queue.bind(1, q).run(); !r)
                    return std::unexpected(r.error());
                known_queues_.insert(q);
            }
            return {};
        });
    }

    std::string url() const override { return "sqlite://" + opts_.path; }

    Result<void> expire_results() {
        std::lock_guard lk(mu_);
        st_.expire_results.reset();
        auto r =
            st_.expire_results.bind(1, now_ms() - std::int64_t(opts_.result_expires.count()) * 1000)
                .run();
        if (!r) return std::unexpected(r.error());
        return {};
    }

  private:
    SqliteOptions opts_;
    std::mutex mu_;
    Db db_;
    Statements st_;
    std::set<std::string> known_queues_;
    std::vector<std::string> topology_queues_;
};

}  // namespace

/// Schedules on sqlite: a leadership lease row, each schedule's last fire, CLI-added schedules.
/// Its own connection, so a scheduler never waits on the broker object's lock.
class SqliteScheduleStore final : public ScheduleStore {
  public:
    SqliteScheduleStore(Db db, Statements st) : db_(std::move(db)), st_(std::move(st)) {}

    Result<bool> lead(std::string_view owner, std::chrono::milliseconds ttl) override {
        bool mine = false;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            auto now = now_ms();
            auto q = db_.prepare(
                "INSERT INTO scheduler_lease(id, owner, until) VALUES(1, ?1, ?2) "
                "ON CONFLICT(id) DO UPDATE SET owner=?1, until=?2 "
                "WHERE scheduler_lease.owner=?1 OR scheduler_lease.until<?3");
            if (!q) return std::unexpected(q.error());
            q->bind(1, owner).bind(2, now + ttl.count()).bind(3, now);
            auto r = q->run();
            if (!r) return std::unexpected(r.error());
            mine = *r > 0;
            return {};
        });
        if (!ok) return std::unexpected(ok.error());
        return mine;
    }

    Result<void> resign(std::string_view owner) override {
        auto q = db_.prepare("DELETE FROM scheduler_lease WHERE owner=?1");
        if (!q) return std::unexpected(q.error());
        q->bind(1, owner);
        if (auto r = q->run(); !r) return std::unexpected(r.error());
        return {};
    }

    Result<std::map<std::string, Mark>> last_fires(const std::vector<std::string>&) override {
        std::map<std::string, Mark> out;
        auto q = db_.prepare(
            "SELECT name, last_fire, last_run IS NOT NULL, coalesce(last_run, 0) "
            "FROM schedule_state WHERE last_fire IS NOT NULL");
        if (!q) return std::unexpected(q.error());
        for (;;) {
            auto row = q->step();
            if (!row) return std::unexpected(row.error());
            if (!*row) break;
            Mark m;
            m.last_fire = from_epoch_ms(q->i64(1));
            if (q->i64(2)) m.last_run = from_epoch_ms(q->i64(3));
            out[q->text(0)] = m;
        }
        return out;
    }

    Result<bool> fire(std::string_view owner, std::span<const ScheduleFire> fires) override {
        bool led = false;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            auto check =
                db_.prepare("SELECT 1 FROM scheduler_lease WHERE id=1 AND owner=?1 AND until>=?2");
            if (!check) return std::unexpected(check.error());
            check->bind(1, owner).bind(2, now_ms());
            auto row = check->step();
            if (!row) return std::unexpected(row.error());
            if (!*row) return {};  // another scheduler leads now: publish nothing
            led = true;
            std::vector<OutgoingMessage> msgs;
            for (auto& f : fires)
                if (f.message) msgs.push_back(*f.message);
            if (auto ok2 = insert_messages(st_, msgs, known_queues_); !ok2) return ok2;
            auto up = db_.prepare(
                "INSERT INTO schedule_state(name, last_fire, last_run) "
                "VALUES(?1, ?2, CASE WHEN ?3 THEN ?2 END) "
                "ON CONFLICT(name) DO UPDATE SET last_fire=max(coalesce(last_fire, 0), ?2), "
                "last_run=CASE WHEN ?3 THEN max(coalesce(last_run, 0), ?2) ELSE last_run END");
            if (!up) return std::unexpected(up.error());
            for (auto& f : fires) {
                up->reset();
                up->bind(1, f.schedule).bind(2, to_epoch_ms(f.at)).bind(3, f.message ? 1 : 0);
                if (auto r = up->run(); !r) return std::unexpected(r.error());
            }
            return {};
        });
        if (!ok) return std::unexpected(ok.error());
        return led;
    }

    Result<Overrides> overrides() override {
        Overrides out;
        auto q = db_.prepare("SELECT spec FROM schedules ORDER BY name");
        if (!q) return std::unexpected(q.error());
        for (;;) {
            auto row = q->step();
            if (!row) return std::unexpected(row.error());
            if (!*row) break;
            Json j = Json::parse(q->text(0), nullptr, false);
            if (j.is_object()) out.added.push_back(std::move(j));
        }
        auto p = db_.prepare("SELECT name, paused FROM schedule_state WHERE paused IS NOT NULL");
        if (!p) return std::unexpected(p.error());
        for (;;) {
            auto row = p->step();
            if (!row) return std::unexpected(row.error());
            if (!*row) break;
            out.paused[p->text(0)] = p->i64(1) != 0;
        }
        return out;
    }

    Result<void> add(const Json& spec) override {
        auto q = db_.prepare("INSERT OR REPLACE INTO schedules(name, spec) VALUES(?1, ?2)");
        if (!q) return std::unexpected(q.error());
        q->bind(1, spec.value("name", "")).bind(2, spec.dump());
        if (auto r = q->run(); !r) return std::unexpected(r.error());
        return {};
    }

    Result<bool> remove(std::string_view name) override {
        int removed = 0;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            for (auto sql : {"DELETE FROM schedules WHERE name=?1",
                             "DELETE FROM schedule_state WHERE name=?1"}) {
                auto q = db_.prepare(sql);
                if (!q) return std::unexpected(q.error());
                q->bind(1, name);
                auto r = q->run();
                if (!r) return std::unexpected(r.error());
                if (removed == 0) removed = *r;
            }
            return {};
        });
        if (!ok) return std::unexpected(ok.error());
        return removed > 0;
    }

    Result<void> set_paused(std::string_view name, bool paused) override {
        auto q = db_.prepare(
            "INSERT INTO schedule_state(name, paused) VALUES(?1, ?2) "
            "ON CONFLICT(name) DO UPDATE SET paused=?2");
        if (!q) return std::unexpected(q.error());
        q->bind(1, name).bind(2, paused ? 1 : 0);
        if (auto r = q->run(); !r) return std::unexpected(r.error());
        return {};
    }

  private:
    Db db_;
    Statements st_;
    std::set<std::string> known_queues_;
};

Result<std::unique_ptr<ScheduleStore>> SqliteBroker::schedule_store() {
    auto db = Db::open(opts_.path, opts_.synchronous, opts_.busy_timeout);
    if (!db) return std::unexpected(db.error());
    auto st = Statements::prepare(*db);
    if (!st) return std::unexpected(st.error());
    return std::unique_ptr<ScheduleStore>(
        std::make_unique<SqliteScheduleStore>(std::move(*db), std::move(*st)));
}

Result<std::shared_ptr<Broker>> open_sqlite_broker(const SqliteOptions& o) {
    if (o.path.empty())
        return fail(Errc::invalid_argument,
                    "sqlite broker URL needs a file path, e.g. sqlite://conveyor.db");
    auto db = Db::open(o.path, o.synchronous, o.busy_timeout);
    if (!db) return std::unexpected(db.error());
    if (auto ok = db->exec(kSchema); !ok) return std::unexpected(ok.error());
    // Files from before results had children get the column.
    if (!db->prepare("SELECT children FROM results LIMIT 0"))
        if (auto ok = db->exec("ALTER TABLE results ADD COLUMN children TEXT"); !ok)
            return std::unexpected(ok.error());
    auto st = Statements::prepare(*db);
    if (!st) return std::unexpected(st.error());
    auto b = std::make_shared<SqliteBroker>(o, std::move(*db), std::move(*st));
    // Housekeeping: a lock held elsewhere or a full disk must not keep the broker closed.
    if (auto ok = b->expire_results(); !ok && ok.error().code != Errc::unavailable)
        return std::unexpected(ok.error());
    return std::shared_ptr<Broker>(std::move(b));
}

}  // namespace conveyor::sqlite
