#pragma once
// A thin RAII layer over sqlite3: one connection, prepared statements, rc -> Error.

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "conveyor/error.hpp"

namespace conveyor::sqlite {

/// Translates a sqlite result code into an Error. What may pass by itself is `unavailable`: a
/// lock held past the busy timeout, a full disk, an I/O error.
Error to_error(sqlite3* db, int rc, std::string_view what);

class Stmt {
  public:
    Stmt() = default;
    Stmt(sqlite3* db, sqlite3_stmt* s) noexcept : db_(db), s_(s) {}
    Stmt(Stmt&& o) noexcept : db_(o.db_), s_(o.s_) { o.s_ = nullptr; }
    Stmt& operator=(Stmt&& o) noexcept {
        std::swap(db_, o.db_);
        std::swap(s_, o.s_);
        return *this;
    }
    ~Stmt() { sqlite3_finalize(s_); }

    Stmt& bind(int i, std::int64_t v) {
        sqlite3_bind_int64(s_, i, v);
        return *this;
    }
    Stmt& bind(int i, int v) {
        sqlite3_bind_int64(s_, i, v);
        return *this;
    }
    Stmt& bind(int i, double v) {
        sqlite3_bind_double(s_, i, v);
        return *this;
    }
    Stmt& bind(int i, std::string_view v) {
        sqlite3_bind_text(s_, i, v.data(), int(v.size()), SQLITE_TRANSIENT);
        return *this;
    }
    Stmt& bind_blob(int i, std::string_view v) {
        sqlite3_bind_blob(s_, i, v.data(), int(v.size()), SQLITE_TRANSIENT);
        return *this;
    }
    /// Text and a blob that stay as they are until the statement is reset: not copied.
    Stmt& bind_unchanged(int i, std::string_view v) {
        sqlite3_bind_text(s_, i, v.data(), int(v.size()), SQLITE_STATIC);
        return *this;
    }
    Stmt& bind_blob_unchanged(int i, std::string_view v) {
        sqlite3_bind_blob(s_, i, v.data(), int(v.size()), SQLITE_STATIC);
        return *this;
    }
    Stmt& bind_null(int i) {
        sqlite3_bind_null(s_, i);
        return *this;
    }
    /// Text, or NULL when it is empty.
    Stmt& bind_or_null(int i, std::string_view v) { return v.empty() ? bind_null(i) : bind(i, v); }

    /// true: a row is available; false: done.
    Result<bool> step();
    /// Runs to completion; returns the number of changed rows.
    Result<int> run();
    void reset() {
        sqlite3_reset(s_);
        sqlite3_clear_bindings(s_);
    }

    std::int64_t i64(int col) const { return sqlite3_column_int64(s_, col); }
    double f64(int col) const { return sqlite3_column_double(s_, col); }
    std::string text(int col) const {
        auto* p = reinterpret_cast<const char*>(sqlite3_column_blob(s_, col));
        return p ? std::string(p, sqlite3_column_bytes(s_, col)) : std::string();
    }
    bool is_null(int col) const { return sqlite3_column_type(s_, col) == SQLITE_NULL; }
    /// The rowid the connection's last successful INSERT gave.
    std::int64_t last_rowid() const { return sqlite3_last_insert_rowid(db_); }

  private:
    sqlite3* db_ = nullptr;
    sqlite3_stmt* s_ = nullptr;
};

/// Whether a wait for another process's lock on this thread ran its whole busy timeout since
/// the last call, which clears it.
bool lock_wait_ran_out();

/// One connection. Move-only; closes in its destructor.
class Db {
  public:
    Db() = default;
    Db(Db&& o) noexcept
        : db_(o.db_),
          path_(std::move(o.path_)),
          synchronous_(std::move(o.synchronous_)),
          busy_timeout_(o.busy_timeout_),
          wal_(o.wal_),
          begin_(std::move(o.begin_)),
          commit_(std::move(o.commit_)),
          unsynced_(o.unsynced_),
          may_unsync_(o.may_unsync_) {
        o.db_ = nullptr;
    }
    Db& operator=(Db&& o) noexcept {
        std::swap(db_, o.db_);
        std::swap(path_, o.path_);
        std::swap(synchronous_, o.synchronous_);
        std::swap(busy_timeout_, o.busy_timeout_);
        std::swap(wal_, o.wal_);
        std::swap(begin_, o.begin_);
        std::swap(commit_, o.commit_);
        std::swap(unsynced_, o.unsynced_);
        std::swap(may_unsync_, o.may_unsync_);
        return *this;
    }
    ~Db() {
        // (The statements go first: a connection closed with statements open lives on.)
        begin_ = Stmt{};
        commit_ = Stmt{};
        sqlite3_close_v2(db_);
    }

