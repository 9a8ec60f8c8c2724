// Celery events folded into a local sqlite file with the engine's layout: task-received makes
// a task row (its arguments as the event's repr strings), task-started/-succeeded/-failed/
// -retried/-revoked move it along (a retry keeps its attempt and error), outcomes count in
// `minutes`, worker-online/-heartbeat/-offline keep `workers`.
#include "broker/sqlite/sqlite_events.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "broker/sqlite/sqlite_tables.hpp"
#include "core/try.hpp"

namespace conveyor::sqlite {

namespace {

std::string str(const Json& e, const char* key) {
    auto it = e.find(key);
    return it != e.end() && it->is_string() ? it->get<std::string>() : std::string();
}

double number(const Json& e, const char* key, double def) {
    auto it = e.find(key);
    return it != e.end() && it->is_number() && std::isfinite(it->get<double>()) ? it->get<double>()
                                                                                : def;
}

/// The event's time in ms since the epoch; now when it carries none that makes sense.
std::int64_t event_ms(const Json& e) {
    double s = number(e, "timestamp", -1);
    if (s <= 0 || s >= 253402300800.0) return now_ms();
    return std::int64_t(s * 1000.0);
}

class SqliteEventFolder final : public EventFolder {
  public:
    SqliteEventFolder(Db db, Statements st, SqliteOptions o)
        : db_(std::move(db)), st_(std::move(st)), opts_(std::move(o)) {}

    Result<void> prepare() {
        struct Def {
            Stmt* stmt;
            std::string_view sql;
        };
        Def defs[] = {
            {&received_,
             "INSERT INTO tasks(id, queue, state, priority, available_at, name, created_at, "
             "retries) VALUES(?1, ?2, 0, 0, ?3, ?6, ?3, ?7) "
             "ON CONFLICT(id) DO UPDATE SET queue = CASE WHEN tasks.queue = '' THEN "
             "excluded.queue ELSE tasks.queue END, name = coalesce(excluded.name, tasks.name), "
             "state = CASE WHEN tasks.state = 3 THEN 0 ELSE tasks.state END, "
             "retries = max(tasks.retries, excluded.retries) RETURNING seq"},
            {&message_,
             "INSERT INTO messages(seq, props, headers, body) VALUES(?1, '{}', ?2, ?3) "
             "ON CONFLICT(seq) DO UPDATE SET headers = excluded.headers, body = excluded.body"},
            {&ensure_,
             "INSERT OR IGNORE INTO tasks(id, queue, state, created_at) VALUES(?1, '', 0, ?2)"},
            {&ensure_message_,
             "INSERT INTO messages(seq, props, headers, body) VALUES(?1, '{}', '{}', '')"},
            {&started_,
             "UPDATE tasks SET state=1, started_at=?2, lease_owner=?3 WHERE id=?1 AND state "
             "NOT IN (2, 4, 5)"},
            {&succeeded_,
             "UPDATE tasks SET state=4, finished_at=?2, lease_owner=?3, "
             "started_at=coalesce(started_at, ?4) WHERE id=?1 RETURNING queue, name"},
            {&failed_,
             "UPDATE tasks SET state=2, finished_at=?2, dead_at=?2, lease_owner=?3, reason=?4, "
             "error=?4 WHERE id=?1 RETURNING queue, name"},
            {&retried_,
             "UPDATE tasks SET state=3, retries=retries+1, error=?4, lease_owner=NULL, "
             "attempts=json_insert(coalesce(attempts, '[]'), '$[#]', json_object('started', "
             "coalesce(started_at, ?2), 'finished', ?2, 'worker', ?3, 'error', ?4)), "
             "started_at=NULL WHERE id=?1 RETURNING queue, name"},
            {&revoked_,
             "UPDATE tasks SET state=5, finished_at=?2, error=?3 WHERE id=?1 AND state <> 4 "
             "RETURNING queue, name"},
            {&worker_,
             "INSERT INTO workers(name, info, seen_at) VALUES(?1, ?2, ?3) ON CONFLICT(name) DO "
             "UPDATE SET info=excluded.info, seen_at=max(workers.seen_at, excluded.seen_at)"},
            {&forget_workers_, "DELETE FROM workers WHERE seen_at < ?1"},
        };
        for (auto& d : defs) {
            auto s = db_.prepare(d.sql);
            CONVEYOR_TRY(s);
            *d.stmt = std::move(*s);
        }
        return {};
    }

    Result<void> apply(std::span<const Json> events) override {
        if (events.empty()) return {};
        return in_transaction(db_, st_, [&]() -> Result<void> {
            for (auto& e : events) CONVEYOR_TRY(one(e));
            auto now = std::chrono::steady_clock::now();
            if (now >= next_prune_) {
                next_prune_ = now + std::chrono::seconds(60);
                CONVEYOR_TRY(prune_history(st_, opts_));
                forget_workers_.reset();
                CONVEYOR_TRY(forget_workers_.bind(1, now_ms() - 86400000).run());
            }
            return {};
        });
    }

