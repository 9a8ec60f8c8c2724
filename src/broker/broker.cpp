// What every engine shares: polling for a result, the answers of engines without chords,
// remote control or schedules.
#include "conveyor/broker.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "conveyor/engine.hpp"
#include "conveyor/history.hpp"

namespace conveyor {

Result<void> BrokerAdmin::pause_queue(std::string_view queue, bool paused) {
    (void)queue;
    (void)paused;
    return fail(Errc::invalid_argument,
                "this engine cannot pause queues (the sqlite engine can; on RabbitMQ, `celery "
                "control cancel_consumer QUEUE` stops the workers that consume it)");
}

Result<TaskResult> ResultStore::wait_result(std::string_view id,
                                            std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pause = std::chrono::milliseconds(1);
    for (;;) {
        auto r = result(id);
        if (!r) return r;
        if (r->ready()) return r;
        auto now = std::chrono::steady_clock::now();
        if (now >= deadline)
            return fail(Errc::timeout,
                        fmt::format("task {} is still {} after the wait", id, to_string(r->state)));
        std::this_thread::sleep_for(
            std::min<std::chrono::steady_clock::duration>(pause, deadline - now));
        pause = std::min(pause * 2, std::chrono::milliseconds(50));
    }
}

Result<void> ResultStore::begin_chord(std::string_view, std::size_t) {
    return fail(Errc::invalid_argument,
                "chords need a result store that counts their parts: sqlite://, or amqp with "
                "?results=redis://HOST:PORT/DB");
}

Result<ChordParts> ResultStore::chord_part_done(std::string_view, int, const TaskResult&) {
    return fail(Errc::invalid_argument,
                "chords need a result store that counts their parts: sqlite://, or amqp with "
                "?results=redis://HOST:PORT/DB");
}

Result<std::unique_ptr<ControlChannel>> Broker::control(std::string_view) {
    return std::unique_ptr<ControlChannel>();
}

namespace {
constexpr std::string_view kHistoryStates[] = {"waiting", "running",   "dead",
                                               "delayed", "succeeded", "revoked"};
}

std::string_view to_string(HistoryState s) noexcept { return kHistoryStates[std::size_t(s)]; }

std::optional<HistoryState> history_state_from_string(std::string_view s) noexcept {
    for (std::size_t i = 0; i < std::size(kHistoryStates); ++i)
        if (kHistoryStates[i] == s) return HistoryState(i);
    return std::nullopt;
}

Result<void> Broker::report_worker(std::string_view, const Json&) { return {}; }

Result<void> Broker::set_limit(const TaskLimit& limit) {
    if (!limit.limited()) return {};  // nothing to remove
    return fail(Errc::invalid_argument,
                fmt::format("task '{}': rate and concurrency limits are kept by the sqlite engine "
                            "and by RabbitMQ with the Redis result backend, not by {}",
                            limit.task, url()));
}

Result<std::vector<LimitStats>> Broker::limits() { return std::vector<LimitStats>{}; }

Result<std::unique_ptr<EventStream>> Broker::events(std::string_view) {
    return fail(Errc::invalid_argument,
                fmt::format("{} has no monitoring events; RabbitMQ has Celery's", url()));
}

Result<std::unique_ptr<TaskHistory>> Broker::history() {
    return fail(Errc::invalid_argument,
                fmt::format("{} keeps no task history; the sqlite engine does", url()));
}

Result<std::string> Broker::publish_unique(const OutgoingMessage&, std::string_view,
                                           std::optional<TimePoint>) {
    return fail(
        Errc::invalid_argument,
        fmt::format("unique tasks are kept by the sqlite engine only, not yet by {}", url()));
}

Result<std::unique_ptr<ScheduleStore>> Broker::schedule_store() {
    return fail(Errc::invalid_argument,
                fmt::format("schedules are kept by the sqlite engine only, not by {}; run "
                            "`conveyor scheduler` with a sqlite:// broker",
                            url()));
}

}  // namespace conveyor
