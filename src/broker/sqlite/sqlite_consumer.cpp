// Consuming from the sqlite engine: a cheap read-only probe while idle, claims in BEGIN
// IMMEDIATE with a lease, lease renewal, settlements grouped into one commit, and the next
// batch claimed ahead on a thread of the consumer (ConsumerOptions::read_ahead).
#include "broker/sqlite/sqlite_consumer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "broker/sqlite/sqlite_limits.hpp"
#include "broker/sqlite/sqlite_tables.hpp"
#include "core/text_headers.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor::sqlite {

namespace {

using detail::to_epoch_ms;

class SqliteConsumer final : public Consumer {
  public:
    SqliteConsumer(Db db, Statements st, ConsumerOptions o, SqliteOptions sqlite)
        : db_(std::move(db)),
          st_(std::move(st)),
          opts_(std::move(o)),
          sqlite_(std::move(sqlite)),
          opts_history_(sqlite_.history.count() > 0 && sqlite_.history_max > 0) {
        owner_ = fmt::format("{}#{}", opts_.name.empty() ? "consumer" : opts_.name,
                             make_task_id().substr(24));  // random bits (the first are the time)
    }

    ~SqliteConsumer() override {
        {
            std::lock_guard lk(ahead_mu_);
            ahead_stop_ = true;
        }
        ahead_cv_.notify_all();
        if (claimer_.joinable()) claimer_.join();
        std::lock_guard db(db_mu_);
        // Hand back whatever is still held (claimed ahead too) so that others need not wait
        // for the lease.
        if (held_.empty()) return;
        (void)in_transaction(db_, st_, [&]() -> Result<void> {
            auto st = db_.prepare(
                "UPDATE tasks SET state=0, lease_owner=NULL, lease_until=NULL, "
                "deliveries=max(deliveries-1,0) WHERE lease_owner=?1 AND state=1 "
                "RETURNING queue");
            CONVEYOR_TRY(st);
            st->bind(1, owner_);
            CountDeltas counts;
            for (;;) {
                auto r = st->step();
                CONVEYOR_TRY(r);
                if (!*r) break;
                counts.move(st->text(0), kInFlight, kReady);
            }
            CONVEYOR_TRY(wake_buckets(st_, held_buckets(), now_ms()));
            return counts.write(st_);
        });
    }

    Result<std::vector<Delivery>> fetch(std::size_t max, std::chrono::milliseconds wait) override {
        {
            std::lock_guard db(db_mu_);
            CONVEYOR_TRY(housekeep());
        }
        auto deadline = std::chrono::steady_clock::now() + wait;
        auto sleep = std::chrono::microseconds(500);
        for (;;) {
            // What was claimed ahead first; else a claim of its own.
            auto ahead = take_ahead(max);
            CONVEYOR_TRY(ahead);
            if (!ahead->empty()) {
                ask_ahead(max);
                return ahead;
            }
            Result<std::vector<Row>> rows = std::vector<Row>{};
            std::chrono::steady_clock::time_point due;  // the next check the probe planned
            {
                std::lock_guard db(db_mu_);
                auto probe = claimable();
                CONVEYOR_TRY(probe);
                if (*probe) rows = claim_rows(max);
                due = next_check_;
            }
            CONVEYOR_TRY(rows);
            if (!rows->empty()) {
                ask_ahead(max);
                return to_deliveries(std::move(*rows));
            }
            auto now = std::chrono::steady_clock::now();
            if (now >= deadline) return std::vector<Delivery>{};
            // No later than a delayed task, a lease or a limit falls due (a rate limit's next
            // start is taken on time).
            std::chrono::steady_clock::duration nap =
                std::min<std::chrono::steady_clock::duration>(sleep, deadline - now);
            if (due > now) nap = std::min<std::chrono::steady_clock::duration>(nap, due - now);
            std::this_thread::sleep_for(nap);
            sleep = std::min(sleep * 2, std::chrono::microseconds(4000));
        }
    }

