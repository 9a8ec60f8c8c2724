// What every engine shares: polling for a result, the answers of engines without chords,
// remote control or schedules.
#include "conveyor/broker.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "conveyor/engine.hpp"

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

Result<std::unique_ptr<ScheduleStore>> Broker::schedule_store() {
    return fail(Errc::invalid_argument,
                fmt::format("schedules are kept by the sqlite engine only, not by {}; run "
                            "`conveyor scheduler` with a sqlite:// broker",
                            url()));
}

}  // namespace conveyor