    /// Opens (creating) the file with WAL, the given synchronous mode and busy timeout. A file
    /// or directory this process may not write, or a file that is not a database, is an
    /// Errc::io error that says so.
    static Result<Db> open(const std::string& path, std::string_view synchronous,
                           std::chrono::milliseconds busy_timeout = std::chrono::seconds(10));

    Result<void> exec(std::string_view sql);
    Result<Stmt> prepare(std::string_view sql);
    sqlite3* raw() const noexcept { return db_; }
    int changes() const noexcept { return sqlite3_changes(db_); }
    /// Whether a write waits for another process's lock (up to the busy timeout, the default)
    /// or fails with SQLITE_BUSY at once.
    void wait_for_locks(bool yes);

    /// Whether the write-ahead log this connection writes to is no longer the file at
    /// `<path>-wal` (someone deleted it): what this connection commits would then reach no
    /// other process, and other processes read a log that does not hold it (SQLITE_IOERR).
    bool wal_replaced() const;
    /// When the log was replaced: copies everything it holds into the database file
    /// (a checkpoint through this connection, which still has it open) and reopens, so that
    /// this connection writes to the log everyone uses again. Prepared statements of the old
    /// connection must be dropped by the caller (the old handle closes with the last one).
    /// Returns whether it did.
    Result<bool> recover_replaced_wal();

    /// BEGIN IMMEDIATE and COMMIT, prepared once (parsing them was a percent or two of a
    /// claim's or a settlement's time).
    Result<void> begin_immediate() { return once(begin_); }
    Result<void> commit() { return once(commit_); }
    /// For the next transaction: whether its commit may skip waiting for the disk (see
    /// Commit::unsynced; synchronous NORMAL where the connection's mode is FULL or EXTRA, put
    /// back before any transaction that must wait).
    Result<void> unsynced(bool yes);

  private:
    struct FileId {
        std::uint64_t dev = 0, ino = 0;
        bool known = false;
    };
    explicit Db(sqlite3* db) : db_(db) {}
    void note_wal();
    /// Runs a statement without rows from its start, and leaves it reset.
    static Result<void> once(Stmt& s) {
        s.reset();
        auto r = s.step();
        s.reset();
        if (!r) return std::unexpected(r.error());
        return {};
    }
    sqlite3* db_ = nullptr;
    std::string path_, synchronous_;
    std::chrono::milliseconds busy_timeout_{0};
    FileId wal_;
    Stmt begin_, commit_;
    bool unsynced_ = false;    // synchronous NORMAL set for the next transaction
    bool may_unsync_ = false;  // FULL or EXTRA, in write-ahead-log mode
};

/// How a transaction's commit meets the disk: as the connection's synchronous mode says, or,
/// where losing the transaction to a power cut loses nothing that matters (a claim: the task is
/// then delivered again), without waiting for it (synchronous NORMAL for that one commit: the
/// next commit that waits for the disk takes it along, the write-ahead log being written in
/// order).
enum class Commit { durable, unsynced };

/// BEGIN IMMEDIATE ... COMMIT, rolled back when not committed.
class Transaction {
  public:
    static Result<Transaction> begin(Db& db, Commit how = Commit::durable);
    Transaction(Transaction&& o) noexcept : db_(o.db_) { o.db_ = nullptr; }
    Transaction& operator=(Transaction&&) = delete;
    ~Transaction() {
        if (!db_) return;
        (void)db_->exec("ROLLBACK");
        (void)db_->unsynced(false);
    }
    Result<void> commit();

  private:
    explicit Transaction(Db* db) : db_(db) {}
    Db* db_ = nullptr;
};

}  // namespace conveyor::sqlite