    Result<void> stop_reading_ahead() override {
        if (!opts_.read_ahead) return {};
        {
            std::lock_guard lk(ahead_mu_);
            ahead_stop_ = true;
        }
        ahead_cv_.notify_all();
        if (claimer_.joinable()) claimer_.join();
        std::vector<Settlement> back;
        {
            std::lock_guard lk(ahead_mu_);
            for (auto& d : ahead_) back.push_back(Settlement{Settlement::Kind::release, d.tag});
            ahead_.clear();
        }
        return settle(back);
    }

    Result<void> settle(std::span<Settlement> batch) override {
        if (batch.empty()) return {};
        std::lock_guard db(db_mu_);
        auto ok = settle_batch(batch);
        // Settled, or already taken by another consumer (its lease was lost): not held either way.
        if (ok)
            for (auto& s : batch) {
                held_.erase(s.tag);
                queue_of_.erase(s.tag);
                bucket_of_.erase(s.tag);
            }
        return ok;
    }

    /// What the settlements of one transaction change besides their rows.
    struct Settling {
        CountDeltas counts;
        std::vector<std::string> woken;  // buckets with a task settled: room for another
        std::string queue;               // the queue of the last row a statement returned
    };

    Result<void> settle_batch(std::span<Settlement> batch) {
        return in_transaction(db_, st_, [&]() -> Result<void> {
            auto now = now_ms();
            minutes_.clear();
            Settling done;
            for (std::size_t i = 0; i < batch.size();) {
                // A run of acks goes a chunk per statement (64, then 8); the rest one by one.
                std::size_t acks = 0;
                while (i + acks < batch.size() && batch[i + acks].kind == Settlement::Kind::ack)
                    ++acks;
                std::size_t c = 0;
                while (c < st_.finish_chunk.size() && Statements::kChunks[c] > acks) ++c;
                if (c < st_.finish_chunk.size()) {
                    CONVEYOR_TRY(
                        settle_acks(batch.subspan(i, Statements::kChunks[c]), c, now, done));
                    i += Statements::kChunks[c];
                } else {
                    CONVEYOR_TRY(settle_one(batch[i], now, done));
                    ++i;
                }
            }
            CONVEYOR_TRY(wake_buckets(st_, done.woken, now));
            CONVEYOR_TRY(done.counts.write(st_));
            return write_minutes();
        });
    }

    /// One settlement, by its own statement.
    Result<void> settle_one(Settlement& s, std::int64_t now, Settling& done) {
        Result<int> r;
        int to = -1;  // the counted state it goes to (finished: none)
        const Settlement::Attempt* a = s.attempt ? &*s.attempt : nullptr;
        switch (s.kind) {
            case Settlement::Kind::ack:
                if (opts_history_) {
                    bool revoked = s.result && s.result->state == TaskState::revoked;
                    st_.finish.reset();
                    st_.finish.bind(1, std::int64_t(s.tag))
                        .bind(2, owner_)
                        .bind(3, revoked ? kRevoked : kSucceeded);
                    if (a)
                        st_.finish.bind(4, to_epoch_ms(a->started))
                            .bind(5, to_epoch_ms(a->finished));
                    else
                        st_.finish.bind_null(4).bind(5, now);
                    r = st_.finish.run();
                } else {
                    st_.ack.reset();
                    r = st_.ack.bind(1, std::int64_t(s.tag)).bind(2, owner_).run();
                }
                break;
            case Settlement::Kind::retry: {
                auto nb = to_epoch_ms(s.not_before);
                st_.retry.reset();
                st_.retry.bind(1, std::int64_t(s.tag))
                    .bind(2, owner_)
                    .bind(3, nb > now ? int(kDelayed) : int(kReady))
                    .bind(4, nb);
                if (a && opts_history_) st_.retry.bind(5, attempt_json(*a)).bind(6, a->error);
                to = nb > now ? kDelayed : kReady;
                r = run_returning_queue(st_.retry, done.queue);
                if (r && *r > 0) {  // the message as it goes again (its retry count)
                    st_.update_message.reset();
                    st_.update_message.bind(1, std::int64_t(s.tag))
                        .bind(2, props_json(s.envelope))
                        .bind(3, headers_json(s.envelope))
                        .bind_blob(4, s.envelope.body);
                    if (auto u = st_.update_message.run(); !u) r = u;
                }
                break;
            }
            case Settlement::Kind::dead_letter:
                st_.dead.reset();
                st_.dead.bind(1, std::int64_t(s.tag))
                    .bind(2, owner_)
                    .bind(3, s.reason)
                    .bind(4, a ? to_epoch_ms(a->finished) : now);
                if (a) st_.dead.bind(5, to_epoch_ms(a->started)).bind(6, a->error);
                to = kDead;
                r = run_returning_queue(st_.dead, done.queue);
                break;
            case Settlement::Kind::release:
                st_.release.reset();
                st_.release.bind(1, std::int64_t(s.tag)).bind(2, owner_);
                to = kReady;
                r = run_returning_queue(st_.release, done.queue);
                break;
        }
        CONVEYOR_TRY(r);
        // A lost lease (r == 0) means another worker owns the task now; its result wins.
        if (*r == 0) return {};
        return settled(s, to, done);
    }