  private:
    Result<void> one(const Json& e) {
        std::string type = str(e, "type");
        std::string host = str(e, "hostname");
        auto at = event_ms(e);
        if (type.starts_with("worker-")) return worker(e, type, host, at);
        if (!type.starts_with("task-")) return {};
        std::string id = str(e, "uuid");
        if (id.empty() || id.size() > 512) return {};
        std::string owner = host + "#events";  // what the workers view looks for
        if (type == "task-received" || type == "task-sent") {
            std::string name = str(e, "name"), args = str(e, "args"), kwargs = str(e, "kwargs");
            std::string queue = str(e, "queue");
            if (queue.empty()) queue = str(e, "routing_key");
            Json headers = {{"task", name}, {"id", id}, {"argsrepr", args}, {"kwargsrepr", kwargs}};
            for (auto* k : {"eta", "expires", "root_id", "parent_id"})
                if (auto v = str(e, k); !v.empty()) headers[k] = v;
            received_.reset();
            received_.bind(1, id).bind(2, queue).bind(3, at).bind_or_null(6, name).bind(
                7, std::int64_t(std::clamp(number(e, "retries", 0), 0.0, 1e9)));
            auto row = received_.step();
            CONVEYOR_TRY(row);
            auto seq = *row ? received_.i64(0) : 0;
            received_.reset();
            if (!*row) return {};
            message_.reset();
            message_.bind(1, seq)
                .bind(2, headers.dump(-1, ' ', false, Json::error_handler_t::replace))
                .bind(3, args + " " + kwargs);
            CONVEYOR_TRY(message_.run());
            return {};
        }
        ensure_.reset();
        auto added = ensure_.bind(1, id).bind(2, at).run();
        CONVEYOR_TRY(added);
        if (*added > 0) {
            ensure_message_.reset();
            CONVEYOR_TRY(ensure_message_.bind(1, ensure_.last_rowid()).run());
        }
        if (type == "task-started") {
            started_.reset();
            CONVEYOR_TRY(started_.bind(1, id).bind(2, at).bind(3, owner).run());
            return {};
        }
        Stmt* st = nullptr;
        MinuteCount c;
        if (type == "task-succeeded") {
            double runtime = std::clamp(number(e, "runtime", 0), 0.0, 1e9);
            st = &succeeded_;
            st->reset();
            st->bind(4, at - std::int64_t(runtime * 1000.0));
            c.succeeded = 1;
            c.run_ms = std::int64_t(runtime * 1000.0);
        } else if (type == "task-failed") {
            st = &failed_;
            st->reset();
            st->bind(4, str(e, "exception"));
            c.failed = c.dead = 1;
        } else if (type == "task-retried") {
            st = &retried_;
            st->reset();
            st->bind(4, str(e, "exception"));
            c.failed = c.retried = 1;
        } else if (type == "task-revoked") {
            st = &revoked_;
            st->reset();
            st->bind(3, e.value("expired", false) ? "expired" : "revoked");
        } else {
            return {};
        }
        st->bind(1, id).bind(2, at);
        if (st != &revoked_) st->bind(3, owner);
        auto row = st->step();
        CONVEYOR_TRY(row);
        std::string queue, name;
        if (*row) {
            queue = st->text(0);
            name = st->text(1);
        }
        st->reset();
        if (!*row || (c.succeeded + c.failed) == 0) return {};
        return count_minute(st_, at / 60000 * 60000, queue, name, c);
    }

    Result<void> worker(const Json& e, const std::string& type, const std::string& host,
                        std::int64_t at) {
        if (host.empty() || host.size() > 512) return {};
        Json info = {{"node", host},
                     {"consumer", host},
                     {"offline", type == "worker-offline"},
                     {"source", "events"}};
        for (auto* k : {"pid", "active", "processed", "freq"})
            if (auto it = e.find(k); it != e.end() && it->is_number()) info[k] = *it;
        for (auto* k : {"sw_ident", "sw_ver", "sw_sys"})
            if (auto v = str(e, k); !v.empty()) info[k] = v;
        if (auto it = e.find("loadavg"); it != e.end() && it->is_array() && it->size() <= 3)
            info["loadavg"] = *it;
        if (info.contains("active")) info["busy"] = info["active"];
        worker_.reset();
        worker_.bind(1, host)
            .bind(2, info.dump(-1, ' ', false, Json::error_handler_t::replace))
            .bind(3, at);
        CONVEYOR_TRY(worker_.run());
        return {};
    }

    Db db_;
    Statements st_;
    SqliteOptions opts_;
    Stmt received_, message_, ensure_, ensure_message_, started_, succeeded_, failed_, retried_,
        revoked_, worker_, forget_workers_;
    std::chrono::steady_clock::time_point next_prune_{};
};

}  // namespace

Result<std::unique_ptr<EventFolder>> open_event_folder(const SqliteOptions& sqlite) {
    auto db = Db::open(sqlite.path, sqlite.synchronous, sqlite.busy_timeout);
    CONVEYOR_TRY(db);
    CONVEYOR_TRY(create_schema(*db));
    auto st = Statements::prepare(*db);
    CONVEYOR_TRY(st);
    auto f = std::make_unique<SqliteEventFolder>(std::move(*db), std::move(*st), sqlite);
    CONVEYOR_TRY(f->prepare());
    return std::unique_ptr<EventFolder>(std::move(f));
}

}  // namespace conveyor::sqlite
