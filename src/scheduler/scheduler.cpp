#include "conveyor/scheduler.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <thread>

#include "client/outgoing.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/log.hpp"
#include "core/codec.hpp"
#include "core/lifecycle.hpp"
#include "core/node.hpp"
#include "core/time.hpp"
#include "core/try.hpp"
#include "scheduler/scheduler_monitoring.hpp"

namespace conveyor {

namespace {

using namespace std::chrono;

/// Every fire of `s` in (after, until], at most `limit` of the newest. The cron expression is
/// parsed once; an interval starts just before its newest `limit` fires instead of walking
/// through a long downtime.
std::vector<TimePoint> due_fires(const ScheduleSpec& s, TimePoint after, TimePoint until,
                                 std::size_t limit) {
    std::optional<CronExpr> cron;
    if (!s.every) {
        auto c = CronExpr::parse(s.cron);
        if (!c) return {};
        cron = std::move(*c);
    } else {
        auto period = duration_cast<SystemClock::duration>(duration<double>(*s.every));
        auto newest = until - period * std::int64_t(limit + 1);
        if (newest > after) after = newest;
    }
    auto next = [&](TimePoint t) { return cron ? cron->next(t, s.timezone) : s.next_fire(t); };
    std::deque<TimePoint> out;
    TimePoint t = after;
    for (std::size_t guard = 0; guard < 10'000'000; ++guard) {
        auto n = next(t);
        if (!n || *n > until) break;
        out.push_back(*n);
        if (out.size() > limit) out.pop_front();
        t = *n;
    }
    return {out.begin(), out.end()};
}

}  // namespace

Scheduler::Scheduler(std::shared_ptr<Broker> broker, SchedulerOptions options)
    : broker_(std::move(broker)),
      opts_(std::move(options)),
      life_(std::make_unique<detail::Lifecycle>()),
      mon_(std::make_unique<Monitoring>()) {
    if (opts_.name.empty()) opts_.name = detail::process_name();
}

Scheduler::~Scheduler() {
    stop_ = true;
    (void)life_->wait(std::nullopt, "the scheduler");
    life_->join();
}

Result<void> Scheduler::run() {
    return life_->run("the scheduler", [this] { return loop(); });
}

Result<void> Scheduler::start() {
    return life_->start("the scheduler", [this] { return loop(); });
}

Result<void> Scheduler::wait(std::optional<std::chrono::milliseconds> timeout) {
    return life_->wait(timeout, "the scheduler");
}

Result<std::vector<ScheduleStatus>> Scheduler::status(ScheduleStore& store,
                                                      const std::vector<ScheduleSpec>& configured) {
    std::vector<ScheduleStatus> out;
    for (auto& s : configured) out.push_back(ScheduleStatus{s, "config", {}, {}, {}});
    auto overrides = store.overrides();
    CONVEYOR_TRY(overrides);
    for (auto& j : overrides->added) {
        auto s = ScheduleSpec::from_json(j);
        if (!s) continue;  // written by a newer version: not ours to run
        if (std::any_of(out.begin(), out.end(),
                        [&](const ScheduleStatus& o) { return o.spec.name == s->name; }))
            continue;  // the configuration wins
        out.push_back(ScheduleStatus{*s, "cli", {}, {}, {}});
    }
    std::vector<std::string> names;
    for (auto& st : out) names.push_back(st.spec.name);
    auto last = store.last_fires(names);
    CONVEYOR_TRY(last);
    auto now = SystemClock::now();
    for (auto& st : out) {
        if (auto p = overrides->paused.find(st.spec.name); p != overrides->paused.end())
            st.spec.paused = p->second;
        if (auto l = last->find(st.spec.name); l != last->end()) {
            st.last_fire = l->second.last_fire;
            st.last_run = l->second.last_run;
        }
        if (auto n = st.spec.next_fire(std::max(now, st.last_fire.value_or(now))))
            st.next_fire = *n;
    }
    return out;
}

Result<void> Scheduler::tick(ScheduleStore& store) {
    auto led = store.lead(opts_.name, opts_.lease);
    CONVEYOR_TRY(led);
    if (!*led) {
        if (leading_)
            detail::log(LogLevel::warning, "scheduler.not_leading",
                        fmt::format("scheduler {}: no longer leading", opts_.name));
        leading_ = false;
        return {};
    }
    if (!leading_)
        detail::log(LogLevel::info, "scheduler.leading",
                    fmt::format("scheduler {}: leading", opts_.name));
    leading_ = true;

    auto statuses = status(store, opts_.schedules);
    CONVEYOR_TRY(statuses);
    auto now = SystemClock::now();
    std::vector<ScheduleFire> fires;
    for (auto& st : *statuses) {
        const ScheduleSpec& s = st.spec;
        if (!st.last_fire) {
            // First sight: start counting from now (fires before it were never due to anyone).
            fires.push_back(ScheduleFire{s.name, now, std::nullopt});
            continue;
        }
        if (s.paused) {
            // Paused: its fires pass unfired; resuming starts from then, not from the past.
            fires.push_back(ScheduleFire{s.name, now, std::nullopt});
            continue;
        }
        auto window = duration_cast<SystemClock::duration>(duration<double>(s.catch_up_window));
        std::size_t keep = s.catch_up == "all" ? std::size_t(std::max(1, s.catch_up_limit)) : 1;
        // Recent fires (within the catch-up window) always run; older ones per the policy.
        auto recent_from = std::max(*st.last_fire, now - window);
        auto old = recent_from > *st.last_fire ? due_fires(s, *st.last_fire, recent_from, keep)
                                               : std::vector<TimePoint>{};
        auto recent = due_fires(s, recent_from, now, 100000);
        std::vector<TimePoint> run;
        if (s.catch_up != "skip") run.insert(run.end(), old.begin(), old.end());
        run.insert(run.end(), recent.begin(), recent.end());
        TimePoint latest = *st.last_fire;
        if (!old.empty()) latest = std::max(latest, old.back());
        if (!recent.empty()) latest = std::max(latest, recent.back());
        if (latest == *st.last_fire) continue;  // nothing due
        if (s.overlap == "skip" && !run.empty() && st.last_run) {
            // The previous run still waits or runs: skip these fires rather than pile up.
            auto prev = broker_->result(schedule_fire_id(s.name, *st.last_run));
            if (prev && !prev->ready()) run.clear();
        }
        for (auto at : run) {
            TaskMessage t;
            t.id = schedule_fire_id(s.name, at);
            t.name = s.task;
            t.args = s.args;
            t.kwargs = s.kwargs;
            if (s.priority) t.priority = *s.priority;
            t.root_id = t.id;
            t.extra_headers = {{"x-conveyor-schedule", s.name},
                               {"x-conveyor-scheduled-at", detail::format_iso8601(at)},
                               {"x-conveyor-fired-at", detail::format_iso8601(now)}};
            detail::Destination to;
            to.queue = !s.queue.empty()  ? s.queue
                       : opts_.queue_for ? opts_.queue_for(s.task)
                                         : std::string(kDefaultQueue);
            auto m = detail::make_outgoing(std::move(t), to);
            CONVEYOR_TRY(m);
            fires.push_back(ScheduleFire{s.name, at, std::move(*m)});
        }
        if (run.empty() || run.back() != latest)
            fires.push_back(ScheduleFire{s.name, latest, std::nullopt});
    }
    if (fires.empty()) return {};
    auto ok = store.fire(opts_.name, fires);
    CONVEYOR_TRY(ok);
    if (!*ok) {
        leading_ = false;
        return {};
    }
    std::lock_guard lk(mon_->mu);
    for (auto& f : fires)
        if (f.message) mon_->fired[f.schedule]++;
    return {};
}

Result<void> Scheduler::loop() {
    auto store = broker_->schedule_store();
    CONVEYOR_TRY(store);
    for (auto& s : opts_.schedules) CONVEYOR_TRY(s.validate());
    CONVEYOR_TRY(start_http());
    std::string last_error;
    while (!stop_) {
        auto started = steady_clock::now();
        if (auto ok = tick(**store); !ok) {
            if (ok.error().message != last_error)
                detail::log(
                    LogLevel::warning, "scheduler.retrying",
                    fmt::format("scheduler {}: {}; retrying", opts_.name, ok.error().message));
            last_error = ok.error().message;
            leading_ = false;
            std::lock_guard lk(mon_->mu);
            mon_->trouble = ok.error().message;
        } else {
            last_error.clear();
            std::lock_guard lk(mon_->mu);
            mon_->trouble.reset();
        }
        auto until = started + opts_.tick;
        while (!stop_ && steady_clock::now() < until) std::this_thread::sleep_for(milliseconds(10));
    }
    if (leading_) (void)(*store)->resign(opts_.name);
    leading_ = false;
    stop_http();
    return {};
}

}  // namespace conveyor