    /// A chunk of acks (Statements::kChunks[c] of them) by one statement; those whose lease
    /// was lost (another worker owns the task now, and its result wins) are not returned and
    /// change nothing. (A tag twice in the chunk is settled once.)
    Result<void> settle_acks(std::span<Settlement> acks, std::size_t c, std::int64_t now,
                             Settling& done) {
        Stmt& st = opts_history_ ? st_.finish_chunk[c] : st_.ack_chunk[c];
        st.reset();
        const int per_row = opts_history_ ? 4 : 1;
        std::vector<std::uint64_t> seen;  // a tag again in the chunk matches no row (NULL)
        seen.reserve(acks.size());
        for (std::size_t j = 0; j < acks.size(); ++j) {
            const Settlement& s = acks[j];
            const int p = int(j) * per_row + 1;
            if (std::find(seen.begin(), seen.end(), s.tag) != seen.end())
                st.bind_null(p);
            else
                st.bind(p, std::int64_t(s.tag));
            seen.push_back(s.tag);
            if (!opts_history_) continue;
            bool revoked = s.result && s.result->state == TaskState::revoked;
            st.bind(p + 1, revoked ? kRevoked : kSucceeded);
            if (s.attempt)
                st.bind(p + 2, to_epoch_ms(s.attempt->started))
                    .bind(p + 3, to_epoch_ms(s.attempt->finished));
            else
                st.bind_null(p + 2).bind(p + 3, now);
        }
        st.bind(int(acks.size()) * per_row + 1, owner_);
        std::vector<std::int64_t> got;  // the seqs settled
        got.reserve(acks.size());
        for (;;) {
            auto r = st.step();
            CONVEYOR_TRY(r);
            if (!*r) break;
            got.push_back(st.i64(0));
        }
        st.reset();
        std::sort(got.begin(), got.end());
        std::vector<bool> used(got.size());
        for (const Settlement& s : acks) {
            auto it = std::lower_bound(got.begin(), got.end(), std::int64_t(s.tag));
            auto k = std::size_t(it - got.begin());
            if (it == got.end() || *it != std::int64_t(s.tag) || used[k]) continue;
            used[k] = true;
            CONVEYOR_TRY(settled(s, -1, done));
        }
        return {};
    }

    /// What a settled row changes besides itself: its queue's count (`to`: the counted state
    /// it went to; none when negative), room in its bucket, its result, the minute's counts.
    Result<void> settled(const Settlement& s, int to, Settling& done) {
        if (to >= 0) done.counts.add(done.queue, to, 1);  // (in flight: not counted)
        if (auto b = bucket_of_.find(s.tag); b != bucket_of_.end()) done.woken.push_back(b->second);
        if (s.result) {
            CONVEYOR_TRY(store_result(st_, *s.result));
        }
        if (s.attempt && opts_history_) count(s, *s.attempt);
        return {};
    }

