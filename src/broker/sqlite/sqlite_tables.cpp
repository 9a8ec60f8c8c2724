// How the sqlite engine keeps tasks: schema, rows, statements.
#include "broker/sqlite/sqlite_tables.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "conveyor/limits.hpp"
#include "conveyor/log.hpp"
#include "core/codec.hpp"
#include "core/json_bounds.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor::sqlite {

using detail::to_epoch_ms;

namespace {

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
  reason TEXT,
  dead_at INTEGER,
  name TEXT,
  created_at INTEGER,
  started_at INTEGER,
  finished_at INTEGER,
  attempts TEXT,
  error TEXT,
  unique_key TEXT,
  bucket TEXT,
  fair INTEGER NOT NULL DEFAULT 0);
-- The message itself (properties, headers, body) apart from the row a claim and a settlement
-- rewrite: a claim then writes a few dozen bytes, whatever the message's size.
CREATE TABLE IF NOT EXISTS messages(seq INTEGER PRIMARY KEY, props TEXT NOT NULL,
  headers TEXT NOT NULL, body BLOB NOT NULL);
-- Unique tasks: a key held for a period after its task was enqueued (see publish_unique).
CREATE TABLE IF NOT EXISTS unique_keys(key TEXT PRIMARY KEY, task_id TEXT NOT NULL,
  until INTEGER NOT NULL) WITHOUT ROWID;
-- Flow control: a task's limits (TaskLimit; rate in starts a second), and a bucket per task
-- and key: when the next start may be (microseconds since the epoch) and when tasks waiting on
-- it are to be looked at again (milliseconds).
CREATE TABLE IF NOT EXISTS limits(task TEXT PRIMARY KEY, rate REAL NOT NULL DEFAULT 0,
  max_running INTEGER NOT NULL DEFAULT 0, key TEXT NOT NULL DEFAULT '') WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS limit_buckets(bucket TEXT PRIMARY KEY, task TEXT NOT NULL,
  next_at INTEGER NOT NULL DEFAULT 0, wake_at INTEGER) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS limit_buckets_wake ON limit_buckets(wake_at) WHERE wake_at IS NOT NULL;
