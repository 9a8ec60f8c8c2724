#pragma once
// Helpers of the interop tests: the real peers (Debian's python3-celery, php-cli with
// php-amqplib) run as child processes against the suite's RabbitMQ node and redis-server.

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "conveyor/task.hpp"
#include "integration/helpers.hpp"
#include "support/process.hpp"
#include "support/rabbitmq.hpp"
#include "support/redis.hpp"

namespace interop {

using namespace std::chrono_literals;

inline const std::string kPeers = CONVEYOR_SOURCE_DIR "/tests/interop/peers";

/// The last line of `out` that is a JSON object (peers print one; Python may warn before).
/// The shared node's AMQP port.
inline std::string amqp_port() {
    auto url = testsupport::shared_rabbitmq_url();  // amqp://guest:guest@127.0.0.1:PORT/
    auto p = url.substr(url.rfind(':') + 1);
    return p.substr(0, p.find('/'));
}

inline conveyor::Json last_json(const std::string& out) {
    auto end = out.size();
    while (end > 0) {
        auto start = out.rfind('\n', end - 1);
        start = start == std::string::npos ? 0 : start + 1;
        std::string line = out.substr(start, end - start);
        if (!line.empty() && line.front() == '{') {
            auto j = conveyor::Json::parse(line, nullptr, false);
            if (!j.is_discarded()) return j;
        }
        if (start == 0) break;
        end = start - 1;
    }
    ADD_FAILURE() << "no JSON line in peer output:\n" << out;
    return conveyor::Json::object();
}

/// Environment of a Celery peer.
inline std::vector<std::string> celery_env(const std::string& queue, const std::string& backend) {
    return {"INTEROP_BROKER=" + testsupport::shared_rabbitmq_url(), "INTEROP_BACKEND=" + backend,
            "INTEROP_QUEUE=" + queue, "PYTHONDONTWRITEBYTECODE=1"};
}

/// Runs a Celery client scenario (tests/interop/peers/celery_client.py) to completion.
inline conveyor::Json celery_client(std::vector<std::string> args, const std::string& queue,
                                    const std::string& backend) {
    std::vector<std::string> argv = {"/usr/bin/python3", kPeers + "/celery_client.py"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto [rc, out] = testsupport::run(argv, celery_env(queue, backend), kPeers, 120s);
    EXPECT_EQ(rc, 0) << out;
    return last_json(out);
}

/// An unmodified Celery worker (`celery -A interop_app worker`) on `queue`, until the end of
/// the scope.
class CeleryWorker {
  public:
    CeleryWorker(const std::string& queue, const std::string& backend,
                 std::vector<std::string> extra = {})
        : node_("py-" + std::to_string(getpid()) + "-" + queue + "@localhost") {
        std::vector<std::string> argv = {"/usr/bin/python3",
                                         "-m",
                                         "celery",
                                         "-A",
                                         "interop_app",
                                         "worker",
                                         "-c",
                                         "2",
                                         "-Q",
                                         queue,
                                         "-n",
                                         node_,
                                         "--loglevel",
                                         "INFO",
                                         "--without-mingle",
                                         "--without-gossip"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        proc_ = std::make_unique<testsupport::Process>(argv, log_.file("celery.log"),
                                                       celery_env(queue, backend), kPeers);
    }
    ~CeleryWorker() {
        proc_->signal(SIGTERM);
        if (!proc_->wait(15s)) proc_->signal(SIGKILL);
    }
    /// Waits until the worker says it is ready.
    bool ready(std::chrono::milliseconds timeout = 60s) {
        return testsupport::eventually([&] { return log().find("ready.") != std::string::npos; },
                                       timeout);
    }
    std::string log() const { return testsupport::read_file(log_.file("celery.log")); }
    const std::string& node() const { return node_; }

  private:
    std::string node_;
    testsupport::TempDir log_;
    std::unique_ptr<testsupport::Process> proc_;
};

}  // namespace interop