    /// One attempt in a task row's `attempts`: {"started","finished","worker","error"} (ms).
    std::string attempt_json(const Settlement::Attempt& a) const {
        return Json{{"started", to_epoch_ms(a.started)},
                    {"finished", to_epoch_ms(a.finished)},
                    {"worker", owner_},
                    {"error", a.error}}
            .dump(-1, ' ', false, Json::error_handler_t::replace);
    }

    /// Per-minute counts: this batch's, added up in memory and written with one upsert per
    /// (minute, queue, task).
    void count(const Settlement& s, const Settlement::Attempt& a) {
        auto it = queue_of_.find(s.tag);
        if (it == queue_of_.end()) return;
        auto finished = to_epoch_ms(a.finished);
        MinuteCount& c = minutes_[{finished / 60000 * 60000, it->second, a.task}];
        switch (s.kind) {
            case Settlement::Kind::ack:
                c.succeeded++;
                break;
            case Settlement::Kind::retry:
                c.failed++;
                c.retried++;
                break;
            case Settlement::Kind::dead_letter:
                c.failed++;
                c.dead++;
                break;
            case Settlement::Kind::release:
                return;
        }
        c.run_ms += finished - to_epoch_ms(a.started);
        if (a.waited >= 0) {
            c.waited++;
            c.wait_ms += std::int64_t(a.waited * 1000.0);
        }
    }
    Result<void> write_minutes() {
        for (auto& [k, c] : minutes_) {
            auto& [minute, queue, name] = k;
            CONVEYOR_TRY(count_minute(st_, minute, queue, name, c));
        }
        return {};
    }

    /// Once a minute: results past result_expires, and finished tasks and per-minute counts
    /// past the history period (or beyond history_max) are deleted, a bounded number at a
    /// time so that no transaction holds the lock for long.
    Result<void> housekeep() {
        auto now = std::chrono::steady_clock::now();
        if (now < next_housekeeping_) return {};
        next_housekeeping_ = now + std::chrono::seconds(60);
        // (Rows deleted again after a power cut, at the next round.)
        return in_transaction(
            db_, st_, [&] { return prune_history(st_, sqlite_); }, Commit::unsynced);
    }

    Result<std::vector<std::uint64_t>> renew() override {
        std::lock_guard db(db_mu_);
        std::vector<std::uint64_t> lost;
        if (held_.empty()) return lost;
        st_.renew.reset();
        st_.renew.bind(1, owner_).bind(2, now_ms() + opts_.lease.count());
        std::unordered_set<std::uint64_t> still;
        for (;;) {
            auto r = st_.renew.step();
            CONVEYOR_TRY(r);
            if (!*r) break;
            still.insert(std::uint64_t(st_.renew.i64(0)));
        }
        // What is not ours any more: the lease ran out and another consumer reclaimed it.
        for (auto it = held_.begin(); it != held_.end();) {
            if (still.contains(*it)) {
                ++it;
            } else {
                lost.push_back(*it);
                queue_of_.erase(*it);
                bucket_of_.erase(*it);
                it = held_.erase(it);
            }
        }
        // Claimed ahead and lost before they were handed out: never handed out.
        if (!lost.empty()) {
            std::unordered_set<std::uint64_t> gone(lost.begin(), lost.end());
            std::lock_guard lk(ahead_mu_);
            std::erase_if(ahead_, [&](const Delivery& d) { return gone.contains(d.tag); });
        }
        return lost;
    }

