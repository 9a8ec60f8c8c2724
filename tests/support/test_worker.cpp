// A worker process with in-process test handlers, used by the multi-process system tests.
// usage: test_worker BROKER_URL QUEUES CONCURRENCY LEASE_MS GRACE_MS LOG_FILE [PREFETCH]
// Every handler start is appended to LOG_FILE as "start <task id> <pid>", every finish as
// "done <task id> <pid>", so tests can count executions across processes.

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include "conveyor/config.hpp"
#include "conveyor/log.hpp"
#include "conveyor/worker.hpp"

namespace {

conveyor::Worker* g_worker = nullptr;
int g_log = -1;

void on_signal(int) {
    if (g_worker) g_worker->stop();
}

void log_line(const std::string& line) {
    std::string l = line + "\n";
    // O_APPEND writes below PIPE_BUF are atomic across processes.
    (void)!write(g_log, l.data(), l.size());
}

}  // namespace

int main(int argc, char** argv) {
    using namespace conveyor;
    // What the library has to say, on stderr as the command does.
    set_log_sink([](const LogRecord& r) {
        auto line = format_log_text(r) + "\n";
        (void)!write(2, line.data(), line.size());
    });
    if (argc < 7) {
        fmt::print(
            stderr,
            "usage: test_worker BROKER QUEUES CONCURRENCY LEASE_MS GRACE_MS LOG [PREFETCH]\n");
        return 2;
    }
    auto broker = Broker::open(argv[1]);
    if (!broker) {
        fmt::print(stderr, "test_worker: {}\n", broker.error().message);
        return 1;
    }
    // CONVEYOR_CONFIG: a conveyor.toml whose topology (ordered queues, ...) and [[task]]
    // tables the worker uses.
    std::optional<Config> config;
    if (const char* path = std::getenv("CONVEYOR_CONFIG"); path && *path) {
        auto cfg = load_config(path);
        if (!cfg) {
            fmt::print(stderr, "test_worker: {}\n", cfg.error().message);
            return 2;
        }
        config = *cfg;
        if (auto ok = (*broker)->set_topology(cfg->topology()); !ok) {
            fmt::print(stderr, "test_worker: {}\n", ok.error().message);
            return 2;
        }
    }
    g_log = open(argv[6], O_WRONLY | O_CREAT | O_APPEND, 0644);
    WorkerOptions o;
    o.queues.clear();
    std::string qs = argv[2];
    for (std::size_t s = 0; s <= qs.size();) {
        auto c = qs.find(',', s);
        o.queues.push_back(qs.substr(s, c == std::string::npos ? std::string::npos : c - s));
        if (c == std::string::npos) break;
        s = c + 1;
    }
    o.concurrency = std::atoi(argv[3]);
    o.lease = std::chrono::milliseconds(std::atoi(argv[4]));
    o.shutdown_grace = std::chrono::milliseconds(std::atoi(argv[5]));
    if (argc > 7) o.prefetch = std::size_t(std::atoi(argv[7]));
    o.name = fmt::format("test-worker-{}", getpid());
    if (const char* http = std::getenv("CONVEYOR_TEST_HTTP"); http && *http) o.http = http;
    Worker worker(*broker, o);
    auto pid = getpid();
    // "noop": returns its first argument. "sleep": sleeps args[0] ms (honouring stop).
    worker.handle("test.noop", [&](TaskContext& c) -> Json {
        log_line(fmt::format("start {} {} {}", c.id(), pid, c.queue()));
        log_line(fmt::format("done {} {} {}", c.id(), pid, c.queue()));
        return c.args().empty() ? Json() : c.args()[0];
    });
    // "ordered": args [key, seq, sleep_ms]; logs "done ID PID QUEUE KEY SEQ".
    worker.handle("test.ordered", [&](TaskContext& c) -> Json {
        auto key = c.args()[0].get<std::string>();
        auto seq = c.args()[1].get<int>();
        log_line(fmt::format("start {} {} {} {} {}", c.id(), pid, c.queue(), key, seq));
        std::this_thread::sleep_for(std::chrono::milliseconds(c.args()[2].get<int>()));
        log_line(fmt::format("done {} {} {} {} {}", c.id(), pid, c.queue(), key, seq));
        return seq;
    });
    worker.handle("test.sleep", [&](TaskContext& c) -> Json {
        log_line(fmt::format("start {} {}", c.id(), pid));
        auto until =
            std::chrono::steady_clock::now() + std::chrono::milliseconds(c.args()[0].get<int>());
        while (std::chrono::steady_clock::now() < until) {
            if (c.stop_requested()) throw TaskError("Stopped", "stop requested");
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        log_line(fmt::format("done {} {}", c.id(), pid));
        return pid;
    });
    // "timed": sleeps args[0] ms; logs "start|done ID PID MICROSECONDS KEY TAKEN" (wall clock,
    // the key being kwargs["key"] or "-", TAKEN when the broker handed it over, in
    // microseconds, 0 where the engine does not say), for tests of limits across processes.
    worker.handle("test.timed", [&](TaskContext& c) -> Json {
        auto now_us = [] {
            return std::chrono::duration_cast<std::chrono::microseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                .count();
        };
        std::string key = c.kwargs().is_object() && c.kwargs().contains("key")
                              ? c.kwargs()["key"].get<std::string>()
                              : "-";
        auto taken = c.taken() ? std::chrono::duration_cast<std::chrono::microseconds>(
                                     c.taken()->time_since_epoch())
                                     .count()
                               : 0;
        log_line(fmt::format("start {} {} {} {} {}", c.id(), pid, now_us(), key, taken));
        std::this_thread::sleep_for(std::chrono::milliseconds(c.args()[0].get<int>()));
        log_line(fmt::format("done {} {} {} {} {}", c.id(), pid, now_us(), key, taken));
        return pid;
    });
    // The config's [[task]] tables: limits across the fleet, retries, ...
    if (config) worker.configure(*config);
    g_worker = &worker;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    log_line(fmt::format("ready {}", pid));
    auto r = worker.run();
    g_worker = nullptr;
    if (!r) {
        fmt::print(stderr, "test_worker: {}\n", r.error().message);
        return 1;
    }
    log_line(fmt::format("exit {}", pid));
    return 0;
}