-- Fair queues: the turn of each key's latest task (see insert_messages).
CREATE TABLE IF NOT EXISTS fair_keys(queue TEXT NOT NULL, key TEXT NOT NULL,
  last INTEGER NOT NULL, PRIMARY KEY(queue, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_delayed ON tasks(available_at) WHERE state=3;
CREATE INDEX IF NOT EXISTS tasks_leased ON tasks(lease_until) WHERE state=1;
CREATE INDEX IF NOT EXISTS tasks_dead ON tasks(queue, seq) WHERE state=2;
CREATE TABLE IF NOT EXISTS results(
  id TEXT PRIMARY KEY, state INTEGER NOT NULL, result TEXT, traceback TEXT,
  retries INTEGER NOT NULL DEFAULT 0, done_at INTEGER NOT NULL, children TEXT) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_done ON results(done_at);
CREATE TABLE IF NOT EXISTS queues(name TEXT PRIMARY KEY, paused INTEGER NOT NULL DEFAULT 0,
  fair_key TEXT, fair_turn INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scheduler_lease(id INTEGER PRIMARY KEY CHECK(id=1), owner TEXT,
  until INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS schedule_state(name TEXT PRIMARY KEY, last_fire INTEGER,
  last_run INTEGER, paused INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS schedules(name TEXT PRIMARY KEY, spec TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chords(group_id TEXT PRIMARY KEY, size INTEGER NOT NULL,
  created_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS minutes(minute INTEGER NOT NULL, queue TEXT NOT NULL,
  name TEXT NOT NULL, succeeded INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
  retried INTEGER NOT NULL DEFAULT 0, dead INTEGER NOT NULL DEFAULT 0,
  run_ms INTEGER NOT NULL DEFAULT 0, waited INTEGER NOT NULL DEFAULT 0,
  wait_ms INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(minute, queue, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workers(name TEXT PRIMARY KEY, info TEXT NOT NULL,
  seen_at INTEGER NOT NULL) WITHOUT ROWID;
-- How far the search index (sqlite_history.cpp) has read the messages: a new task's seq is
-- always past it (see top_seq), so an entry is never that of an older task with the same seq.
CREATE TABLE IF NOT EXISTS task_search_state(id INTEGER PRIMARY KEY CHECK(id=1),
  last_seq INTEGER NOT NULL, cleaned_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chord_parts(group_id TEXT NOT NULL, idx INTEGER NOT NULL,
  task_id TEXT NOT NULL, state INTEGER NOT NULL, result TEXT,
  PRIMARY KEY(group_id, idx)) WITHOUT ROWID;
)sql";

/// The counts table of a file without one, from its rows (see CountDeltas).
constexpr std::string_view kCounts = R"sql(
CREATE TABLE counts(queue TEXT NOT NULL, state INTEGER NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY(queue, state)) WITHOUT ROWID;
INSERT INTO counts SELECT queue, 0, count(*) FROM tasks WHERE state=0 GROUP BY queue
  UNION ALL SELECT queue, 2, count(*) FROM tasks WHERE state=2 GROUP BY queue
  UNION ALL SELECT queue, 3, count(*) FROM tasks WHERE state=3 GROUP BY queue;
)sql";

/// Adds a column to a file from before it; another process opening the file at the same time
/// may have added it first.
Result<void> add_column(Db& db, std::string_view table, std::string_view column,
                        std::string_view declaration) {
    auto has = [&] {
        return bool(db.prepare(fmt::format("SELECT {} FROM {} LIMIT 0", column, table)));
    };
    if (has()) return {};
    auto added =
        db.exec(fmt::format("ALTER TABLE {} ADD COLUMN {} {}", table, column, declaration));
    if (!added && has()) return {};
    return added;
}

}  // namespace

Result<void> create_schema(Db& db) {
    CONVEYOR_TRY(db.exec(kSchema));
    // Files from before results had children get the column.
    CONVEYOR_TRY(add_column(db, "results", "children", "TEXT"));
    // ... and queues their pause flag.
    CONVEYOR_TRY(add_column(db, "queues", "paused", "INTEGER NOT NULL DEFAULT 0"));
    // ... and tasks what the history keeps of them (NULL in rows from before).
    if (!db.prepare("SELECT name FROM tasks LIMIT 0"))
        CONVEYOR_TRY(
            db.exec("ALTER TABLE tasks ADD COLUMN name TEXT; "
                    "ALTER TABLE tasks ADD COLUMN created_at INTEGER; "
                    "ALTER TABLE tasks ADD COLUMN started_at INTEGER; "
                    "ALTER TABLE tasks ADD COLUMN finished_at INTEGER; "
                    "ALTER TABLE tasks ADD COLUMN attempts TEXT; "
                    "ALTER TABLE tasks ADD COLUMN error TEXT"));
    // ... and the messages of tasks from before they had a table of their own move there (once,
    // by whichever process opens the file first).
    if (db.prepare("SELECT body FROM tasks LIMIT 0")) {
        CONVEYOR_TRY(db.exec("BEGIN IMMEDIATE"));
        auto moved = [&]() -> Result<void> {
            if (!db.prepare("SELECT body FROM tasks LIMIT 0")) return {};  // another did it
            return db.exec(
                "INSERT OR IGNORE INTO messages(seq, props, headers, body) "
                "SELECT seq, props, headers, body FROM tasks; "
                "ALTER TABLE tasks DROP COLUMN props; ALTER TABLE tasks DROP COLUMN headers; "
                "ALTER TABLE tasks DROP COLUMN body");
        }();
        if (!moved) {
            (void)db.exec("ROLLBACK");
            return std::unexpected(moved.error());
        }
        CONVEYOR_TRY(db.exec("COMMIT"));
    }
    // Tasks counted by queue and state (see CountDeltas); a file without the counts gets them
    // from its rows.
    auto counted = [&] {
        auto q = db.prepare("SELECT 1 FROM sqlite_master WHERE type='table' AND name='counts'");
        return q && *q->step();
    };
    if (!counted()) {
        CONVEYOR_TRY(db.exec("BEGIN IMMEDIATE"));
        auto made = [&]() -> Result<void> {
            if (counted()) return {};  // another process did it
            return db.exec(kCounts);
        }();
        if (!made) {
            (void)db.exec("ROLLBACK");
            return std::unexpected(made.error());
        }
        CONVEYOR_TRY(db.exec("COMMIT"));
    }
    // ... and the unique key of a task (NULL in rows from before, and for most tasks): held,
    // uniquely, while its task waits, is delayed or runs.
    CONVEYOR_TRY(add_column(db, "tasks", "unique_key", "TEXT"));
    // ... and the bucket of its limits (TaskLimit), set when a worker takes it.
    CONVEYOR_TRY(add_column(db, "tasks", "bucket", "TEXT"));
    // ... and its turn in a fair queue (0 elsewhere, and in the rows from before: no rewrite),
    // which orders ready tasks before their priority; queues get their fair key and turn.
    CONVEYOR_TRY(add_column(db, "tasks", "fair", "INTEGER NOT NULL DEFAULT 0"));
    CONVEYOR_TRY(add_column(db, "queues", "fair_key", "TEXT"));
    CONVEYOR_TRY(add_column(db, "queues", "fair_turn", "INTEGER NOT NULL DEFAULT 0"));
    CONVEYOR_TRY(
        db.exec("DROP INDEX IF EXISTS tasks_ready; "
                "CREATE INDEX IF NOT EXISTS tasks_ready_turn ON tasks(queue, fair, priority DESC, "
                "seq) WHERE state=0"));
    // (tasks_unique, of the release before limits, did not know tasks waiting on a limit.)
    CONVEYOR_TRY(
        db.exec("DROP INDEX IF EXISTS tasks_unique; "
                "CREATE UNIQUE INDEX IF NOT EXISTS tasks_unique_key ON tasks(unique_key) WHERE "
                "unique_key IS NOT NULL AND state IN (0, 1, 3, 6); "
                "CREATE INDEX IF NOT EXISTS tasks_limited ON tasks(bucket, priority DESC, seq) "
                "WHERE state=6; "
                "CREATE INDEX IF NOT EXISTS tasks_limit_running ON tasks(bucket) "
                "WHERE state=1 AND bucket IS NOT NULL"));
    CONVEYOR_TRY(
        db.exec("CREATE TRIGGER IF NOT EXISTS tasks_message_gone AFTER DELETE ON tasks BEGIN "
                "DELETE FROM messages WHERE seq=old.seq; END; "
                "CREATE INDEX IF NOT EXISTS tasks_name ON tasks(name, seq); "
                "CREATE INDEX IF NOT EXISTS tasks_finished ON tasks(state, seq) WHERE state>=4"));
    return {};
}

std::int64_t now_ms() { return to_epoch_ms(SystemClock::now()); }

namespace {

/// A message's properties as stored: the JSON object {content_encoding, content_type,
/// correlation_id, priority, reply_to} (the present ones, in nlohmann's key order) written
/// without building one (a tree per task was a tenth of an enqueue's profile).
std::string props_text(std::string_view content_encoding, std::string_view content_type,
                       std::string_view correlation_id, int priority, std::string_view reply_to) {
    std::string out = "{";
    auto key = [&](std::string_view k) {
        if (out.size() > 1) out += ',';
        out += '"';
        out += k;
        out += "\":";
    };
    auto text = [&](std::string_view k, std::string_view v) {
        if (v.empty()) return;
        key(k);
        detail::append_json_string(out, v);
    };
    text("content_encoding", content_encoding);
    text("content_type", content_type);
    text("correlation_id", correlation_id);
    if (priority) {
        key("priority");
        out += std::to_string(priority);
    }
    text("reply_to", reply_to);
    out += '}';
    return out;
}

}  // namespace

std::string props_json(const Envelope& e) {
    return props_text(e.content_encoding, e.content_type, e.correlation_id, e.priority, e.reply_to);
}

std::string props_json(const TaskMessage& t) {
    // As codec::encode sets them.
    return props_text("utf-8", codec::kJson, t.correlation_id.empty() ? t.id : t.correlation_id,
                      t.priority, t.reply_to);
}

Envelope make_envelope(const std::string& props, const std::string& headers, std::string body) {
    Envelope e;
    Json p = detail::parse_json(props);
    if (p.is_object()) {
        // (What the engine wrote; a file edited by hand may hold anything.)
        for (auto [field, key] :
             {std::pair{&e.content_type, "content_type"},
              std::pair{&e.content_encoding, "content_encoding"},
              std::pair{&e.correlation_id, "correlation_id"}, std::pair{&e.reply_to, "reply_to"}})
            if (auto it = p.find(key); it != p.end() && it->is_string())
                *field = it->get<std::string>();
        if (auto it = p.find("priority"); it != p.end() && it->is_number_integer())
            e.priority = int(std::clamp<std::int64_t>(it->get<std::int64_t>(), -1000, 1000));
    }
    e.headers = detail::parse_json(headers);
    if (e.headers.is_discarded()) e.headers = Json::object();
    e.body = std::move(body);
    return e;
}

std::string headers_json(const Envelope& e) {
    if (!e.headers.is_object()) return "{}";
    // Null headers mean the same as absent ones: they are not stored, which makes rows smaller
    // and reading them back cheaper. Conveyor's own messages have none (the codec leaves them
    // out); other publishers' may.
    if (std::none_of(e.headers.begin(), e.headers.end(), codec::is_null_header))
        return e.headers.dump(-1, ' ', false, Json::error_handler_t::replace);
    Json h = Json::object();
    for (auto& [k, v] : e.headers.items())
        if (!codec::is_null_header(v)) h.emplace(k, v);
    return h.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string_view task_name_of(const Envelope& e) {
    if (e.headers.is_object()) {
        auto it = e.headers.find("task");
        if (it != e.headers.end() && it->is_string()) return it->get_ref<const std::string&>();
    }
    return {};
}

int retries_of(const Envelope& e) {
    if (e.headers.is_object()) {
        auto it = e.headers.find("retries");
        if (it != e.headers.end() && it->is_number_integer()) return it->get<int>();
    }
    return 0;
}

Result<Statements> Statements::prepare(Db& db) {
    Statements s;
    // The ready tasks a claim takes, in their order: the claim's SELECT and its UPDATE share
    // this text, so that both always mean the same rows (?3 the queue, ?4 how many).
    static const std::string claimable =
        "FROM tasks WHERE state=0 AND queue=?3 "
        "AND NOT EXISTS (SELECT 1 FROM queues WHERE name=?3 AND paused=1) "
        "ORDER BY fair, priority DESC, seq LIMIT ?4";
    static const std::string pick_sql =
        "SELECT seq, id, queue, deliveries+1, priority, available_at, name, fair " + claimable;
    static const std::string claim_sql =
        "UPDATE tasks SET state=1, lease_owner=?1, lease_until=?2, deliveries=deliveries+1, "
        "started_at=?5, bucket=NULL WHERE seq IN (SELECT seq " +
        claimable + ")";
    struct Def {
        Stmt* stmt;
        std::string_view sql;
    };
    Def defs[] = {
        {&s.task_at, "SELECT count(*) FROM tasks WHERE seq=?1"},
        // (The next seq is past every task and message, as SQLite's own rowid would be, and
        // past what the search index has read.)
        {&s.top_seq,
         "SELECT max(coalesce((SELECT max(seq) FROM tasks), 0), "
         "coalesce((SELECT max(seq) FROM messages), 0), "
         "coalesce((SELECT last_seq FROM task_search_state), 0))"},
        {&s.read_message, "SELECT props, headers, body FROM messages WHERE seq=?1"},
        {&s.update_message, "UPDATE messages SET props=?2, headers=?3, body=?4 WHERE seq=?1"},
        {&s.insert_queue, "INSERT OR IGNORE INTO queues(name) VALUES(?1)"},
        {&s.promote, "UPDATE tasks SET state=0 WHERE state=3 AND available_at<=?1 RETURNING queue"},
        {&s.reclaim,
         "UPDATE tasks SET state=0, lease_owner=NULL, lease_until=NULL "
         "WHERE state=1 AND lease_until<?1 RETURNING queue"},
        {&s.add_count,
         "INSERT INTO counts(queue, state, n) VALUES(?1, ?2, ?3) "
         "ON CONFLICT(queue, state) DO UPDATE SET n = n + excluded.n"},
        // A claim: the ready tasks it takes, in their order, then the same tasks leased (the
        // same query in the same transaction picks the same rows). Cheaper than one UPDATE ...
        // RETURNING, which SQLite runs through a temporary table of its rows.
        {&s.pick, pick_sql},
        {&s.claim, claim_sql},
        // (No RETURNING where the queue is not needed: it costs a temporary table a run.)
        {&s.ack, "DELETE FROM tasks WHERE seq=?1 AND lease_owner=?2 AND state=1"},
        // Kept as history: the last worker stays in lease_owner.
        {&s.finish,
         "UPDATE tasks SET state=?3, started_at=coalesce(?4, started_at), finished_at=?5, "
         "lease_until=NULL "
         "WHERE seq=?1 AND lease_owner=?2 AND state=1"},
        {&s.retry,
         "UPDATE tasks SET state=?3, available_at=?4, "
         "retries=retries+1, lease_owner=NULL, lease_until=NULL, error=coalesce(?6, error), "
         "attempts=CASE WHEN ?5 IS NULL THEN attempts ELSE "
         "json_insert(coalesce(attempts,'[]'),'$[#]',json(?5)) END "
         "WHERE seq=?1 AND lease_owner=?2 AND state=1 RETURNING queue"},
        {&s.dead,
         "UPDATE tasks SET state=2, reason=?3, dead_at=?4, lease_until=NULL, "
         "started_at=coalesce(?5, started_at), finished_at=?4, error=coalesce(?6, error) "
         "WHERE seq=?1 AND lease_owner=?2 AND state=1 RETURNING queue"},
        {&s.count_minute,
         "INSERT INTO minutes(minute,queue,name,succeeded,failed,retried,dead,run_ms,waited,"
         "wait_ms) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10) ON CONFLICT(minute,queue,name) DO "
         "UPDATE SET succeeded=succeeded+?4, failed=failed+?5, retried=retried+?6, "
         "dead=dead+?7, run_ms=run_ms+?8, waited=waited+?9, wait_ms=wait_ms+?10"},
        {&s.release,
         "UPDATE tasks SET state=0, lease_owner=NULL, lease_until=NULL, "
         "deliveries=max(deliveries-1,0) WHERE seq=?1 AND lease_owner=?2 AND state=1 "
         "RETURNING queue"},
        {&s.renew,
         "UPDATE tasks SET lease_until=?2 WHERE lease_owner=?1 AND state=1 RETURNING seq"},
        {&s.store_result,
         "INSERT OR REPLACE INTO results(id,state,result,traceback,retries,done_at,children) "
         "VALUES(?1,?2,?3,?4,?5,?6,?7)"},
        {&s.probe_ready,
         "SELECT 1 FROM tasks WHERE state=0 AND queue=?1 AND NOT EXISTS (SELECT 1 FROM queues "
         "WHERE name=?1 AND paused=1) LIMIT 1"},
        {&s.next_delayed, "SELECT min(available_at) FROM tasks WHERE state=3"},
        {&s.next_lease, "SELECT min(lease_until) FROM tasks WHERE state=1"},
        {&s.data_version, "PRAGMA data_version"},
        {&s.expire_results, "DELETE FROM results WHERE done_at<?1"},
        {&s.oldest_finished,
         "SELECT seq, finished_at FROM tasks WHERE state>=4 AND state=?1 ORDER BY seq LIMIT ?2"},
        // (`state>=4` lets the planner use the partial index tasks_finished: with a bound
        // state alone it cannot know the index holds the rows, and reads the whole table.)
        {&s.count_finished, "SELECT count(*) FROM tasks WHERE state>=4 AND state=?1"},
        {&s.delete_seq, "DELETE FROM tasks WHERE seq=?1"},
        {&s.expire_minutes, "DELETE FROM minutes WHERE minute<?1"},
        {&s.expire_unique, "DELETE FROM unique_keys WHERE until<?1"},
        {&s.user_version, "PRAGMA user_version"},
        {&s.read_fair, "SELECT name, fair_key FROM queues WHERE fair_key IS NOT NULL"},
        {&s.fair_turn, "SELECT fair_turn FROM queues WHERE name=?1"},
        {&s.fair_last, "SELECT last FROM fair_keys WHERE queue=?1 AND key=?2"},
        {&s.fair_keep,
         "INSERT INTO fair_keys(queue, key, last) VALUES(?1, ?2, ?3) ON CONFLICT(queue, key) "
         "DO UPDATE SET last=max(last, excluded.last)"},
        {&s.fair_taken, "UPDATE queues SET fair_turn=?2 WHERE name=?1 AND fair_turn<?2"},
        {&s.fair_forget,
         "DELETE FROM fair_keys WHERE last <= (SELECT fair_turn FROM queues q WHERE "
         "q.name=fair_keys.queue)"},
        {&s.read_limits, "SELECT task, rate, max_running, key FROM limits"},
        {&s.wake_due,
         "SELECT bucket, task FROM limit_buckets WHERE wake_at IS NOT NULL AND wake_at<=?1"},
        {&s.next_wake, "SELECT min(wake_at) FROM limit_buckets WHERE wake_at IS NOT NULL"},
        {&s.release_limited,
         "UPDATE tasks SET state=0 WHERE seq IN (SELECT seq FROM tasks WHERE state=6 AND "
         "bucket=?1 ORDER BY priority DESC, seq LIMIT ?2) RETURNING queue"},
        {&s.clear_wake, "UPDATE limit_buckets SET wake_at=NULL WHERE bucket=?1"},
        {&s.bucket_next, "SELECT next_at FROM limit_buckets WHERE bucket=?1"},
        // (Counted up to the limit: what a limit of 5 reads is 5 rows, however many run.)
        {&s.bucket_running,
         "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE state=1 AND bucket=?1 LIMIT ?2)"},
        {&s.bucket_waits, "SELECT 1 FROM tasks WHERE state=6 AND bucket=?1 LIMIT 1"},
        {&s.set_bucket, "UPDATE tasks SET bucket=?2 WHERE seq=?1"},
        {&s.park,
         "UPDATE tasks SET state=6, bucket=?2, lease_owner=NULL, lease_until=NULL, "
         "started_at=NULL, deliveries=max(deliveries-1,0) WHERE seq=?1"},
        {&s.bucket_started,
         "INSERT INTO limit_buckets(bucket, task, next_at, wake_at) VALUES(?1, ?2, ?3, ?4) "
         "ON CONFLICT(bucket) DO UPDATE SET next_at=excluded.next_at, "
         "wake_at=coalesce(excluded.wake_at, wake_at)"},
        {&s.ensure_bucket,
         "INSERT INTO limit_buckets(bucket, task) VALUES(?1, ?2) ON CONFLICT(bucket) DO NOTHING"},
        {&s.wake_now,
         "UPDATE limit_buckets SET wake_at=?2 WHERE bucket=?1 AND (wake_at IS NULL OR "
         "wake_at>?2)"},
        {&s.wake_bucket,
         "INSERT INTO limit_buckets(bucket, task, wake_at) VALUES(?1, ?2, ?3) "
         "ON CONFLICT(bucket) DO UPDATE SET wake_at=min(coalesce(wake_at, excluded.wake_at), "
         "excluded.wake_at)"},
    };
    for (auto& d : defs) {
        auto st = db.prepare(d.sql);
        CONVEYOR_TRY(st);
        *d.stmt = std::move(*st);
    }
    // A chunk statement: `head`, then `group` n times (comma-separated), then `tail`.
    auto chunk = [&db](Stmt& into, std::string_view head, std::string_view group, std::size_t n,
                       std::string_view tail) -> Result<void> {
        std::string sql(head);
        for (std::size_t i = 0; i < n; ++i) {
            if (i) sql += ',';
            sql += group;
        }
        sql += tail;
        auto st = db.prepare(sql);
        CONVEYOR_TRY(st);
        into = std::move(*st);
        return {};
    };
    for (std::size_t c = 0; c < kChunks.size(); ++c) {
        // A task whose id has a stored result is not enqueued again (see insert_messages).
        CONVEYOR_TRY(chunk(s.insert_tasks[c],
                           "INSERT OR IGNORE INTO tasks(seq,id,queue,state,priority,available_at,"
                           "retries,name,created_at,unique_key,fair) SELECT * FROM (VALUES ",
                           "(?,?,?,?,?,?,?,?,?,?,?)", kChunks[c],
                           ") AS v WHERE NOT EXISTS (SELECT 1 FROM results WHERE id=v.column2)"));
        CONVEYOR_TRY(chunk(s.insert_messages[c],
                           "INSERT INTO messages(seq,props,headers,body) VALUES ", "(?,?,?,?)",
                           kChunks[c], ""));
        CONVEYOR_TRY(chunk(s.read_messages[c],
                           "SELECT seq, props, headers, body FROM messages WHERE seq IN (", "?",
                           kChunks[c], ")"));
    }
    for (std::size_t c = 0; c < s.finish_chunk.size(); ++c) {
        // Each row: seq, state, started (or NULL), finished; then the owner. (The plan: a
        // scan of the values, each task found by its seq.)
        CONVEYOR_TRY(chunk(s.finish_chunk[c],
                           "UPDATE tasks SET state=v.column2, started_at=coalesce(v.column3, "
                           "started_at), finished_at=v.column4, lease_until=NULL FROM (VALUES ",
                           "(?,?,?,?)", kChunks[c],
                           ") AS v WHERE tasks.seq=v.column1 AND tasks.lease_owner=? AND "
                           "tasks.state=1 RETURNING seq"));
        CONVEYOR_TRY(chunk(s.ack_chunk[c], "DELETE FROM tasks WHERE seq IN (", "?", kChunks[c],
                           ") AND lease_owner=? AND state=1 RETURNING seq"));
    }
    return s;
}

Result<void> CountDeltas::write(Statements& st) {
    for (auto& e : d_) {
        if (e.n == 0) continue;
        st.add_count.reset();
        CONVEYOR_TRY(st.add_count.bind(1, e.queue).bind(2, e.state).bind(3, e.n).run());
    }
    d_.clear();
    return {};
}

Result<std::int64_t> first_i64(Stmt& st) {
    auto r = st.step();
    CONVEYOR_TRY(r);
    std::int64_t v = *r ? st.i64(0) : 0;
    st.reset();
    return v;
}

Result<int> run_returning_queue(Stmt& st, std::string& queue) {
    int rows = 0;
    for (;;) {
        auto r = st.step();
        CONVEYOR_TRY(r);
        if (!*r) return rows;
        if (rows++ == 0) queue = st.text(0);
    }
}

Result<void> prune_history(Statements& st, const SqliteOptions& sqlite) {
    auto wall = now_ms();
    st.expire_results.reset();
    CONVEYOR_TRY(
        st.expire_results.bind(1, wall - std::int64_t(sqlite.result_expires.count()) * 1000).run());
    auto cutoff = wall - std::int64_t(sqlite.history.count()) * 1000;
    st.expire_minutes.reset();
    CONVEYOR_TRY(st.expire_minutes.bind(1, cutoff).run());
    st.expire_unique.reset();
    CONVEYOR_TRY(st.expire_unique.bind(1, wall).run());
    // Keys of fair queues the workers' turn has passed: a new task of theirs takes that turn.
    st.fair_forget.reset();
    CONVEYOR_TRY(st.fair_forget.run());
    constexpr std::int64_t kBatch = 20000;
    for (int state : {kSucceeded, kRevoked}) {
        st.count_finished.reset();
        CONVEYOR_TRY(st.count_finished.bind(1, state).step());
        std::int64_t over = st.count_finished.i64(0) - sqlite.history_max;
        st.count_finished.reset();
        st.oldest_finished.reset();
        st.oldest_finished.bind(1, state).bind(2, kBatch);
        std::vector<std::int64_t> doomed;
        for (;;) {
            auto r = st.oldest_finished.step();
            CONVEYOR_TRY(r);
            if (!*r) break;
            bool expired = !st.oldest_finished.is_null(1) && st.oldest_finished.i64(1) < cutoff;
            if (!expired && std::int64_t(doomed.size()) >= over) break;
            doomed.push_back(st.oldest_finished.i64(0));
        }
        st.oldest_finished.reset();
        for (auto seq : doomed) {
            st.delete_seq.reset();
            CONVEYOR_TRY(st.delete_seq.bind(1, seq).run());
        }
    }
    return {};
}

Result<void> count_minute(Statements& st, std::int64_t minute, std::string_view queue,
                          std::string_view name, const MinuteCount& c) {
    st.count_minute.reset();
    st.count_minute.bind(1, minute)
        .bind(2, queue)
        .bind(3, name)
        .bind(4, c.succeeded)
        .bind(5, c.failed)
        .bind(6, c.retried)
        .bind(7, c.dead)
        .bind(8, c.run_ms)
        .bind(9, c.waited)
        .bind(10, c.wait_ms);
    CONVEYOR_TRY(st.count_minute.run());
    return {};
}

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
    CONVEYOR_TRY(ok);
    return {};
}

/// A write-ahead log someone deleted is copied into the database and the connection reopened
/// with fresh statements before this connection writes again (see Db::recover_replaced_wal).
Result<void> keep_wal(Db& db, Statements& st) {
    auto replaced = db.recover_replaced_wal();
    CONVEYOR_TRY(replaced);
    if (!*replaced) return {};
    st = Statements{};
    auto fresh = Statements::prepare(db);
    CONVEYOR_TRY(fresh);
    st = std::move(*fresh);
    detail::log(LogLevel::warning, "sqlite.wal_replaced",
                "the write-ahead log beside the sqlite database was deleted by another process; "
                "what it held is now in the database and a new log is in use");
    return {};
}

/// Inserts messages (inside a transaction); an id already known is dropped.
namespace {

/// Turns given in one transaction: the queues' current turns and the keys' latest.
struct Turns {
    std::map<std::string, std::int64_t, std::less<>> queue;
    std::map<std::pair<std::string, std::string>, std::int64_t> key;
};

/// The turn of a new task of `queue` with `key`.
Result<std::int64_t> next_turn(Statements& st, Turns& turns, const std::string& queue,
                               std::string key) {
    auto q = turns.queue.find(queue);
    if (q == turns.queue.end()) {
        st.fair_turn.reset();
        st.fair_turn.bind(1, queue);
        auto t = first_i64(st.fair_turn);
        CONVEYOR_TRY(t);
        q = turns.queue.emplace(queue, *t).first;
    }
    auto k = turns.key.find({queue, key});
    if (k == turns.key.end()) {
        st.fair_last.reset();
        st.fair_last.bind(1, queue).bind(2, key);
        auto last = first_i64(st.fair_last);
        CONVEYOR_TRY(last);
        k = turns.key.emplace(std::pair{queue, std::move(key)}, *last).first;
    }
    k->second = std::max(k->second, q->second) + 1;
    return k->second;
}

}  // namespace

namespace {

/// The fair key the file holds for `queue` ("" for none), and whether it has the queue's row.
Result<std::pair<std::string, bool>> stored_fair_key(Stmt& read, const std::string& queue) {
    read.reset();
    read.bind(1, queue);
    auto r = read.step();
    CONVEYOR_TRY(r);
    std::pair<std::string, bool> out{*r ? read.text(0) : std::string(), *r};
    read.reset();
    return out;
}

}  // namespace

Result<bool> fair_keys_differ(Db& db, const Topology& topology) {
    auto read = db.prepare("SELECT fair_key FROM queues WHERE name=?1");
    CONVEYOR_TRY(read);
    for (auto& q : topology.queues) {
        auto stored = stored_fair_key(*read, q.name);
        CONVEYOR_TRY(stored);
        auto& [now, exists] = *stored;
        if (now != q.fair_key || (!exists && !q.fair_key.empty())) return true;
    }
    return false;
}

Result<void> set_fair_keys(Db& db, const Topology& topology) {
    auto read = db.prepare("SELECT fair_key FROM queues WHERE name=?1");
    CONVEYOR_TRY(read);
    auto write = db.prepare(
        "INSERT INTO queues(name, fair_key) VALUES(?1, ?2) "
        "ON CONFLICT(name) DO UPDATE SET fair_key=excluded.fair_key");
    CONVEYOR_TRY(write);
    bool changed = false;
    for (auto& q : topology.queues) {
        auto stored = stored_fair_key(*read, q.name);
        CONVEYOR_TRY(stored);
        auto& [now, exists] = *stored;
        if (now == q.fair_key && (exists || q.fair_key.empty())) continue;
        write->reset();
        write->bind(1, q.name).bind_or_null(2, q.fair_key);
        CONVEYOR_TRY(write->run());
        changed = changed || now != q.fair_key;
    }
    if (!changed) return {};
    auto v = db.prepare("PRAGMA user_version");
    CONVEYOR_TRY(v);
    auto r = v->step();
    CONVEYOR_TRY(r);
    auto version = v->i64(0);
    v->reset();
    return db.exec(fmt::format("PRAGMA user_version={}", version + 1));
}

Result<void> insert_messages(Statements& st, std::span<const OutgoingMessage> msgs,
                             KnownQueues& known, std::string_view unique_key) {
    auto now = now_ms();
    CountDeltas counts;
    // Which queues are fair, read again when their settings changed.
    st.user_version.reset();
    auto version = first_i64(st.user_version);
    CONVEYOR_TRY(version);
    if (*version != known.version) {
        known.fair.clear();
        st.read_fair.reset();
        for (;;) {
            auto r = st.read_fair.step();
            CONVEYOR_TRY(r);
            if (!*r) break;
            known.fair[st.read_fair.text(0)] = st.read_fair.text(1);
        }
        st.read_fair.reset();
        known.version = *version;
    }
    for (auto& m : msgs)
        if (m.queue.empty()) return fail(Errc::invalid_argument, "message has no queue");
    // Each row's seq is given (the tasks and their messages then go in a chunk per statement):
    // the next past every row, as SQLite's own rowid would be; the write lock is held.
    auto top = first_i64(st.top_seq);
    CONVEYOR_TRY(top);
    if (*top < 0 || *top > std::numeric_limits<std::int64_t>::max() - std::int64_t(msgs.size()))
        return fail(Errc::io, "the task file has no task numbers left (seq at its maximum)");
    std::int64_t seq = *top + 1;
    Turns turns;
    // A chunk's messages as stored, kept until its tasks are in (a task already known gets
    // none).
    struct Stored {
        std::string props, headers, task_body;
        const std::string* body;  // &task_body, or the envelope's
        std::string_view queue;
        int state;
    };
    std::vector<Stored> chunk;
    chunk.reserve(Statements::kChunks[0]);
    for (std::size_t first = 0; first < msgs.size();) {
        std::size_t c = 0;
        while (Statements::kChunks[c] > msgs.size() - first) ++c;
        const std::size_t size = Statements::kChunks[c];
        Stmt& tasks = st.insert_tasks[c];
        tasks.reset();
        chunk.clear();
        for (std::size_t i = 0; i < size; ++i) {
            const OutgoingMessage& m = msgs[first + i];
            if (!known.rows.contains(m.queue)) {
                st.insert_queue.reset();
                CONVEYOR_TRY(st.insert_queue.bind(1, m.queue).run());
            }
            // What is stored: a task passed as it is (TaskForm::task) written as text from its
            // fields, without the Celery message's JSON tree; else the message's envelope.
            const TaskMessage* task = m.task.get();
            Stored& row = chunk.emplace_back();  // (reserved: `body` may point into it)
            row.body = &m.envelope.body;
            if (task) {
                row.task_body = codec::encode_body(*task);
                row.body = &row.task_body;
            }
            std::int64_t turn = 0;
            if (auto f = known.fair.find(m.queue); f != known.fair.end()) {
                auto t = next_turn(st, turns, m.queue, limit_key_of_body(f->second, *row.body));
                CONVEYOR_TRY(t);
                turn = *t;
            }
            std::string id = !m.task_id.empty() ? m.task_id
                             : task             ? task->id
                                                : codec::envelope_id(m.envelope);
            if (id.empty()) id = make_task_id();
            auto at = m.not_before ? to_epoch_ms(*m.not_before) : now;
            row.queue = m.queue;
            row.state = at > now ? kDelayed : kReady;
            int p = int(i) * 11;
            tasks.bind(p + 1, seq + std::int64_t(i))
                .bind(p + 2, id)
                .bind(p + 3, m.queue)
                .bind(p + 4, row.state)
                .bind(p + 5, task ? task->priority : m.envelope.priority)
                .bind(p + 6, at)
                .bind(p + 7, task ? task->retries : retries_of(m.envelope))
                .bind_or_null(p + 8, task ? std::string_view(task->name) : task_name_of(m.envelope))
                .bind(p + 9, now)
                .bind_or_null(p + 10, unique_key)
                .bind(p + 11, turn);
            row.props = task ? props_json(*task) : props_json(m.envelope);
            row.headers = task ? codec::headers_text(*task) : headers_json(m.envelope);
        }
        auto added = tasks.run();
        CONVEYOR_TRY(added);
        // Which rows went in: all, or (an id already known, or twice in the chunk) those whose
        // seq is now taken; a message each. (The chunk's text is bound as it is, not copied:
        // a chunk of large messages is then not held twice; reset before the chunk goes.)
        auto put = [&](Stmt& messages, int p, std::size_t i) {
            messages.bind(p + 1, seq + std::int64_t(i))
                .bind_unchanged(p + 2, chunk[i].props)
                .bind_unchanged(p + 3, chunk[i].headers)
                .bind_blob_unchanged(p + 4, *chunk[i].body);
            counts.add(chunk[i].queue, chunk[i].state, 1);
        };
        auto run = [](Stmt& messages) -> Result<void> {
            auto done = messages.run();
            messages.reset();
            CONVEYOR_TRY(done);
            return {};
        };
        if (std::size_t(*added) == size) {
            Stmt& messages = st.insert_messages[c];
            messages.reset();
            for (std::size_t i = 0; i < size; ++i) put(messages, int(i) * 4, i);
            CONVEYOR_TRY(run(messages));
        } else if (*added > 0) {
            for (std::size_t i = 0; i < size; ++i) {
                st.task_at.reset();
                auto taken = first_i64(st.task_at.bind(1, seq + std::int64_t(i)));
                CONVEYOR_TRY(taken);
                if (*taken == 0) continue;
                Stmt& one = st.insert_messages.back();
                one.reset();
                put(one, 0, i);
                CONVEYOR_TRY(run(one));
            }
        }
        seq += std::int64_t(size);
        first += size;
    }
    for (auto& [qk, last] : turns.key) {
        st.fair_keep.reset();
        CONVEYOR_TRY(st.fair_keep.bind(1, qk.first).bind(2, qk.second).bind(3, last).run());
    }
    return counts.write(st);
}

}  // namespace conveyor::sqlite
