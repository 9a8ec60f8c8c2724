// What the benchmark programs share: enqueueing no-op tasks in batches, child processes of the
// program itself, CPU time and resident memory.
#pragma once

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "conveyor/client.hpp"

namespace conveyor::bench {

using Clock = std::chrono::steady_clock;

/// CPU time (user + system) this process has used so far, in µs.
inline double cpu_us() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + double(ru.ru_utime.tv_usec) +
           double(ru.ru_stime.tv_usec);
}

/// Enqueues n no-op tasks to `queues` (round-robin, task i to queue i % size) in batches of up
/// to 1,000 and 4 MB of arguments (one commit each), due at once or after `countdown`; with
/// `payload` > 0 each task carries a string of that many bytes as its argument.
inline void produce(Client& client, int n, const std::vector<std::string>& queues = {"bench"},
                    std::chrono::milliseconds countdown = {}, std::size_t payload = 0) {
    const int batch =
        payload == 0 ? 1000 : int(std::clamp<std::size_t>((4u << 20) / payload, 1, 1000));
    std::string body(payload, 'x');
    for (std::size_t q = 0; q < queues.size(); ++q) {
        // Queue q gets tasks q, q + size, ...: count them, then send them in batches.
        int mine = n / int(queues.size()) + (int(q) < n % int(queues.size()) ? 1 : 0);
        for (int first = 0; first < mine; first += batch) {
            std::vector<TaskMessage> tasks;
            tasks.reserve(std::size_t(std::min(batch, mine - first)));
            for (int i = first; i < std::min(mine, first + batch); ++i)
                tasks.push_back(
                    TaskMessage{.name = "noop",
                                .args = payload == 0 ? Json::array({i}) : Json::array({body}),
                                .ignore_result = true});
            EnqueueOptions o{.queue = queues[q]};
            if (countdown.count() > 0) o.countdown = countdown;
            if (auto ids = client.enqueue_many(std::move(tasks), o); !ids) {
                fmt::print(stderr, "enqueue failed: {}\n", ids.error().message);
                std::exit(1);
            }
        }
    }
}

/// A child process of this program with `args`; its stdin is the pipe returned in `stdin_fd`
/// (children that work until their stdin closes stop when it is closed).
inline pid_t spawn(const std::vector<std::string>& args, int* stdin_fd) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) std::exit(1);  // other children must not hold it open
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[0], 0);
        close(fds[0]);
        close(fds[1]);
        std::vector<char*> argv;
        std::string self = "/proc/self/exe";
        argv.push_back(self.data());
        for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
        argv.push_back(nullptr);
        execv("/proc/self/exe", argv.data());
        _exit(127);
    }
    close(fds[0]);
    *stdin_fd = fds[1];
    return pid;
}

/// A field of /proc/PID/status in MiB ("VmRSS", "VmHWM"); PID 0: this process.
inline double status_mib(pid_t pid, const std::string& field) {
    std::ifstream in(pid == 0 ? std::string("/proc/self/status")
                              : fmt::format("/proc/{}/status", pid));
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(field + ":", 0) == 0)
            return std::atof(line.c_str() + field.size() + 1) / 1024.0;
    return 0;
}

inline double rss_mib() { return status_mib(0, "VmRSS"); }

/// Waits until no task of `queues` is ready or in flight, looking every 20 ms (not more often:
/// counting is the measuring process's work, not the engine's).
inline void wait_until_done(Broker& broker, const std::vector<std::string>& queues) {
    for (;;) {
        auto stats = broker.stats();
        if (!stats) std::exit(1);
        bool done = true;
        for (const auto& q : *stats)
            if (std::ranges::find(queues, q.queue) != queues.end() &&
                (q.ready > 0 || q.in_flight > 0))
                done = false;
        if (done) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

}  // namespace conveyor::bench
