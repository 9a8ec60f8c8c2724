// Schedules on the sqlite engine: a leadership lease row, each schedule's last fire, and the
// schedules added from the CLI.
#include "broker/sqlite/sqlite_schedule_store.hpp"

#include <fmt/format.h>

#include "broker/sqlite/sqlite_tables.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor::sqlite {

namespace {

using detail::from_epoch_ms;
using detail::to_epoch_ms;

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
            CONVEYOR_TRY(q);
            q->bind(1, owner).bind(2, now + ttl.count()).bind(3, now);
            auto r = q->run();
            CONVEYOR_TRY(r);
            mine = *r > 0;
            return {};
        });
        CONVEYOR_TRY(ok);
        return mine;
    }

    Result<void> resign(std::string_view owner) override {
        auto q = db_.prepare("DELETE FROM scheduler_lease WHERE owner=?1");
        CONVEYOR_TRY(q);
        q->bind(1, owner);
        CONVEYOR_TRY(q->run());
        return {};
    }

    Result<std::map<std::string, Mark>> last_fires(const std::vector<std::string>&) override {
        std::map<std::string, Mark> out;
        auto q = db_.prepare(
            "SELECT name, last_fire, last_run IS NOT NULL, coalesce(last_run, 0) "
            "FROM schedule_state WHERE last_fire IS NOT NULL");
        CONVEYOR_TRY(q);
        for (;;) {
            auto row = q->step();
            CONVEYOR_TRY(row);
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
        std::vector<OutgoingMessage> msgs;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            led = false;  // (as of the attempt that commits)
            msgs.clear();
            auto check =
                db_.prepare("SELECT 1 FROM scheduler_lease WHERE id=1 AND owner=?1 AND until>=?2");
            CONVEYOR_TRY(check);
            check->bind(1, owner).bind(2, now_ms());
            auto row = check->step();
            CONVEYOR_TRY(row);
            if (!*row) return {};  // another scheduler leads now: publish nothing
            led = true;
            for (auto& f : fires)
                if (f.message) msgs.push_back(*f.message);
            CONVEYOR_TRY(insert_messages(st_, msgs, known_queues_));
            auto up = db_.prepare(
                "INSERT INTO schedule_state(name, last_fire, last_run) "
                "VALUES(?1, ?2, CASE WHEN ?3 THEN ?2 END) "
                "ON CONFLICT(name) DO UPDATE SET last_fire=max(coalesce(last_fire, 0), ?2), "
                "last_run=CASE WHEN ?3 THEN max(coalesce(last_run, 0), ?2) ELSE last_run END");
            CONVEYOR_TRY(up);
            for (auto& f : fires) {
                up->reset();
                up->bind(1, f.schedule).bind(2, to_epoch_ms(f.at)).bind(3, f.message ? 1 : 0);
                CONVEYOR_TRY(up->run());
            }
            return {};
        });
        CONVEYOR_TRY(ok);
        known_queues_.committed(msgs);
        return led;
    }

    Result<Overrides> overrides() override {
        Overrides out;
        auto q = db_.prepare("SELECT spec FROM schedules ORDER BY name");
        CONVEYOR_TRY(q);
        for (;;) {
            auto row = q->step();
            CONVEYOR_TRY(row);
            if (!*row) break;
            Json j = Json::parse(q->text(0), nullptr, false);
            if (j.is_object()) out.added.push_back(std::move(j));
        }
        auto p = db_.prepare("SELECT name, paused FROM schedule_state WHERE paused IS NOT NULL");
        CONVEYOR_TRY(p);
        for (;;) {
            auto row = p->step();
            CONVEYOR_TRY(row);
            if (!*row) break;
            out.paused[p->text(0)] = p->i64(1) != 0;
        }
        return out;
    }

    Result<void> add(const Json& spec) override {
        auto q = db_.prepare("INSERT OR REPLACE INTO schedules(name, spec) VALUES(?1, ?2)");
        CONVEYOR_TRY(q);
        q->bind(1, spec.value("name", "")).bind(2, spec.dump());
        CONVEYOR_TRY(q->run());
        return {};
    }

    Result<bool> remove(std::string_view name) override {
        int removed = 0;
        auto ok = in_transaction(db_, st_, [&]() -> Result<void> {
            for (auto sql : {"DELETE FROM schedules WHERE name=?1",
                             "DELETE FROM schedule_state WHERE name=?1"}) {
                auto q = db_.prepare(sql);
                CONVEYOR_TRY(q);
                q->bind(1, name);
                auto r = q->run();
                CONVEYOR_TRY(r);
                if (removed == 0) removed = *r;
            }
            return {};
        });
        CONVEYOR_TRY(ok);
        return removed > 0;
    }

    Result<void> set_paused(std::string_view name, bool paused) override {
        auto q = db_.prepare(
            "INSERT INTO schedule_state(name, paused) VALUES(?1, ?2) "
            "ON CONFLICT(name) DO UPDATE SET paused=?2");
        CONVEYOR_TRY(q);
        q->bind(1, name).bind(2, paused ? 1 : 0);
        CONVEYOR_TRY(q->run());
        return {};
    }

  private:
    Db db_;
    Statements st_;
    KnownQueues known_queues_;
};

}  // namespace

Result<std::unique_ptr<ScheduleStore>> open_schedule_store(const SqliteOptions& sqlite) {
    auto db = Db::open(sqlite.path, sqlite.synchronous, sqlite.busy_timeout);
    CONVEYOR_TRY(db);
    auto st = Statements::prepare(*db);
    CONVEYOR_TRY(st);
    return std::unique_ptr<ScheduleStore>(
        std::make_unique<SqliteScheduleStore>(std::move(*db), std::move(*st)));
}

}  // namespace conveyor::sqlite
