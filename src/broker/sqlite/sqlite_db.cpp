#include "broker/sqlite/sqlite_db.hpp"

#include <fmt/format.h>

#include <chrono>
#include <thread>

namespace conveyor::sqlite {

Error to_error(sqlite3* db, int rc, std::string_view what) {
    int primary = rc & 0xff;
    Errc code = Errc::io;
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) code = Errc::unavailable;
    if (primary == SQLITE_CANTOPEN || primary == SQLITE_PERM || primary == SQLITE_READONLY)
        code = Errc::io;
    if (primary == SQLITE_CONSTRAINT) code = Errc::conflict;
    std::string detail = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    return Error{code, fmt::format("sqlite: {}: {}", what, detail)};
}

Result<bool> Stmt::step() {
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return std::unexpected(to_error(
        db_, rc, sqlite3_sql(s_) ? std::string_view(sqlite3_sql(s_)).substr(0, 40) : "step"));
}

Result<int> Stmt::run() {
    for (;;) {
        auto r = step();
        if (!r) return std::unexpected(r.error());
        if (!*r) break;
    }
    return sqlite3_changes(db_);
}

Result<Db> Db::open(const std::string& path, std::string_view synchronous) {
    sqlite3* raw = nullptr;
    int rc =
        sqlite3_open_v2(path.c_str(), &raw,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    Db db(raw);
    if (rc != SQLITE_OK) {
        return fail(Errc::io, fmt::format("cannot open sqlite database '{}': {}", path,
                                          raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)));
    }
    sqlite3_busy_timeout(raw, 10000);
    // journal_mode=WAL needs a write lock once per file; retry briefly when several processes
    // open a new file at the same time.
    for (int attempt = 0;; ++attempt) {
        auto ok = db.exec("PRAGMA journal_mode=WAL");
        if (ok) break;
        if (attempt > 50) return std::unexpected(ok.error());
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (auto ok = db.exec(fmt::format("PRAGMA synchronous={}", synchronous)); !ok)
        return std::unexpected(ok.error());
    if (auto ok = db.exec("PRAGMA temp_store=MEMORY"); !ok) return std::unexpected(ok.error());
    return db;
}

Result<void> Db::exec(std::string_view sql) {
    char* err = nullptr;
    std::string s(sql);
    int rc = sqlite3_exec(db_, s.c_str(), nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
        Error e = to_error(db_, rc, s.substr(0, 60));
        sqlite3_free(err);
        return std::unexpected(e);
    }
    return {};
}

Result<Stmt> Db::prepare(std::string_view sql) {
    sqlite3_stmt* s = nullptr;
    int rc = sqlite3_prepare_v3(db_, sql.data(), int(sql.size()), SQLITE_PREPARE_PERSISTENT, &s,
                                nullptr);
    if (rc != SQLITE_OK) return std::unexpected(to_error(db_, rc, "prepare"));
    return Stmt(db_, s);
}

Result<Transaction> Transaction::begin(Db& db) {
    if (auto ok = db.exec("BEGIN IMMEDIATE"); !ok) return std::unexpected(ok.error());
    return Transaction(&db);
}

Result<void> Transaction::commit() {
    auto ok = db_->exec("COMMIT");
    if (ok) db_ = nullptr;
    return ok;
}

}  // namespace conveyor::sqlite
