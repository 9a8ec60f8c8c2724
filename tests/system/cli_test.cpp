// The conveyor command, run as a user would.

#include <gtest/gtest.h>
#include <signal.h>

#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "conveyor/config.hpp"
#include "conveyor/task.hpp"
#include "support/process.hpp"

using namespace std::chrono_literals;
using conveyor::Json;
using testsupport::run;
using testsupport::TempDir;

namespace {

std::pair<int, std::string> cli(const TempDir& dir, std::vector<std::string> args) {
    args.insert(args.begin(), CONVEYOR_CLI);
    return run(args, {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")}, dir.path().string());
}

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

}  // namespace

TEST(Cli, EnqueueWorkerResultQueuesAndDeadLetters) {
    TempDir dir;
    testsupport::write_file(dir.file("conveyor.toml"), R"(
[[queue]]
name = "billing"
[[task]]
name = "orders.bill"
queue = "billing"
exec = "read t; echo \"{\\\"billed\\\": $CONVEYOR_ATTEMPT}\""
[[task]]
name = "orders.poison"
queue = "billing"
exec = ["/bin/false"]
max_retries = 1
retry_backoff = 0.01
)");
    auto [c1, id] = cli(dir, {"enqueue", "orders.bill", "--kwargs", R"({"order": 1})"});
    ASSERT_EQ(c1, 0) << id;
    id = trim(id);
    EXPECT_EQ(id.size(), 36u);
    auto [c2, poison] = cli(dir, {"enqueue", "orders.poison", "--id", "poison-1"});
    ASSERT_EQ(c2, 0) << poison;
    auto [c3, table] = cli(dir, {"queues"});
    ASSERT_EQ(c3, 0);
    EXPECT_NE(table.find("billing"), std::string::npos);
    auto [c4, js] = cli(dir, {"--json", "queues"});
    ASSERT_EQ(c4, 0) << js;
    EXPECT_EQ(Json::parse(js)[0]["ready"], 2);

    testsupport::Process worker(
        {CONVEYOR_CLI, "worker", "--concurrency", "2"}, dir.file("worker.out"),
        {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")}, dir.path().string());
    auto [c5, res] = cli(dir, {"result", id, "--wait", "20"});
    ASSERT_EQ(c5, 0) << res;
    auto j = Json::parse(res);
    EXPECT_EQ(j["state"], "SUCCESS");
    EXPECT_EQ(j["result"], Json({{"billed", 1}}));
    auto [c6, pres] = cli(dir, {"result", "poison-1", "--wait", "20"});
    ASSERT_EQ(c6, 0) << pres;
    EXPECT_EQ(Json::parse(pres)["state"], "FAILURE");
    auto [c7, dl] = cli(dir, {"--json", "dlq", "list", "--queue", "billing"});
    ASSERT_EQ(c7, 0) << dl;
    auto dlj = Json::parse(dl);
    ASSERT_EQ(dlj.size(), 1u);
    EXPECT_EQ(dlj[0]["id"], "poison-1");
    EXPECT_NE(dlj[0]["reason"].get<std::string>().find("failed after 1 retries"),
              std::string::npos);
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(10s), 0);
    auto [c8, rp] = cli(dir, {"dlq", "replay", "--queue", "billing"});
    ASSERT_EQ(c8, 0);
    EXPECT_NE(rp.find("replayed 1"), std::string::npos);
    auto [c9, pr] = cli(dir, {"--json", "queues"});
    EXPECT_EQ(Json::parse(pr)[0]["ready"], 1);
    auto [c10, rs] = cli(dir, {"result", "poison-1"});
    EXPECT_EQ(Json::parse(rs)["state"], "PENDING");
    auto [c11, pg] = cli(dir, {"dlq", "purge", "--queue", "billing"});
    EXPECT_EQ(c11, 0);
}

TEST(Cli, MistakesGetOneSentenceAndANonZeroExit) {
    TempDir dir;
    struct Case {
        std::vector<std::string> args;
        int code;
        const char* says;
    };
    std::vector<Case> cases = {
        {{"enqueue", "t", "--args", "[1,"}, 2, "--args is not valid JSON"},
        {{"enqueue", "t", "--args", "{}"}, 2, "must be a JSON array"},
        {{"enqueue", "t", "--kwargs", "[]"}, 2, "must be a JSON object"},
        {{"enqueue", "t", "--countdown", "5", "--eta", "2030-01-01T00:00:00Z"}, 2, "excludes"},
        {{"enqueue", "t", "--eta", "soon"}, 2, "not an ISO-8601 time"},
        {{"enqueue", "t", "--priority", "300"}, 2, "priority"},
        {{"enqueue"}, 2, "TASK"},
        {{"frobnicate"}, 2, "frobnicate"},
        {{"--broker", "postgres://x", "queues"}, 2, "unsupported broker scheme"},
        {{"--broker", "sqlite:///nonexistent-dir/x/c.db", "queues"}, 1, "cannot open"},
        {{"--config", "/nonexistent.toml", "queues"}, 2, "cannot read config file"},
        {{"result", "some-id", "--wait", "0.2"}, 3, "did not finish"},
        {{"worker"}, 2, "no task has a handler"},
        {{"enqueue", "t", "--unique-for", "5"}, 2, "--unique-key"},
        {{"enqueue", "t", "--unique-key", "k", "--unique-for", "-1"}, 2, "--unique-for"},
        {{"limits", "set", "t", "--rate", "fast"}, 2, "rate limit 'fast' is not N/s"},
        {{"limits", "set", "t"}, 2, "give --rate or --max-concurrency"},
        {{"limits", "set", "t", "--rate", "1/s", "--key", "body"}, 2, "limit key 'body'"},
        {{"limits", "set", "t", "--max-concurrency", "-1"}, 2, "--max-concurrency"},
        {{"--broker", "memory://", "limits", "set", "t", "--rate", "1/s"},
         2,
         "kept by the sqlite engine and by RabbitMQ with the Redis result backend, not by"},
    };
    for (auto& c : cases) {
        auto [code, out] = cli(dir, c.args);
        EXPECT_EQ(code, c.code) << c.args[0] << ": " << out;
        EXPECT_NE(out.find(c.says), std::string::npos) << out;
        EXPECT_NE(out.find("conveyor: "), std::string::npos) << out;
    }
    testsupport::write_file(dir.file("bad.toml"), "[[task]]\nname = \"t\"\ntimeout = \"soon\"\n");
    auto [code, out] = cli(dir, {"--config", dir.file("bad.toml"), "queues"});
    EXPECT_EQ(code, 2);
    EXPECT_NE(out.find("bad.toml:3: 'timeout' must be a number"), std::string::npos) << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
}

TEST(Cli, DemoRunsToTheEndWithOneDeadLetterAndNothingLost) {
    TempDir dir;
    auto [code, out] = run({CONVEYOR_CLI, "demo", "--orders", "120", "--db", dir.file("demo.db")},
                           {}, dir.path().string(), 120s);
    ASSERT_EQ(code, 0) << out;
    EXPECT_NE(out.find("total               361"), std::string::npos) << out;
    EXPECT_NE(out.find("PaymentDeclined"), std::string::npos) << out;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(
        out, m, std::regex(R"(delayed reminder: due at \+([0-9.]+) s, ran at \+([0-9.]+) s)")))
        << out;
    double due = std::stod(m[1]), ran = std::stod(m[2]);
    EXPECT_NEAR(due, 3.0, 0.5);
    EXPECT_GE(ran, due - 0.01);  // never early
    EXPECT_LT(ran - due, 1.0);   // and on time
    EXPECT_NE(out.find("left in queues: 0"), std::string::npos) << out;
}

TEST(Cli, ScheduleAddListPauseResumeRemove) {
    TempDir dir;
    testsupport::write_file(dir.file("conveyor.toml"),
                            "[[schedule]]\n"
                            "name = \"settlement\"\n"
                            "task = \"billing.settle\"\n"
                            "cron = \"30 2 * * *\"\n"
                            "timezone = \"Europe/Berlin\"\n");
    auto [rc, out] = cli(dir, {"schedule", "add", "nightly", "reports.build", "--cron", "0 3 * * *",
                               "--timezone", "America/New_York", "--args", "[7]"});
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("schedule 'nightly' added; next fire"), std::string::npos) << out;

    std::tie(rc, out) = cli(dir, {"--json", "schedule", "list"});
    ASSERT_EQ(rc, 0) << out;
    auto list = Json::parse(out);
    ASSERT_EQ(list.size(), 2u) << out;
    EXPECT_EQ(list[0]["name"], "settlement");
    EXPECT_EQ(list[0]["source"], "config");
    EXPECT_EQ(list[1]["name"], "nightly");
    EXPECT_EQ(list[1]["source"], "cli");
    EXPECT_EQ(list[1]["args"], Json::array({7}));
    EXPECT_TRUE(list[1]["next_fire"].is_string());

    std::tie(rc, out) = cli(dir, {"schedule", "pause", "settlement"});
    EXPECT_EQ(rc, 0) << out;
    std::tie(rc, out) = cli(dir, {"schedule", "list"});
    EXPECT_NE(out.find("paused"), std::string::npos) << out;
    std::tie(rc, out) = cli(dir, {"schedule", "resume", "settlement"});
    EXPECT_EQ(rc, 0) << out;
    std::tie(rc, out) = cli(dir, {"schedule", "list"});
    EXPECT_EQ(out.find("paused"), std::string::npos) << out;

    // Mistakes: one sentence, exit 2, nothing changed.
    std::tie(rc, out) = cli(dir, {"schedule", "add", "bad", "t", "--cron", "61 * * * *"});
    EXPECT_EQ(rc, 2);
    EXPECT_NE(out.find("minute 61 is out of range 0-59"), std::string::npos) << out;
    std::tie(rc, out) = cli(dir, {"schedule", "remove", "settlement"});
    EXPECT_EQ(rc, 2);
    EXPECT_NE(out.find("is in the configuration"), std::string::npos) << out;
    std::tie(rc, out) = cli(dir, {"schedule", "pause", "nope"});
    EXPECT_EQ(rc, 2);
    EXPECT_NE(out.find("no schedule named 'nope'"), std::string::npos) << out;

    std::tie(rc, out) = cli(dir, {"schedule", "remove", "nightly"});
    EXPECT_EQ(rc, 0) << out;
    std::tie(rc, out) = cli(dir, {"--json", "schedule", "list"});
    EXPECT_EQ(Json::parse(out).size(), 1u) << out;
}

TEST(Cli, AWorkerLogsOneJsonObjectPerLineWithTheTasksFields) {
    TempDir dir;
    testsupport::write_file(dir.file("conveyor.toml"), R"(
[[task]]
name = "fine"
exec = "true"
[[task]]
name = "flaky"
exec = ["/bin/false"]
max_retries = 1
retry_backoff = 0.01
[[task]]
name = "slow"
exec = "sleep 10"
timeout = 0.3
max_retries = 0
)");
    for (auto* t : {"fine", "flaky", "slow"})
        ASSERT_EQ(cli(dir, {"enqueue", t, "--id", std::string(t) + "-1"}).first, 0);
    testsupport::Process worker({CONVEYOR_CLI, "--log-format", "json", "--log-level", "debug",
                                 "worker", "--concurrency", "3"},
                                dir.file("worker.out"),
                                {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")},
                                dir.path().string());
    for (auto* t : {"fine-1", "flaky-1", "slow-1"})
        ASSERT_EQ(cli(dir, {"result", t, "--wait", "20"}).first, 0) << t;
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(10s), 0);
    std::string out = testsupport::read_file(dir.file("worker.out"));
    std::map<std::string, std::vector<Json>> by_event;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
        auto j = Json::parse(line, nullptr, false);
        ASSERT_TRUE(j.is_object()) << "not a JSON object: " << line;
        for (auto* key : {"time", "level", "event", "message"})
            EXPECT_TRUE(j.contains(key)) << key << " missing: " << line;
        by_event[j.value("event", "")].push_back(j);
    }
    ASSERT_EQ(by_event["worker.started"].size(), 1u) << out;
    ASSERT_EQ(by_event["worker.stopped"].size(), 1u) << out;
    EXPECT_EQ(by_event["worker.stopped"][0]["dead_lettered"], 2) << out;
    ASSERT_EQ(by_event["task.succeeded"].size(), 1u) << out;
    auto& ok = by_event["task.succeeded"][0];
    EXPECT_EQ(ok["level"], "debug");
    EXPECT_EQ(ok["id"], "fine-1");
    EXPECT_EQ(ok["task"], "fine");
    EXPECT_EQ(ok["queue"], "celery");
    EXPECT_EQ(ok["attempt"], 1);
    EXPECT_TRUE(ok["duration"].is_number());
    ASSERT_EQ(by_event["task.retried"].size(), 1u) << out;
    EXPECT_EQ(by_event["task.retried"][0]["id"], "flaky-1");
    EXPECT_TRUE(by_event["task.retried"][0]["delay"].is_number());
    ASSERT_EQ(by_event["task.time_limit"].size(), 1u) << out;
    EXPECT_EQ(by_event["task.time_limit"][0]["id"], "slow-1");
    ASSERT_EQ(by_event["task.dead_lettered"].size(), 2u) << out;
    for (auto& d : by_event["task.dead_lettered"]) {
        EXPECT_EQ(d["level"], "error");
        EXPECT_TRUE(d["reason"].is_string());
        EXPECT_TRUE(d["duration"].is_number());
    }