    Result<void> set_consuming(const std::string& queue, bool consume) override {
        std::lock_guard db(db_mu_);
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
        CONVEYOR_TRY(dv);
        std::int64_t version = st_.data_version.i64(0);
        st_.data_version.reset();
        if (version == last_version_ && now < next_check_) return false;
        // Idle or not, a deleted write-ahead log is noticed within one check period.
        CONVEYOR_TRY(keep_wal(db_, st_));
        last_version_ = version;
        next_check_ = now + std::chrono::milliseconds(200);
        auto wall = now_ms();
        for (auto& q : opts_.queues) {
            st_.probe_ready.reset();
            auto r = st_.probe_ready.bind(1, q).step();
            CONVEYOR_TRY(r);
            st_.probe_ready.reset();
            if (*r) return true;
        }
        for (Stmt* s : {&st_.next_delayed, &st_.next_lease, &st_.next_wake}) {
            s->reset();
            auto r = s->step();
            CONVEYOR_TRY(r);
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

    /// A claimed row, read in the claim's transaction and turned into a delivery after it.
    struct Row {
        std::int64_t seq = 0, available_at = 0, fair = 0;
        std::int64_t taken_us = 0;  // the claim's time (microseconds since the epoch)
        int priority = 0, deliveries = 0;
        std::string id, queue, props, headers, body, name;
        std::string bucket;  // admitted under a concurrency limit: its bucket
    };

    /// The buckets of the tasks held under concurrency limits, once each.
    std::vector<std::string> held_buckets() const {
        std::vector<std::string> out;
        for (auto& [_, b] : bucket_of_)
            if (std::find(out.begin(), out.end(), b) == out.end()) out.push_back(b);
        return out;
    }

    /// Claims up to `max` ready tasks, queue by queue from the one after last time's, each
    /// queue's by priority then age (with db_mu_ held).
    Result<std::vector<Row>> claim_rows(std::size_t max) {
        std::vector<Row> out;
        std::size_t claimed = 0;  // before those waiting on limits were put back
        auto claim = [&]() -> Result<void> {
            out.clear();
            auto now = now_ms();
            CountDeltas counts;
            // Tasks' limits, and what waited on them and may run now back to ready.
            auto limits = read_limits(st_);
            CONVEYOR_TRY(limits);
            CONVEYOR_TRY(wake_limited(st_, *limits, now, counts));
            // Due delayed tasks become ready; leases run out go back.
            for (auto [st, from] : {std::pair{&st_.promote, kDelayed}, {&st_.reclaim, kInFlight}}) {
                st->reset();
                st->bind(1, now);
                for (;;) {
                    auto r = st->step();
                    CONVEYOR_TRY(r);
                    if (!*r) break;
                    counts.move(st->text(0), from, kReady);
                }
            }
            std::size_t n = opts_.queues.size();
            for (std::size_t i = 0; i < n && out.size() < max; ++i) {
                auto& q = opts_.queues[(rr_ + i) % n];
                auto want = std::int64_t(max - out.size());
                st_.pick.reset();
                st_.pick.bind(3, q).bind(4, want);
                auto first = out.size();
                std::int64_t turn = 0;  // the latest turn taken (fair queues)
                for (;;) {
                    auto r = st_.pick.step();
                    CONVEYOR_TRY(r);
                    if (!*r) break;
                    Row row;
                    row.seq = st_.pick.i64(0);
                    row.id = st_.pick.text(1);
                    row.queue = st_.pick.text(2);
                    row.deliveries = int(st_.pick.i64(3));  // as the claim leaves it
                    row.priority = int(st_.pick.i64(4));
                    row.available_at = st_.pick.i64(5);
                    row.name = st_.pick.text(6);
                    row.fair = st_.pick.i64(7);
                    turn = std::max(turn, row.fair);
                    out.push_back(std::move(row));
                }
                if (out.size() == first) continue;
                st_.claim.reset();
                st_.claim.bind(1, owner_)
                    .bind(2, now + opts_.lease.count())
                    .bind(3, q)
                    .bind(4, want)
                    .bind(5, now);
                auto leased = st_.claim.run();
                CONVEYOR_TRY(leased);
                if (std::size_t(*leased) != out.size() - first)
                    return fail(Errc::unavailable,
                                fmt::format("a claim picked {} tasks and leased {}",
                                            out.size() - first, *leased));
                if (turn > 0) {  // a fair queue: the turn its workers have reached
                    st_.fair_taken.reset();
                    CONVEYOR_TRY(st_.fair_taken.bind(1, q).bind(2, turn).run());
                }
            }
            rr_++;
            for (auto& row : out) counts.move(row.queue, kReady, kInFlight);
            // The messages, from their own table (a row without one is delivered empty, and
            // dead-lettered as malformed).
            CONVEYOR_TRY(read_messages(out));
            // Tasks under limits start if their limits let them, else wait in the broker.
            claimed = out.size();
            auto now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                              SystemClock::now().time_since_epoch())
                              .count();
            for (auto& row : out) row.taken_us = now_us;
            if (!limits->empty()) {
                std::vector<Row> admitted;
                RunningCounts running;
                for (auto& row : out) {
                    auto it = limits->find(row.name);
                    if (it != limits->end()) {
                        auto a = admit(st_, it->second, row.seq, row.queue, row.body, now_us,
                                       running, counts);
                        CONVEYOR_TRY(a);
                        if (!a->admitted) continue;
                        if (it->second.max_concurrency > 0) row.bucket = std::move(a->bucket);
                    }
                    admitted.push_back(std::move(row));
                }
                out = std::move(admitted);
            }
            return counts.write(st_);
        };
        // (A claim lost to a power cut is a task delivered again; the settlement's commit,
        // which waits for the disk, takes it along.)
        auto ok = in_transaction(db_, st_, claim, Commit::unsynced);
        CONVEYOR_TRY(ok);
        for (auto& r : out) {
            held_.insert(std::uint64_t(r.seq));
            if (opts_history_) queue_of_[std::uint64_t(r.seq)] = r.queue;
            if (!r.bucket.empty()) bucket_of_[std::uint64_t(r.seq)] = std::move(r.bucket);
        }
        if (claimed == max) next_check_ = {};  // more may be waiting
        return out;
    }

    /// The claimed rows' messages, a chunk of seqs per statement (Statements::kChunks).
    Result<void> read_messages(std::vector<Row>& rows) {
        std::vector<std::pair<std::int64_t, std::size_t>> by_seq;  // (seq, index in rows)
        by_seq.reserve(rows.size());
        for (std::size_t i = 0; i < rows.size(); ++i) by_seq.emplace_back(rows[i].seq, i);
        std::sort(by_seq.begin(), by_seq.end());
        for (std::size_t first = 0; first < by_seq.size();) {
            std::size_t c = 0;
            while (Statements::kChunks[c] > by_seq.size() - first) ++c;
            const auto chunk = std::span(by_seq).subspan(first, Statements::kChunks[c]);
            Stmt& st = st_.read_messages[c];
            st.reset();
            for (std::size_t j = 0; j < chunk.size(); ++j) st.bind(int(j) + 1, chunk[j].first);
            for (;;) {
                auto r = st.step();
                CONVEYOR_TRY(r);
                if (!*r) break;
                auto it = std::lower_bound(chunk.begin(), chunk.end(),
                                           std::pair{st.i64(0), std::size_t(0)});
                if (it == chunk.end() || it->first != st.i64(0)) continue;
                Row& row = rows[it->second];
                row.props = st.text(1);
                row.headers = st.text(2);
                row.body = st.text(3);
            }
            st.reset();
            first += chunk.size();
        }
        return {};
    }

    /// Rows into deliveries (no lock needed): each task decoded from its stored text
    /// (ConsumerOptions::decode), else the stored properties and headers parsed into its
    /// envelope.
    std::vector<Delivery> to_deliveries(std::vector<Row>&& rows) const {
        std::vector<Delivery> out;
        out.reserve(rows.size());
        for (auto& r : rows) {
            Delivery d;
            d.tag = std::uint64_t(r.seq);
            d.message_id = std::move(r.id);
            d.queue = std::move(r.queue);
            d.deliveries = r.deliveries;
            d.task = decoded(r, d.queue);
            if (!d.task) d.envelope = make_envelope(r.props, r.headers, std::move(r.body));
            d.due = detail::from_epoch_ms(r.available_at);
            d.taken = TimePoint(std::chrono::duration_cast<TimePoint::duration>(
                std::chrono::microseconds(r.taken_us)));
            out.push_back(std::move(d));
        }
        return out;
    }

    /// A row's task, decoded from its stored properties and headers as text
    /// (codec::TextHeaders), without JSON trees of them; null where the worker decodes the
    /// envelope instead: a raw queue's message, one delivered before (the worker's delivery
    /// limit comes before decoding it again), one that does not decode (the worker
    /// dead-letters it with the reason), and stored text the flat reader leaves to the tree.
    std::shared_ptr<const TaskMessage> decoded(const Row& r, const std::string& queue) const try {
        if (!opts_.decode || r.deliveries > 1 ||
            std::find(opts_.raw_queues.begin(), opts_.raw_queues.end(), queue) !=
                opts_.raw_queues.end())
            return nullptr;
        // The properties as make_envelope reads them; anything else is left to it. (Copied:
        // the thread's parser is then free for the headers.)
        std::string content_type, correlation_id, reply_to;
        int priority = 0;
        {
            const codec::TextHeaders props(r.props);
            if (!props.is_object()) return nullptr;
            using Kind = codec::HeaderValue::Kind;
            for (auto [field, key] :
                 {std::pair{&content_type, "content_type"},
                  std::pair{&correlation_id, "correlation_id"}, std::pair{&reply_to, "reply_to"}}) {
                auto v = props.find(key);
                if (!v) continue;
                if (v->kind != Kind::string) return nullptr;
                *field = std::string(v->text);
            }
            if (auto v = props.find("priority")) {
                if (v->kind != Kind::unsigned_integer || v->unsigned_integer > 255) return nullptr;
                priority = int(v->unsigned_integer);
            }
        }
        const codec::TextHeaders headers(r.headers);
        if (!headers.readable()) return nullptr;
        auto task = codec::decode(codec::MessageView{.content_type = content_type,
                                                     .correlation_id = correlation_id,
                                                     .reply_to = reply_to,
                                                     .priority = priority,
                                                     .headers = headers,
                                                     .body = r.body},
                                  opts_.max_body);
        if (!task) return nullptr;
        return std::make_shared<const TaskMessage>(std::move(*task));
    } catch (const std::exception&) {
        return nullptr;  // the worker meets it again in the envelope, and dead-letters it
    }

    std::optional<Envelope> message(std::uint64_t tag) const override {
        // As stored: only this consumer, holding the task's lease, changes it. (Through the
        // statement of the connection as it is now: keep_wal may have opened it anew.)
        std::lock_guard db(db_mu_);
        if (!held_.contains(tag)) return std::nullopt;
        auto& read = st_.read_message;
        read.reset();
        auto found = read.bind(1, std::int64_t(tag)).step();
        std::optional<Envelope> m;
        if (found && *found) m = make_envelope(read.text(0), read.text(1), read.text(2));
        read.reset();
        return m;
    }

    /// Up to `max` of the deliveries claimed ahead; the claimer's failure, once.
    Result<std::vector<Delivery>> take_ahead(std::size_t max) {
        std::vector<Delivery> out;
        if (!opts_.read_ahead) return out;
        std::lock_guard lk(ahead_mu_);
        if (ahead_error_) {
            auto e = std::move(*ahead_error_);
            ahead_error_.reset();
            ahead_cv_.notify_all();
            return std::unexpected(std::move(e));
        }
        while (!ahead_.empty() && out.size() < max) {
            out.push_back(std::move(ahead_.front()));
            ahead_.pop_front();
        }
        return out;
    }

    /// After tasks were handed out: the next `max` are claimed ahead, on the claimer thread.
    void ask_ahead(std::size_t max) {
        if (!opts_.read_ahead) return;
        {
            std::lock_guard lk(ahead_mu_);
            if (ahead_stop_) return;  // stop_reading_ahead
            ahead_want_ = max;
        }
        if (!claimer_.joinable()) claimer_ = std::thread([this] { claim_ahead(); });
        ahead_cv_.notify_all();
    }

    /// The claimer thread: claims up to what was asked for while the caller works, and stops
    /// asking once nothing is ready (then fetch's own probing takes over, and asks again when
    /// it finds tasks).
    void claim_ahead() {
        for (;;) {
            std::size_t room = 0;
            {
                std::unique_lock lk(ahead_mu_);
                ahead_cv_.wait(lk, [&] {
                    return ahead_stop_ || (!ahead_error_ && ahead_.size() < ahead_want_);
                });
                if (ahead_stop_) return;
                room = ahead_want_ - ahead_.size();
            }
            Result<std::vector<Row>> rows = std::vector<Row>{};
            {
                std::lock_guard db(db_mu_);
                auto probe = claimable();
                if (!probe)
                    rows = std::unexpected(probe.error());
                else if (*probe)
                    rows = claim_rows(room);
            }
            std::vector<Delivery> got;
            if (rows && !rows->empty()) got = to_deliveries(std::move(*rows));
            {
                std::lock_guard lk(ahead_mu_);
                if (!rows)
                    ahead_error_ = rows.error();  // fetch returns it; the worker backs off
                else if (got.empty())
                    ahead_want_ = 0;
                for (auto& d : got) ahead_.push_back(std::move(d));
            }
        }
    }

    Db db_;
    mutable Statements st_;  // (message() reads through it, under db_mu_)
    ConsumerOptions opts_;
    SqliteOptions sqlite_;
    bool opts_history_;  // finished tasks are kept
    std::string owner_;
    std::unordered_map<std::uint64_t, std::string> queue_of_;  // held tags' queues (history)
    // Held tags' buckets, under concurrency limits: settling one makes room in it.
    std::unordered_map<std::uint64_t, std::string> bucket_of_;
    std::map<std::tuple<std::int64_t, std::string, std::string>, MinuteCount> minutes_;
    std::chrono::steady_clock::time_point next_housekeeping_{};
    std::unordered_set<std::uint64_t> held_;  // claimed and not settled
    std::size_t rr_ = 0;
    std::int64_t last_version_ = -1;
    std::chrono::steady_clock::time_point next_check_{};
    // The connection and everything above are the caller's and the claimer's in turn.
    mutable std::mutex db_mu_;  // (message() reads the connection)
    // Claimed ahead, not handed out yet (read_ahead).
    std::mutex ahead_mu_;
    std::condition_variable ahead_cv_;
    std::deque<Delivery> ahead_;
    std::size_t ahead_want_ = 0;
    std::optional<Error> ahead_error_;
    bool ahead_stop_ = false;
    std::thread claimer_;  // declared last: it stops before anything above goes
};

}  // namespace

Result<std::unique_ptr<Consumer>> open_consumer(const SqliteOptions& sqlite,
                                                const ConsumerOptions& options) {
    if (options.queues.empty())
        return fail(Errc::invalid_argument, "a consumer needs at least one queue");
    auto db = Db::open(sqlite.path, sqlite.synchronous, sqlite.busy_timeout);
    CONVEYOR_TRY(db);
    auto st = Statements::prepare(*db);
    CONVEYOR_TRY(st);
    return std::unique_ptr<Consumer>(
        std::make_unique<SqliteConsumer>(std::move(*db), std::move(*st), options, sqlite));
}

}  // namespace conveyor::sqlite
