// What a worker and a scheduler show of themselves over HTTP (--http): Prometheus metrics
// whose values match the tasks run, health and readiness through a worker's life.

#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <filesystem>

#include "conveyor/task.hpp"
#include "support/http.hpp"
#include "support/process.hpp"

using namespace std::chrono_literals;
using conveyor::Json;
using testsupport::eventually;
using testsupport::http_request;
using testsupport::Process;
using testsupport::read_file;
using testsupport::run;
using testsupport::sample;
using testsupport::served_url;
using testsupport::TempDir;
using testsupport::write_file;

namespace {

std::pair<int, std::string> monitoring_cli(const TempDir& dir, std::vector<std::string> args) {
    args.insert(args.begin(), CONVEYOR_CLI);
    return run(args, {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")}, dir.path().string());
}

/// Every sample of an exposition as Prometheus' own Python client parses it:
/// {"name{labels as sorted JSON}": value}.
Json parsed_by_prometheus_client(const TempDir& dir, const std::string& exposition) {
    write_file(dir.file("metrics.txt"), exposition);
    auto [rc, out] = run({"/usr/bin/python3", "-c",
                          "import json, sys\n"
                          "from prometheus_client.parser import text_string_to_metric_families\n"
                          "out = {}\n"
                          "for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n"
                          "    for s in f.samples:\n"
                          "        out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value\n"
                          "print(json.dumps(out))\n",
                          dir.file("metrics.txt")});
    EXPECT_EQ(rc, 0) << out;
    return Json::parse(out, nullptr, false);
}

}  // namespace

TEST(Monitoring, AWorkersMetricsCountTheTasksItRanInThePrometheusFormat) {
    TempDir dir;
    write_file(dir.file("conveyor.toml"), R"(
[[task]]
name = "fine"
exec = "true"
[[task]]
name = "flaky"
exec = ["/bin/false"]
max_retries = 1
retry_backoff = 0.01
[worker]
http = "127.0.0.1:0"
concurrency = 3
)");
    for (int i = 1; i <= 3; ++i)
        ASSERT_EQ(
            monitoring_cli(dir, {"enqueue", "fine", "--id", "fine-" + std::to_string(i)}).first, 0);
    ASSERT_EQ(monitoring_cli(dir, {"enqueue", "flaky", "--id", "flaky-1"}).first, 0);
    ASSERT_EQ(monitoring_cli(dir, {"enqueue", "nobody.runs.this", "--id", "stray-1"}).first, 0);
    Process worker({CONVEYOR_CLI, "worker"}, dir.file("worker.out"),
                   {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")}, dir.path().string());
    std::string url = served_url(dir.file("worker.out"), 20s);
    ASSERT_FALSE(url.empty()) << read_file(dir.file("worker.out"));
    EXPECT_TRUE(url.starts_with("http://127.0.0.1:")) << url;
    std::string text;
    ASSERT_TRUE(eventually(
        [&] {
            auto r = http_request(url, "/metrics");
            text = r.body;
            return r.status == 200 &&
                   sample(text,
                          R"(conveyor_tasks_dead_lettered_total{queue="celery",task="other"})") ==
                       1 &&
                   sample(text,
                          R"(conveyor_tasks_dead_lettered_total{queue="celery",task="flaky"})") ==
                       1 &&
                   sample(text, R"(conveyor_tasks_succeeded_total{queue="celery",task="fine"})") ==
                       3 &&
                   sample(text, R"(conveyor_queue_depth{queue="celery",state="dead"})") == 2;
        },
        20s))
        << text;
    auto r = http_request(url, "/metrics");
    EXPECT_EQ(r.content_type, "text/plain; version=0.0.4; charset=utf-8");
    text = r.body;
    EXPECT_EQ(sample(text, R"(conveyor_tasks_failed_total{queue="celery",task="flaky"})"), 2);
    EXPECT_EQ(sample(text, R"(conveyor_tasks_retried_total{queue="celery",task="flaky"})"), 1);
    EXPECT_EQ(sample(text, R"(conveyor_task_duration_seconds_count{queue="celery",task="fine"})"),
              3);
    EXPECT_EQ(sample(text, R"(conveyor_task_duration_seconds_count{queue="celery",task="flaky"})"),
              2);
    EXPECT_EQ(
        sample(text,
               R"(conveyor_task_duration_seconds_bucket{queue="celery",task="fine",le="+Inf"})"),
        3);
    EXPECT_EQ(sample(text, R"(conveyor_task_wait_seconds_count{queue="celery",task="fine"})"), 3);
    EXPECT_GT(sample(text, R"(conveyor_task_wait_seconds_sum{queue="celery",task="fine"})"), 0);
    EXPECT_EQ(sample(text, "conveyor_worker_concurrency"), 3);
    EXPECT_EQ(sample(text, "conveyor_worker_busy"), 0);
    EXPECT_EQ(sample(text, "conveyor_broker_up"), 1);
    EXPECT_EQ(sample(text, R"(conveyor_queue_depth{queue="celery",state="ready"})"), 0);
    // Never a task id, nor a name the worker does not run, as a label.
    for (auto* id : {"fine-1", "flaky-1", "stray-1", "nobody.runs.this"})
        EXPECT_EQ(text.find(id), std::string::npos) << id;
    // `_total` only on counters.
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);)
        if (line.starts_with("# TYPE ")) {
            bool total = line.find("_total ") != std::string::npos;
            EXPECT_EQ(total, line.ends_with(" counter")) << line;
        }
    // Prometheus' own parser reads the same values.
    Json parsed = parsed_by_prometheus_client(dir, text);
    ASSERT_TRUE(parsed.is_object()) << text;
    EXPECT_EQ(
        parsed.value(R"(conveyor_tasks_succeeded_total{"queue": "celery", "task": "fine"})", -1.0),
        3.0)
        << parsed.dump();
    EXPECT_EQ(
        parsed.value(R"(conveyor_task_duration_seconds_count{"queue": "celery", "task": "flaky"})",
                     -1.0),
        2.0)
        << parsed.dump();
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(20s), 0);
}

TEST(Monitoring, HealthAndReadinessFollowTheWorkersLife) {
    TempDir dir;
    write_file(dir.file("conveyor.toml"), "[[task]]\nname = \"slow\"\nexec = \"sleep 3\"\n");
    ASSERT_EQ(monitoring_cli(dir, {"enqueue", "slow", "--id", "slow-1"}).first, 0);
    Process worker({CONVEYOR_CLI, "worker", "--http", "127.0.0.1:0", "--grace", "20"},
                   dir.file("worker.out"), {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")},
                   dir.path().string());
    std::string url = served_url(dir.file("worker.out"), 20s);
    ASSERT_FALSE(url.empty()) << read_file(dir.file("worker.out"));
    auto health = http_request(url, "/healthz");
    EXPECT_EQ(health.status, 200);
    EXPECT_EQ(health.content_type, "application/json");
    EXPECT_EQ(Json::parse(health.body, nullptr, false).value("status", ""), "ok") << health.body;
    // Ready once its handler threads are up (the listener answers a moment before).
    EXPECT_TRUE(eventually([&] { return http_request(url, "/readyz").status == 200; }, 10s));
    ASSERT_TRUE(eventually(
        [&] { return sample(http_request(url, "/metrics").body, "conveyor_worker_busy") == 1; },
        10s));
    // Shutting down while the slow task runs: not ready any more, still alive.
    worker.signal(SIGTERM);
    auto ready = testsupport::await_status(url, "/readyz", 503, 5s);
    ASSERT_EQ(ready.status, 503) << ready.body;
    auto j = Json::parse(ready.body, nullptr, false);
    EXPECT_EQ(j.value("reason", ""), "shutting down") << ready.body;
    EXPECT_EQ(http_request(url, "/healthz").status, 200);
    // Unknown paths and methods: a JSON error.
    auto missing = http_request(url, "/nothing/here");
    EXPECT_EQ(missing.status, 404);
    EXPECT_TRUE(Json::parse(missing.body, nullptr, false).contains("error")) << missing.body;
    EXPECT_EQ(worker.wait(20s), 0);
    EXPECT_EQ(monitoring_cli(dir, {"result", "slow-1"}).first,
              0);                                        // it finished in the grace period
    EXPECT_EQ(http_request(url, "/healthz").status, 0);  // and the listener is gone
}

TEST(Monitoring, ASchedulerSaysWhetherItLeadsAndCountsItsFires) {
    TempDir dir;
    write_file(dir.file("conveyor.toml"), R"(
[[schedule]]
name = "tick"
task = "noop"
every = 1
)");
    Process scheduler({CONVEYOR_CLI, "scheduler", "--http", "127.0.0.1:0", "--lease", "1"},
                      dir.file("scheduler.out"), {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")},
                      dir.path().string());
    std::string url = served_url(dir.file("scheduler.out"), 20s);
    ASSERT_FALSE(url.empty()) << read_file(dir.file("scheduler.out"));
    std::string text;
    ASSERT_TRUE(eventually(
        [&] {
            text = http_request(url, "/metrics").body;
            return sample(text, "conveyor_scheduler_leading") == 1 &&
                   sample(text, R"(conveyor_schedule_fires_total{schedule="tick"})") >= 2;
        },
        20s))
        << text;
    auto health = http_request(url, "/healthz");
    EXPECT_EQ(health.status, 200);
    auto j = Json::parse(health.body, nullptr, false);
    EXPECT_EQ(j.value("leading", false), true) << health.body;
    EXPECT_EQ(http_request(url, "/readyz").status, 200);
    // What it counted was published.
    auto [rc, queues] = monitoring_cli(dir, {"--json", "queues"});
    ASSERT_EQ(rc, 0) << queues;
    auto q = Json::parse(queues, nullptr, false);
    ASSERT_TRUE(q.is_array() && !q.empty()) << queues;
    EXPECT_GE(q[0].value("ready", 0), 2) << queues;
    scheduler.signal(SIGTERM);
    EXPECT_EQ(scheduler.wait(20s), 0);
}

TEST(Monitoring, ABadListenAddressIsOneSentence) {
    TempDir dir;
    write_file(dir.file("conveyor.toml"), "[[task]]\nname = \"t\"\nexec = \"true\"\n");
    auto [rc, out] = monitoring_cli(dir, {"worker", "--http", "localhost:http"});
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("listen address 'localhost:http' has no port"), std::string::npos) << out;
    write_file(dir.file("conveyor.toml"),
               "[[task]]\nname = \"t\"\nexec = \"true\"\n[worker]\nhttp = \"127.0.0.1:70000\"\n");
    std::tie(rc, out) = monitoring_cli(dir, {"worker"});
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("conveyor.toml"), std::string::npos) << out;
    EXPECT_NE(out.find("no port from 0 to 65535"), std::string::npos) << out;
    // A port another listener holds: the worker says so and stops.
    write_file(dir.file("conveyor.toml"), "[[task]]\nname = \"t\"\nexec = \"true\"\n");
    Process first({CONVEYOR_CLI, "worker", "--http", "127.0.0.1:0"}, dir.file("first.out"),
                  {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")}, dir.path().string());
    std::string url = served_url(dir.file("first.out"), 20s);
    ASSERT_FALSE(url.empty()) << read_file(dir.file("first.out"));
    std::string address = url.substr(std::string("http://").size());
    std::tie(rc, out) = monitoring_cli(dir, {"worker", "--http", address});
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(out.find("cannot listen on " + address), std::string::npos) << out;
    first.signal(SIGTERM);
    EXPECT_EQ(first.wait(20s), 0);
}

TEST(Monitoring, AWorkerWaitingForItsBrokerAnswersItsHealthChecksWith503) {
    TempDir dir;
    write_file(dir.file("conveyor.toml"), "[[task]]\nname = \"t\"\nexec = \"true\"\n");
    // A port nothing listens on: the worker waits, one line per attempt.
    Process worker({CONVEYOR_CLI, "worker", "--http", "127.0.0.1:0"}, dir.file("worker.out"),
                   {"CONVEYOR_BROKER=amqp://guest:guest@127.0.0.1:1/?connect_timeout=1"},
                   dir.path().string());
    auto url = testsupport::served_url(dir.file("worker.out"), 20s);
    ASSERT_FALSE(url.empty()) << read_file(dir.file("worker.out"));
    for (auto* path : {"/healthz", "/readyz"}) {
        auto r = testsupport::http_call(url, "GET", path);
        EXPECT_EQ(r.status, 503) << path << ": " << r.body;
        auto j = Json::parse(r.body, nullptr, false);
        EXPECT_EQ(j.value("status", ""), "waiting for the broker") << r.body;
        EXPECT_NE(j.value("reason", "").find("cannot open broker amqp://guest:***@127.0.0.1:1/"),
                  std::string::npos)
            << r.body;
    }
    worker.signal(SIGTERM);
    EXPECT_TRUE(worker.wait(20s));
}
