#include "broker/sqlite/sqlite_db.hpp"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "core/try.hpp"

namespace conveyor::sqlite {

Error to_error(sqlite3* db, int rc, std::string_view what) {
    int primary = rc & 0xff;
    Errc code = Errc::io;
    std::string detail = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    switch (primary) {
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
            // Another process held the write lock past the busy timeout.
            code = Errc::unavailable;
            detail += " (another process holds the write lock)";
            break;
        case SQLITE_FULL:
        case SQLITE_IOERR:
            // The disk is full, or the file system failed for a moment: both may pass.
            code = Errc::unavailable;
            break;
        case SQLITE_CONSTRAINT:
            code = Errc::conflict;
            break;
        case SQLITE_READONLY:
            detail += " (the file or its directory is not writable by this process)";
            break;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
            detail += " (the file is not a SQLite database, or it is corrupt)";
            break;
        default:
            break;
    }
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
        CONVEYOR_TRY(r);
        if (!*r) break;
    }
    return sqlite3_changes(db_);
}

namespace {

/// Why `path` cannot be used, in words, when the file system says so; empty otherwise.
std::string unwritable_reason(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::path p(path);
    fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    if (fs::exists(p, ec) && ::access(path.c_str(), W_OK) != 0)
        return fmt::format("the file '{}' is read-only for this process", path);
    if (::access(dir.c_str(), W_OK) != 0)
        return fmt::format(
            "the directory '{}' is not writable by this process (SQLite keeps its "
            "-wal and -shm files beside the database)",
            dir.string());
    return {};
}

/// Set when a wait on this thread ran its whole timeout (see lock_wait_ran_out).
thread_local bool lock_wait_expired = false;

/// Waits for another process's write lock in short steps (SQLite's own handler sleeps 1 ms at
/// first, then up to 100 ms, far longer than one of Conveyor's transactions holds the lock:
/// with several processes on one file the writers mostly slept). `ctx` points to the timeout
/// (busy_limit); `count` is how often this wait was already retried.
int busy_wait(void* ctx, int count) {
    using namespace std::chrono;
    thread_local steady_clock::time_point began;
    auto now = steady_clock::now();
    if (count == 0) began = now;
    if (now - began >= *static_cast<const milliseconds*>(ctx)) {
        lock_wait_expired = true;
        return 0;
    }
    // 20 µs, doubling up to 1 ms: a waiter tries again soon after the lock is free.
    std::this_thread::sleep_for(microseconds(20 << std::min(count, 6)));
    return 1;
}

/// Where busy_wait finds a timeout: one place per distinct value for the life of the process
/// (a connection closed with statements still open lives on until they go, so nothing a Db owns
/// may be its handler's context).
std::chrono::milliseconds* busy_limit(std::chrono::milliseconds limit) {
    static std::mutex mu;
    static std::map<std::int64_t, std::chrono::milliseconds> limits;
    std::lock_guard lk(mu);
    return &limits.try_emplace(limit.count(), limit).first->second;
}

/// SQLite counts the memory it holds under one process-wide mutex on every allocation and
/// free, a tenth of the engine's time in SQLite; nothing here reads the count. Turned off once,
/// when the process first opens a file (README: "SQLite's memory statistics"); SQLite refuses
/// once it has started (a program that used it first keeps its setting).
void stop_counting_memory() {
    static std::once_flag once;
    std::call_once(once, [] { (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); });
}

}  // namespace

bool lock_wait_ran_out() { return std::exchange(lock_wait_expired, false); }

void Db::wait_for_locks(bool yes) {
    if (yes)
        sqlite3_busy_handler(db_, busy_wait,
                             busy_limit(std::max(busy_timeout_, std::chrono::milliseconds(0))));
    else
        sqlite3_busy_handler(db_, nullptr, nullptr);
}

