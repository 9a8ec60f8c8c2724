#include "broker/sqlite/sqlite_limits.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "core/try.hpp"

namespace conveyor::sqlite {

namespace {

/// Microseconds between two starts under a rate limit (at least one).
std::int64_t interval_us(double rate) {
    return std::max<std::int64_t>(1, std::llround(1e6 / rate));
}

/// How early a take may come before its turn: none up to 1,000 a second (each take 1/rate s
/// after the one before, so never more than `rate` in any second); 1 ms above, so that a claim
/// of a batch takes a millisecond's worth at once (at most rate + rate/1000 + 1 in a second).
std::int64_t tolerance_us(double rate) { return interval_us(rate) < 1000 ? 1000 : 0; }

/// A wake time in milliseconds for a time in microseconds (not before it).
std::int64_t wake_ms(std::int64_t at_us) { return (at_us + 999) / 1000; }

/// The first bucket name of a task and the first after its last (for a range scan).
std::pair<std::string, std::string> bucket_range(std::string_view task) {
    return {std::string(task) + '\x1f', std::string(task) + '\x20'};
}

}  // namespace

Result<Limits> read_limits(Statements& st) {
    Limits out;
    st.read_limits.reset();
    for (;;) {
        auto r = st.read_limits.step();
        CONVEYOR_TRY(r);
        if (!*r) break;
        TaskLimit l;
        l.task = st.read_limits.text(0);
        l.rate = st.read_limits.f64(1);
        l.max_concurrency = int(st.read_limits.i64(2));
        l.key = st.read_limits.text(3);
        if (l.limited()) out.emplace(l.task, std::move(l));
    }
    st.read_limits.reset();
    return out;
}

Result<void> wake_limited(Statements& st, const Limits& limits, std::int64_t now_ms,
                          CountDeltas& counts) {
    std::vector<std::pair<std::string, std::string>> due;  // bucket, task
    st.wake_due.reset();
    st.wake_due.bind(1, now_ms);
    for (;;) {
        auto r = st.wake_due.step();
        CONVEYOR_TRY(r);
        if (!*r) break;
        due.emplace_back(st.wake_due.text(0), st.wake_due.text(1));
    }
    st.wake_due.reset();
    for (auto& [bucket, task] : due) {
        std::int64_t n = -1;  // all of them (LIMIT -1): the task has no limit any more
        if (auto it = limits.find(task); it != limits.end()) {
            const TaskLimit& l = it->second;
            n = std::numeric_limits<std::int64_t>::max();
            // Those the next takes are for: one, or a millisecond's worth above 1,000/s.
            if (l.rate > 0) n = 1 + tolerance_us(l.rate) / interval_us(l.rate);
            if (l.max_concurrency > 0) {
                st.bucket_running.reset();
                st.bucket_running.bind(1, bucket).bind(2, l.max_concurrency);
                auto running = first_i64(st.bucket_running);
                CONVEYOR_TRY(running);
                n = std::min(n, std::max<std::int64_t>(0, l.max_concurrency - *running));
            }
        }
        if (n != 0) {
            st.release_limited.reset();
            st.release_limited.bind(1, bucket).bind(2, n);
            for (;;) {
                auto r = st.release_limited.step();
                CONVEYOR_TRY(r);
                if (!*r) break;
                counts.move(st.release_limited.text(0), kLimited, kReady);
            }
            st.release_limited.reset();
        }
        st.clear_wake.reset();
        CONVEYOR_TRY(st.clear_wake.bind(1, bucket).run());
    }
    return {};
}

Result<Admission> admit(Statements& st, const TaskLimit& limit, std::int64_t seq,
                        std::string_view queue, std::string_view body, std::int64_t now_us,
                        RunningCounts& running, CountDeltas& counts) {
    Admission a;
    a.bucket = limit.task + '\x1f' +
               (limit.key.empty() ? std::string() : limit_key_of_body(limit.key, body));
    std::int64_t next_at = 0;  // the earliest start the rate limit allows
    if (limit.rate > 0) {
        st.bucket_next.reset();
        st.bucket_next.bind(1, a.bucket);
        auto n = first_i64(st.bucket_next);
        CONVEYOR_TRY(n);
        next_at = *n;
    }
    bool rate_ok = limit.rate <= 0 || now_us + tolerance_us(limit.rate) >= next_at;
    bool room = true;
    std::int64_t* counted = nullptr;  // the bucket's running tasks, as this claim counts them
    if (rate_ok && limit.max_concurrency > 0) {
        auto [it, first] = running.try_emplace(a.bucket, 0);
        if (first) {
            st.bucket_running.reset();
            st.bucket_running.bind(1, a.bucket).bind(2, limit.max_concurrency);
            auto n = first_i64(st.bucket_running);
            CONVEYOR_TRY(n);
            it->second = *n;
        }
        counted = &it->second;
        room = *counted < limit.max_concurrency;
    }
    if (rate_ok && room) {
        st.set_bucket.reset();
        CONVEYOR_TRY(st.set_bucket.bind(1, seq).bind(2, a.bucket).run());
        if (counted) ++*counted;
        if (limit.rate > 0) {
            std::int64_t next = std::max(next_at, now_us) + interval_us(limit.rate);
            // Tasks waiting in the bucket are looked at again when the next start is allowed.
            st.bucket_waits.reset();
            st.bucket_waits.bind(1, a.bucket);
            auto waits = first_i64(st.bucket_waits);
            CONVEYOR_TRY(waits);
            st.bucket_started.reset();
            st.bucket_started.bind(1, a.bucket).bind(2, limit.task).bind(3, next);
            if (*waits)
                st.bucket_started.bind(4, wake_ms(next - tolerance_us(limit.rate)));
            else
                st.bucket_started.bind_null(4);
            CONVEYOR_TRY(st.bucket_started.run());
        }
        return a;
    }
    a.admitted = false;
    st.park.reset();
    CONVEYOR_TRY(st.park.bind(1, seq).bind(2, a.bucket).run());
    counts.add(queue, kLimited, 1);  // (from in flight: not counted)
    if (!rate_ok) {
        st.wake_bucket.reset();
        CONVEYOR_TRY(st.wake_bucket.bind(1, a.bucket)
                         .bind(2, limit.task)
                         .bind(3, wake_ms(next_at - tolerance_us(limit.rate)))
                         .run());
    } else {
        // Full: woken when one of its tasks is settled (wake_buckets).
        st.ensure_bucket.reset();
        CONVEYOR_TRY(st.ensure_bucket.bind(1, a.bucket).bind(2, limit.task).run());
    }
    return a;
}

Result<void> wake_buckets(Statements& st, std::span<const std::string> buckets,
                          std::int64_t now_ms) {
    for (auto& b : buckets) {
        st.wake_now.reset();
        CONVEYOR_TRY(st.wake_now.bind(1, b).bind(2, now_ms).run());
    }
    return {};
}

Result<void> store_limit(Db& db, const TaskLimit& limit) {
    if (limit.limited()) {
        auto up = db.prepare(
            "INSERT OR REPLACE INTO limits(task, rate, max_running, key) VALUES(?1, ?2, ?3, ?4)");
        CONVEYOR_TRY(up);
        up->bind(1, limit.task)
            .bind(2, limit.rate)
            .bind(3, limit.max_concurrency)
            .bind(4, limit.key);
        CONVEYOR_TRY(up->run());
    } else {
        auto del = db.prepare("DELETE FROM limits WHERE task=?1");
        CONVEYOR_TRY(del);
        CONVEYOR_TRY(del->bind(1, limit.task).run());
    }
    // What waits on the old limits is looked at again under the new ones.
    auto wake = db.prepare("UPDATE limit_buckets SET wake_at=?2 WHERE task=?1");
    CONVEYOR_TRY(wake);
    CONVEYOR_TRY(wake->bind(1, limit.task).bind(2, now_ms()).run());
    return {};
}

Result<std::vector<LimitStats>> limit_stats(Db& db) {
    std::vector<LimitStats> out;
    auto q = db.prepare("SELECT task, rate, max_running, key FROM limits ORDER BY task");
    CONVEYOR_TRY(q);
    auto waiting = db.prepare(
        "SELECT count(*) FROM tasks WHERE state=6 AND bucket>=?1 AND "
        "bucket<?2");
    CONVEYOR_TRY(waiting);
    auto running = db.prepare(
        "SELECT count(*) FROM tasks WHERE state=1 AND bucket IS NOT NULL AND bucket>=?1 AND "
        "bucket<?2");
    CONVEYOR_TRY(running);
    for (;;) {
        auto r = q->step();
        CONVEYOR_TRY(r);
        if (!*r) break;
        LimitStats s;
        s.limit.task = q->text(0);
        s.limit.rate = q->f64(1);
        s.limit.max_concurrency = int(q->i64(2));
        s.limit.key = q->text(3);
        auto [from, to] = bucket_range(s.limit.task);
        waiting->reset();
        waiting->bind(1, from).bind(2, to);
        auto w = first_i64(*waiting);
        CONVEYOR_TRY(w);
        s.waiting = *w;
        running->reset();
        running->bind(1, from).bind(2, to);
        auto n = first_i64(*running);
        CONVEYOR_TRY(n);
        s.running = *n;
        out.push_back(std::move(s));
    }
    return out;
}

}  // namespace conveyor::sqlite