    // The default: text at info; successes are not logged, failures are.
    auto [rc, id] = cli(dir, {"enqueue", "fine"});
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(cli(dir, {"enqueue", "flaky", "--id", "flaky-2"}).first, 0);
    testsupport::Process quiet({CONVEYOR_CLI, "worker"}, dir.file("quiet.out"),
                               {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")},
                               dir.path().string());
    ASSERT_EQ(cli(dir, {"result", "flaky-2", "--wait", "20"}).first, 0);
    ASSERT_EQ(cli(dir, {"result", trim(id), "--wait", "20"}).first, 0);
    quiet.signal(SIGTERM);
    EXPECT_EQ(quiet.wait(10s), 0);
    std::string text = testsupport::read_file(dir.file("quiet.out"));
    EXPECT_EQ(text.find(" (fine) succeeded"), std::string::npos) << text;
    EXPECT_EQ(text.find(" DEBUG "), std::string::npos) << text;
    EXPECT_NE(text.find(" WARNING task flaky-2 (flaky) failed: "), std::string::npos) << text;
    EXPECT_NE(text.find(" ERROR task flaky-2 (flaky) dead-lettered: failed after 1 retries"),
              std::string::npos)
        << text;
}

TEST(Cli, APausedQueueKeepsItsTasksUntilResumedWhileOtherQueuesRun) {
    TempDir dir;
    testsupport::write_file(
        dir.file("conveyor.toml"),
        "[[queue]]\nname = \"held\"\n[[queue]]\nname = \"free\"\n"
        "[[task]]\nname = \"h\"\nqueue = \"held\"\nexec = \"echo h >> " +
            dir.file("ran") + "\"\n[[task]]\nname = \"f\"\nqueue = \"free\"\nexec = \"echo f >> " +
            dir.file("ran") + "\"\n");
    auto [rc, said] = cli(dir, {"queues", "pause", "held"});
    ASSERT_EQ(rc, 0) << said;
    EXPECT_EQ(trim(said), "queue 'held' paused");
    for (int i = 0; i < 5; ++i) ASSERT_EQ(cli(dir, {"enqueue", "h"}).first, 0);
    testsupport::Process worker({CONVEYOR_CLI, "worker"}, dir.file("worker.out"),
                                {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")},
                                dir.path().string());
    // The other queue runs; the paused one keeps its tasks.
    ASSERT_EQ(cli(dir, {"enqueue", "f", "--id", "free-1"}).first, 0);
    ASSERT_EQ(cli(dir, {"result", "free-1", "--wait", "20"}).first, 0);
    std::this_thread::sleep_for(500ms);  // a window in which nothing of "held" may run
    EXPECT_EQ(testsupport::read_file(dir.file("ran")), "f\n");
    auto [rc2, js] = cli(dir, {"--json", "queues"});
    ASSERT_EQ(rc2, 0) << js;
    for (auto& q : Json::parse(js)) {
        if (q["queue"] != "held") continue;
        EXPECT_EQ(q["ready"], 5) << js;
        EXPECT_EQ(q["paused"], true) << js;
    }
    // Resumed from another process: the worker takes them at once.
    ASSERT_EQ(cli(dir, {"queues", "resume", "held"}).first, 0);
    ASSERT_TRUE(testsupport::eventually(
        [&] {
            return testsupport::read_file(dir.file("ran")).size() == std::string("f\n").size() + 10;
        },
        20s))
        << testsupport::read_file(dir.file("ran"));
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(20s), 0);
    // An engine that cannot pause says so in one sentence.
    auto [rc3, err] = testsupport::run(
        {CONVEYOR_CLI, "--broker", "memory://", "queues", "pause", "q"}, {}, dir.path().string());
    EXPECT_EQ(rc3, 2) << err;
    EXPECT_NE(err.find("cannot pause queues"), std::string::npos) << err;
}

TEST(Cli, AUniqueKeyEnqueuesOnceAndPrintsTheHoldersId) {
    TempDir dir;
    auto [c1, first] = cli(dir, {"enqueue", "report.build", "--unique-key", "daily-report"});
    ASSERT_EQ(c1, 0) << first;
    auto [c2, second] =
        cli(dir, {"enqueue", "report.build", "--unique-key", "daily-report", "--args", "[2]"});
    ASSERT_EQ(c2, 0) << second;
    EXPECT_EQ(trim(second), trim(first));
    auto [c3, other] = cli(
        dir, {"enqueue", "report.build", "--unique-key", "weekly-report", "--unique-for", "60"});
    ASSERT_EQ(c3, 0) << other;
    EXPECT_NE(trim(other), trim(first));
    auto [c4, js] = cli(dir, {"--json", "queues"});
    ASSERT_EQ(c4, 0) << js;
    EXPECT_EQ(Json::parse(js)[0]["ready"], 2) << js;
}

TEST(Cli, LimitsAreSetListedWithWhatWaitsOnThemAndRemoved) {
    TempDir dir;
    auto [c1, set] = cli(dir, {"limits", "set", "report.build", "--rate", "6/m",
                               "--max-concurrency", "2", "--key", "kwargs.customer"});
    ASSERT_EQ(c1, 0) << set;
    EXPECT_EQ(trim(set),
              "task 'report.build' limited: 6/m, at most 2 running, per kwargs.customer");
    for (int i = 0; i < 3; ++i) {
        auto [c, out] =
            cli(dir, {"enqueue", "report.build", "--kwargs", R"({"customer": "acme"})"});
        ASSERT_EQ(c, 0) << out;
    }
    auto [c2, table] = cli(dir, {"limits"});
    ASSERT_EQ(c2, 0) << table;
    EXPECT_NE(table.find("MAX RUNNING"), std::string::npos) << table;
    EXPECT_NE(table.find("kwargs.customer"), std::string::npos) << table;
    auto [c3, js] = cli(dir, {"--json", "limits"});
    ASSERT_EQ(c3, 0) << js;
    auto l = Json::parse(js);
    ASSERT_EQ(l.size(), 1u) << js;
    EXPECT_EQ(l[0]["task"], "report.build");
    EXPECT_EQ(l[0]["rate"], "6/m");
    EXPECT_EQ(l[0]["max_concurrency"], 2);
    EXPECT_EQ(l[0]["waiting"], 0);  // (no worker has taken any yet)
    auto [c4, removed] = cli(dir, {"limits", "remove", "report.build"});
    ASSERT_EQ(c4, 0) << removed;
    EXPECT_EQ(trim(removed), "task 'report.build' has no limits");
    auto [c5, none] = cli(dir, {"limits"});
    EXPECT_EQ(trim(none), "no task has limits");
    auto [c6, queues] = cli(dir, {"queues"});
    EXPECT_NE(queues.find("LIMITED"), std::string::npos) << queues;
}

TEST(Cli, TheConfigurationReadmeShowsIsValid) {
    // README's "Configuration" section shows every key in one conveyor.toml: it must load.
    auto readme = testsupport::read_file(std::string(CONVEYOR_SOURCE_DIR) + "/README.md");
    auto section = readme.find("## Configuration (`conveyor.toml`)");
    ASSERT_NE(section, std::string::npos);
    auto from = readme.find("```toml\n", section);
    ASSERT_NE(from, std::string::npos);
    from += 8;
    auto to = readme.find("```", from);
    auto toml = readme.substr(from, to - from);
    auto cfg = conveyor::parse_config(toml, "README.md");
    ASSERT_TRUE(cfg) << cfg.error().message;
    auto* charge = cfg->find_task("payments.charge");
    ASSERT_NE(charge, nullptr);
    EXPECT_EQ(*charge->rate_limit, 100.0);
    EXPECT_EQ(*charge->max_concurrency, 5);
    EXPECT_EQ(charge->limit_key, "kwargs.customer");
}