Result<Db> Db::open(const std::string& path, std::string_view synchronous,
                    std::chrono::milliseconds busy_timeout) {
    stop_counting_memory();
    sqlite3* raw = nullptr;
    int rc =
        sqlite3_open_v2(path.c_str(), &raw,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    Db db(raw);
    if (rc != SQLITE_OK) {
        std::string why = unwritable_reason(path);
        return fail(Errc::io, fmt::format("cannot open sqlite database '{}': {}", path,
                                          !why.empty() ? why
                                          : raw        ? sqlite3_errmsg(raw)
                                                       : sqlite3_errstr(rc)));
    }
    if (sqlite3_db_readonly(raw, "main") == 1) {
        // SQLite falls back to reading when it may not write; a broker must write.
        std::string why = unwritable_reason(path);
        return fail(Errc::io, fmt::format("cannot open sqlite database '{}': {}", path,
                                          why.empty() ? "it opened read-only" : why));
    }
    sqlite3_busy_handler(raw, busy_wait,
                         busy_limit(std::max(busy_timeout, std::chrono::milliseconds(0))));
    // journal_mode=WAL needs a write lock once per file; retry briefly when several processes
    // open a new file at the same time.
    bool wal = false;
    for (int attempt = 0;; ++attempt) {
        auto mode = db.prepare("PRAGMA journal_mode=WAL");
        Result<bool> ok = mode ? mode->step() : Result<bool>(std::unexpected(mode.error()));
        if (ok) {
            wal = *ok && mode->text(0) == "wal";
            break;
        }
        if (ok.error().code != Errc::unavailable || attempt > 50) {
            std::string why = unwritable_reason(path);
            if (!why.empty())
                return fail(Errc::io,
                            fmt::format("cannot open sqlite database '{}': {}", path, why));
            return fail(ok.error().code, fmt::format("cannot open sqlite database '{}': {}", path,
                                                     ok.error().message));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CONVEYOR_TRY(db.exec(fmt::format("PRAGMA synchronous={}", synchronous)));
    CONVEYOR_TRY(db.exec("PRAGMA temp_store=MEMORY"));
    db.path_ = path;
    db.synchronous_ = std::string(synchronous);
    db.busy_timeout_ = busy_timeout;
    // A first read opens the write-ahead log, which is then the one this connection uses.
    CONVEYOR_TRY(db.exec("PRAGMA schema_version"));
    db.note_wal();
    auto prepare = [&](Stmt& to, std::string_view sql) -> Result<void> {
        auto s = db.prepare(sql);
        CONVEYOR_TRY(s);
        to = std::move(*s);
        return {};
    };
    CONVEYOR_TRY(prepare(db.begin_, "BEGIN IMMEDIATE"));
    CONVEYOR_TRY(prepare(db.commit_, "COMMIT"));
    // Only where the log is written in order may a commit leave the disk to the next one.
    db.may_unsync_ = wal && (synchronous == "FULL" || synchronous == "EXTRA");
    return db;
}

void Db::note_wal() {
    struct stat st {};
    if (path_.empty() || ::stat((path_ + "-wal").c_str(), &st) != 0) return;
    wal_ = FileId{std::uint64_t(st.st_dev), std::uint64_t(st.st_ino), true};
}

bool Db::wal_replaced() const {
    if (!wal_.known) return false;
    struct stat st {};
    if (::stat((path_ + "-wal").c_str(), &st) != 0) return errno == ENOENT;
    return std::uint64_t(st.st_dev) != wal_.dev || std::uint64_t(st.st_ino) != wal_.ino;
}

Result<bool> Db::recover_replaced_wal() {
    if (!wal_replaced()) return false;
    CONVEYOR_TRY(exec("PRAGMA wal_checkpoint(TRUNCATE)"));
    auto fresh = Db::open(path_, synchronous_, busy_timeout_);
    CONVEYOR_TRY(fresh);
    *this = std::move(*fresh);  // the old handle closes with its last statement
    return true;
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

Result<void> Db::unsynced(bool yes) {
    if (yes == unsynced_ || !may_unsync_) return {};
    // (Through exec: SQLite applies a synchronous pragma when it compiles the statement, so a
    // prepared one would not change the mode when run again. Counted as NORMAL from the
    // attempt on: a failure after the change must not pass for FULL.)
    if (yes) unsynced_ = true;
    CONVEYOR_TRY(exec(fmt::format("PRAGMA synchronous={}", yes ? "NORMAL" : synchronous_)));
    unsynced_ = yes;
    return {};
}

Result<Transaction> Transaction::begin(Db& db, Commit how) {
    // (A transaction that must wait puts the mode back first, should that have failed before.)
    CONVEYOR_TRY(db.unsynced(how == Commit::unsynced));
    if (auto begun = db.begin_immediate(); !begun) {
        (void)db.unsynced(false);
        return std::unexpected(begun.error());
    }
    return Transaction(&db);
}

Result<void> Transaction::commit() {
    CONVEYOR_TRY(db_->commit());
    // (Should putting the mode back fail, the next transaction that must wait does it.)
    (void)db_->unsynced(false);
    db_ = nullptr;
    return {};
}

}  // namespace conveyor::sqlite
