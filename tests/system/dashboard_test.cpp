// `conveyor dashboard` as a client of its API sees it: the UI's pages and assets, the JSON API
// over a real sqlite store, CSRF, authentication, read-only mode, and bad input answered with
// 4xx JSON errors.

#include <gtest/gtest.h>
#include <signal.h>

#include <map>
#include <set>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/task.hpp"
#include "support/http.hpp"
#include "support/process.hpp"

using namespace std::chrono_literals;
using conveyor::Json;
using testsupport::http_call;
using testsupport::HttpReply;
using testsupport::Process;
using testsupport::read_file;
using testsupport::run;
using testsupport::served_url;
using testsupport::TempDir;
using testsupport::write_file;

namespace {

std::pair<int, std::string> dashboard_cli(const TempDir& dir, std::vector<std::string> args,
                                          std::vector<std::string> env = {}) {
    args.insert(args.begin(), CONVEYOR_CLI);
    env.push_back("CONVEYOR_BROKER=sqlite://" + dir.file("c.db"));
    return run(args, env, dir.path().string());
}

/// A store with one dead letter whose arguments are markup, and one ready task.
void dead_letter_with_markup(const TempDir& dir) {
    write_file(dir.file("conveyor.toml"), R"(
[[queue]]
name = "billing"
[[task]]
name = "bill"
queue = "billing"
exec = "exit 65"
[[schedule]]
name = "nightly"
task = "bill"
cron = "0 3 * * *"
)");
    ASSERT_EQ(dashboard_cli(dir, {"enqueue", "bill", "--id", "evil-1", "--kwargs",
                                  R"({"note": "<script>alert(1)</script>"})"})
                  .first,
              0);
    Process worker({CONVEYOR_CLI, "worker"}, dir.file("worker.out"),
                   {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")}, dir.path().string());
    ASSERT_TRUE(testsupport::eventually(
        [&] {
            return dashboard_cli(dir, {"dlq", "list", "--queue", "billing"})
                       .second.find("evil-1") != std::string::npos;
        },
        20s));
    worker.signal(SIGTERM);
    ASSERT_EQ(worker.wait(20s), 0);
}

struct Served {
    std::unique_ptr<Process> process;
    std::string url;
};

Served dashboard(const TempDir& dir, std::vector<std::string> flags,
                 std::vector<std::string> env = {}, const std::string& out = "dashboard.out") {
    std::vector<std::string> argv = {CONVEYOR_CLI, "dashboard", "--listen", "127.0.0.1:0"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    env.push_back("CONVEYOR_BROKER=sqlite://" + dir.file("c.db"));
    Served s;
    s.process = std::make_unique<Process>(argv, dir.file(out), env, dir.path().string());
    s.url = served_url(dir.file(out), 20s);
    return s;
}

std::string csrf_cookie(const HttpReply& page) {
    std::string set = page.header("Set-Cookie");
    auto at = set.find("conveyor_csrf=");
    if (at == std::string::npos) return {};
    auto end = set.find(';', at);
    return set.substr(at + 14, end - at - 14);
}

}  // namespace

TEST(Dashboard, ServesItsPagesAndApiAndMutatesOnlyWithTheCsrfToken) {
    TempDir dir;
    dead_letter_with_markup(dir);
    auto d = dashboard(dir, {});
    ASSERT_FALSE(d.url.empty()) << read_file(dir.file("dashboard.out"));
    auto page = http_call(d.url, "GET", "/");
    ASSERT_EQ(page.status, 200);
    EXPECT_EQ(page.content_type, "text/html; charset=utf-8");
    EXPECT_NE(page.header("Content-Security-Policy").find("default-src 'self'"), std::string::npos);
    EXPECT_EQ(page.header("X-Frame-Options"), "DENY");
    std::string csrf = csrf_cookie(page);
    ASSERT_EQ(csrf.size(), 64u) << page.header("Set-Cookie");
    for (auto* asset : {"/assets/app.js", "/assets/app.css"})
        EXPECT_EQ(http_call(d.url, "GET", asset).status, 200) << asset;

    auto overview = http_call(d.url, "GET", "/api/v1/overview");
    ASSERT_EQ(overview.status, 200) << overview.body;
    EXPECT_EQ(overview.content_type, "application/json");
    auto o = Json::parse(overview.body);
    EXPECT_EQ(o["totals"]["dead"], 1) << overview.body;
    EXPECT_EQ(o["read_only"], false);

    // The dead letter, with its markup as data (the page shows it as text).
    auto dead = http_call(d.url, "GET", "/api/v1/queues/billing/dead");
    ASSERT_EQ(dead.status, 200) << dead.body;
    auto list = Json::parse(dead.body);
    ASSERT_EQ(list.size(), 1u) << dead.body;
    EXPECT_EQ(list[0]["id"], "evil-1");
    EXPECT_EQ(list[0]["task"], "bill");
    EXPECT_EQ(list[0]["kwargs"]["note"], "<script>alert(1)</script>");
    EXPECT_NE(list[0]["reason"].get<std::string>().find("exit status 65"), std::string::npos);
    // app.js builds every view with textContent, never innerHTML.
    auto js = http_call(d.url, "GET", "/assets/app.js").body;
    EXPECT_EQ(js.find("innerHTML"), std::string::npos);
    EXPECT_NE(js.find("textContent"), std::string::npos);

    // Mutations: POST only, with the CSRF cookie echoed in a header, from this origin.
    httplib::Headers with_csrf = {{"Cookie", "conveyor_csrf=" + csrf}, {"X-Conveyor-CSRF", csrf}};
    auto replay = http_call(d.url, "POST", "/api/v1/queues/billing/dead/replay", {}, "{}");
    EXPECT_EQ(replay.status, 403) << replay.body;
    httplib::Headers wrong = {{"Cookie", "conveyor_csrf=" + csrf}, {"X-Conveyor-CSRF", "x"}};
    EXPECT_EQ(http_call(d.url, "POST", "/api/v1/queues/billing/dead/replay", wrong, "{}").status,
              403);
    auto foreign = with_csrf;
    foreign.emplace("Origin", "http://evil.example");
    EXPECT_EQ(http_call(d.url, "POST", "/api/v1/queues/billing/dead/replay", foreign, "{}").status,
              403);
    EXPECT_EQ(http_call(d.url, "GET", "/api/v1/queues/billing/dead/replay").status, 404);
    replay = http_call(d.url, "POST", "/api/v1/queues/billing/dead/replay", with_csrf,
                       R"({"ids": ["evil-1"]})");
    ASSERT_EQ(replay.status, 200) << replay.body;
    EXPECT_EQ(Json::parse(replay.body)["replayed"], 1);
    auto queues = Json::parse(http_call(d.url, "GET", "/api/v1/queues").body);
    Json billing;
    for (auto& q : queues)
        if (q["queue"] == "billing") billing = q;
    EXPECT_EQ(billing["dead"], 0) << queues.dump();
    EXPECT_EQ(billing["ready"], 1) << queues.dump();
    auto paused_queue = http_call(d.url, "POST", "/api/v1/queues/billing/pause", with_csrf, "");
    EXPECT_EQ(paused_queue.status, 200) << paused_queue.body;
    for (auto& q : Json::parse(http_call(d.url, "GET", "/api/v1/queues").body))
        if (q["queue"] == "billing") {
            EXPECT_EQ(q["paused"], true) << q.dump();
        }
    EXPECT_EQ(http_call(d.url, "POST", "/api/v1/queues/billing/resume", with_csrf, "").status, 200);
    auto pause = http_call(d.url, "POST", "/api/v1/schedules/nightly/pause", with_csrf, "");
    EXPECT_EQ(pause.status, 200) << pause.body;
    auto schedules = Json::parse(http_call(d.url, "GET", "/api/v1/schedules").body);
    ASSERT_EQ(schedules.size(), 1u);
    EXPECT_EQ(schedules[0]["paused"], true) << schedules.dump();
    auto task = Json::parse(http_call(d.url, "GET", "/api/v1/tasks/evil-1").body);
    EXPECT_TRUE(task.contains("state")) << task.dump();
    // Fire now: one extra run of a (paused) schedule's task, at once.
    auto fired = http_call(d.url, "POST", "/api/v1/schedules/nightly/fire", with_csrf, "");
    ASSERT_EQ(fired.status, 200) << fired.body;
    std::string fired_id = Json::parse(fired.body)["id"];
    auto fired_task = Json::parse(http_call(d.url, "GET", "/api/v1/tasks/" + fired_id).body);
    EXPECT_EQ(fired_task["history"]["name"], "bill") << fired_task.dump();
    EXPECT_EQ(fired_task["history"]["state"], "waiting") << fired_task.dump();
    EXPECT_EQ(http_call(d.url, "POST", "/api/v1/schedules/nope/fire", with_csrf, "").status, 404);

    // Bad input: a 4xx JSON error each, and the dashboard carries on.
    struct Bad {
        const char* method;
        const char* path;
        std::string body;
        int status;
    };
    std::vector<Bad> bad = {
        {"GET", "/api/v1/queues/billing/dead?limit=abc", "", 400},
        {"GET", "/api/v1/queues/billing/dead?limit=0", "", 400},
        {"GET", "/api/v1/queues/billing/dead?limit=99999999999999999999", "", 400},
        {"POST", "/api/v1/queues/billing/dead/replay", "{not json", 400},
        {"POST", "/api/v1/queues/billing/dead/replay", "[1,2]", 400},
        {"POST", "/api/v1/queues/billing/dead/replay", R"({"ids": [1]})", 400},
        {"POST", "/api/v1/queues/billing/dead/replay", R"({"ids": []})", 400},
        {"POST", "/api/v1/queues/billing/dead/replay", std::string(200, '['), 400},
        {"POST", "/api/v1/schedules/nope/pause", "", 404},
        {"GET", "/api/v1/nothing", "", 404},
        {"POST", "/api/v1/queues/billing/dead/replay", std::string(2 << 20, ' '), 413},
    };
    for (auto& b : bad) {
        auto r = http_call(d.url, b.method, b.path, with_csrf, b.body);
        EXPECT_EQ(r.status, b.status) << b.method << " " << b.path << ": " << r.body;
        if (r.status != 413) {
            auto j = Json::parse(r.body, nullptr, false);
            EXPECT_TRUE(j.is_object() && j.contains("error")) << b.path << ": " << r.body;
        }
    }
    EXPECT_EQ(http_call(d.url, "GET", "/api/v1/overview").status, 200);
    d.process->signal(SIGTERM);
    EXPECT_EQ(d.process->wait(20s), 0);
}

TEST(Dashboard, TokenBasicAuthAndReadOnlyGuardIt) {
    TempDir dir;
    dead_letter_with_markup(dir);
    const std::string token = "0123456789abcdef-token";
    auto d = dashboard(dir, {}, {"CONVEYOR_DASHBOARD_TOKEN=" + token});
    ASSERT_FALSE(d.url.empty()) << read_file(dir.file("dashboard.out"));
    auto denied = http_call(d.url, "GET", "/api/v1/overview");
    EXPECT_EQ(denied.status, 401);
    EXPECT_TRUE(Json::parse(denied.body, nullptr, false).contains("error")) << denied.body;
    EXPECT_EQ(
        http_call(d.url, "GET", "/api/v1/overview", {{"Authorization", "Bearer nope"}}).status,
        401);
    httplib::Headers bearer = {{"Authorization", "Bearer " + token}};
    EXPECT_EQ(http_call(d.url, "GET", "/api/v1/overview", bearer).status, 200);
    // An API client with the token needs no CSRF cookie.
    EXPECT_EQ(http_call(d.url, "POST", "/api/v1/queues/billing/dead/replay", bearer, "{}").status,
              200);
    // A browser is sent to sign in, and gets a session cookie for the right token only.
    auto page = http_call(d.url, "GET", "/");
    EXPECT_EQ(page.status, 303);
    EXPECT_EQ(page.header("Location"), "/login");
    EXPECT_EQ(http_call(d.url, "GET", "/login").status, 200);
    auto failed =
        http_call(d.url, "POST", "/login", {}, "token=wrong", "application/x-www-form-urlencoded");
    EXPECT_EQ(failed.header("Location"), "/login?failed=1");
    EXPECT_EQ(failed.header("Set-Cookie"), "");
    auto signed_in = http_call(d.url, "POST", "/login", {}, "token=" + token,
                               "application/x-www-form-urlencoded");
    EXPECT_EQ(signed_in.status, 303);
    std::string session = signed_in.header("Set-Cookie");
    ASSERT_TRUE(session.starts_with("conveyor_session=")) << session;
    EXPECT_NE(session.find("HttpOnly"), std::string::npos);
    EXPECT_EQ(
        http_call(d.url, "GET", "/", {{"Cookie", session.substr(0, session.find(';'))}}).status,
        200);
    // The token is never on the command line.
    auto [rc, ps] = run({"ps", "-eo", "args"});
    EXPECT_EQ(ps.find(token), std::string::npos);
    d.process->signal(SIGTERM);
    EXPECT_EQ(d.process->wait(20s), 0);

    // Basic auth from a file, read-only.
    write_file(dir.file("basic"), "ops:s3cret pass\n");
    auto b =
        dashboard(dir, {"--basic-auth-file", dir.file("basic"), "--read-only"}, {}, "basic.out");
    ASSERT_FALSE(b.url.empty()) << read_file(dir.file("basic.out"));
    auto challenge = http_call(b.url, "GET", "/");
    EXPECT_EQ(challenge.status, 401);
    EXPECT_NE(challenge.header("WWW-Authenticate").find("Basic"), std::string::npos);
    httplib::Headers basic = {{"Authorization", "Basic b3BzOnMzY3JldCBwYXNz"}};  // ops:s3cret pass
    auto ok = http_call(b.url, "GET", "/", basic);
    ASSERT_EQ(ok.status, 200);
    std::string csrf = csrf_cookie(ok);
    basic.emplace("Cookie", "conveyor_csrf=" + csrf);
    basic.emplace("X-Conveyor-CSRF", csrf);
    auto refused = http_call(b.url, "POST", "/api/v1/queues/billing/dead/purge", basic, "");
    EXPECT_EQ(refused.status, 403);
    EXPECT_NE(refused.body.find("read-only"), std::string::npos) << refused.body;
    EXPECT_EQ(Json::parse(http_call(b.url, "GET", "/api/v1/overview", basic).body)["read_only"],
              true);
    b.process->signal(SIGTERM);
    EXPECT_EQ(b.process->wait(20s), 0);
}

TEST(Dashboard, RefusesToListenBeyondLoopbackWithoutAuthentication) {
    TempDir dir;
    write_file(dir.file("conveyor.toml"), "");
    auto [rc, out] = dashboard_cli(dir, {"dashboard", "--listen", "0.0.0.0:0"});
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("without authentication"), std::string::npos) << out;
    std::tie(rc, out) = dashboard_cli(dir, {"dashboard", "--token-file", dir.file("missing")});
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("cannot read the token file"), std::string::npos) << out;
    std::tie(rc, out) = dashboard_cli(dir, {"dashboard"}, {"CONVEYOR_DASHBOARD_TOKEN=short"});
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("at least 16 characters"), std::string::npos) << out;
}

namespace {

/// The dashboard's /api/v1/tasks as JSON; `query` without the leading '?'.
Json task_list(const std::string& url, const std::string& query) {
    auto r = http_call(url, "GET", "/api/v1/tasks?" + query);
    EXPECT_EQ(r.status, 200) << query << ": " << r.body;
    return Json::parse(r.body, nullptr, false);
}

std::vector<std::string> ids_of(const Json& page) {
    std::vector<std::string> ids;
    if (page.is_object() && page.contains("tasks"))
        for (auto& t : page["tasks"]) ids.push_back(t["id"]);
    return ids;
}

}  // namespace

TEST(Dashboard, KeepsTheHistoryOfTasksWithAttemptsCountsAndSearchAndActsOnThem) {
    TempDir dir;
    write_file(dir.file("conveyor.toml"), R"(
[[queue]]
name = "billing"
[[task]]
name = "bill"
queue = "billing"
exec = "true"
[[task]]
name = "flaky"
queue = "billing"
exec = "test $CONVEYOR_ATTEMPT -gt 1"
max_retries = 2
retry_backoff = 0.01
[[task]]
name = "broken"
queue = "billing"
exec = ["/bin/false"]
max_retries = 0
)");
    auto enqueue = [&](std::vector<std::string> args) {
        args.insert(args.begin(), "enqueue");
        auto [rc, out] = dashboard_cli(dir, args);
        ASSERT_EQ(rc, 0) << out;
    };
    enqueue({"bill", "--id", "b-1", "--kwargs", R"({"customer": "acme-42"})"});
    for (int i = 0; i < 5; ++i)
        enqueue({"bill", "--id", "b-other-" + std::to_string(i), "--kwargs",
                 R"({"customer": "other-)" + std::to_string(i) + "\"}"});
    enqueue({"flaky", "--id", "f-1"});
    enqueue({"broken", "--id", "x-1"});
    enqueue({"bill", "--id", "later-1", "--countdown", "3600"});
    {
        Process worker({CONVEYOR_CLI, "worker"}, dir.file("worker.out"),
                       {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")}, dir.path().string());
        ASSERT_TRUE(testsupport::eventually(
            [&] {
                auto out = dashboard_cli(dir, {"queues"}).second;
                return out.find("billing") != std::string::npos &&
                       dashboard_cli(dir, {"result", "f-1"}).second.find("SUCCESS") !=
                           std::string::npos &&
                       dashboard_cli(dir, {"dlq", "list", "--queue", "billing"})
                               .second.find("x-1") != std::string::npos;
            },
            30s))
            << read_file(dir.file("worker.out"));
        worker.signal(SIGTERM);
        ASSERT_EQ(worker.wait(20s), 0);
    }
    auto d = dashboard(dir, {});
    ASSERT_FALSE(d.url.empty()) << read_file(dir.file("dashboard.out"));
    // Queue counts leave the history out: one delayed task, one dead, nothing else.
    for (auto& q : Json::parse(http_call(d.url, "GET", "/api/v1/queues").body))
        if (q["queue"] == "billing") {
            EXPECT_EQ(q["ready"], 0) << q.dump();
            EXPECT_EQ(q["delayed"], 1) << q.dump();
            EXPECT_EQ(q["in_flight"], 0) << q.dump();
            EXPECT_EQ(q["dead"], 1) << q.dump();
        }
    // The worker that ran them reported what it did, and that it stopped.
    auto workers = Json::parse(http_call(d.url, "GET", "/api/v1/workers").body);
    ASSERT_EQ(workers.size(), 1u) << workers.dump();
    EXPECT_EQ(workers[0]["online"], false) << workers.dump();
    EXPECT_EQ(workers[0]["info"]["succeeded"], 7) << workers.dump();
    EXPECT_EQ(workers[0]["info"]["retried"], 1) << workers.dump();
    EXPECT_EQ(workers[0]["info"]["dead_lettered"], 1) << workers.dump();
    EXPECT_EQ(workers[0]["info"]["queues"], Json::array({"billing"})) << workers.dump();

    // Newest first, every task with its state.
    auto all = task_list(d.url, "");
    ASSERT_EQ(all["tasks"].size(), 9u) << all.dump();
    EXPECT_EQ(all["tasks"][0]["id"], "later-1");
    EXPECT_EQ(all["tasks"][0]["state"], "delayed");
    std::map<std::string, std::string> state;
    for (auto& t : all["tasks"]) state[t["id"]] = t["state"];
    EXPECT_EQ(state["b-1"], "succeeded");
    EXPECT_EQ(state["f-1"], "succeeded");
    EXPECT_EQ(state["x-1"], "dead");
    EXPECT_EQ(all["next"], nullptr);

    // Filters: state, name, queue; keyset paging walks them all once.
    EXPECT_EQ(ids_of(task_list(d.url, "state=succeeded")).size(), 7u);
    EXPECT_EQ(ids_of(task_list(d.url, "state=dead")), std::vector<std::string>{"x-1"});
    EXPECT_EQ(ids_of(task_list(d.url, "name=flaky")), std::vector<std::string>{"f-1"});
    EXPECT_EQ(ids_of(task_list(d.url, "queue=billing")).size(), 9u);
    EXPECT_TRUE(ids_of(task_list(d.url, "queue=elsewhere")).empty());
    // A time range of enqueue.
    EXPECT_EQ(ids_of(task_list(d.url, "since=2000-01-01T00:00:00Z")).size(), 9u);
    EXPECT_TRUE(ids_of(task_list(d.url, "since=2999-01-01T00:00:00Z")).empty());
    EXPECT_TRUE(ids_of(task_list(d.url, "until=2000-01-01T00:00:00Z")).empty());
    EXPECT_EQ(ids_of(task_list(d.url,
                               "since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z"
                               "&name=flaky")),
              std::vector<std::string>{"f-1"});
    std::set<std::string> paged;
    std::string cursor;
    for (int pages = 0; pages < 10; ++pages) {
        auto page = task_list(d.url, "limit=4" + (cursor.empty() ? "" : "&before=" + cursor));
        for (auto& id : ids_of(page)) EXPECT_TRUE(paged.insert(id).second) << id << " twice";
        if (page["next"].is_null()) break;
        cursor = std::to_string(page["next"].get<std::int64_t>());
    }
    EXPECT_EQ(paged.size(), 9u);

    // The retried task: its first attempt's error, then its success.
    auto f1 = Json::parse(http_call(d.url, "GET", "/api/v1/tasks/f-1").body);
    EXPECT_EQ(f1["state"], "SUCCESS") << f1.dump();
    auto& h = f1["history"];
    ASSERT_TRUE(h.is_object()) << f1.dump();
    EXPECT_EQ(h["name"], "flaky");
    EXPECT_EQ(h["retries"], 1);
    ASSERT_EQ(h["attempts"].size(), 1u) << h.dump();
    EXPECT_NE(h["attempts"][0]["error"].get<std::string>().find("exit status 1"), std::string::npos)
        << h.dump();
    EXPECT_FALSE(h["started"].is_null());
    EXPECT_FALSE(h["finished"].is_null());
    EXPECT_FALSE(h["worker"].is_null());

    // Search in the arguments, through the index the dashboard keeps.
    EXPECT_TRUE(testsupport::eventually(
        [&] { return ids_of(task_list(d.url, "q=acme-42")) == std::vector<std::string>{"b-1"}; },
        10s))
        << task_list(d.url, "q=acme-42").dump();
    EXPECT_EQ(ids_of(task_list(d.url, "q=other-&state=succeeded")).size(), 5u);
    EXPECT_TRUE(ids_of(task_list(d.url, "q=nowhere-to-be-found")).empty());

    // Per-minute counts: 7 succeeded; flaky's first run and broken failed; one retry, one dead.
    auto minutes = Json::parse(http_call(d.url, "GET", "/api/v1/minutes?minutes=60").body);
    std::int64_t ok = 0, failed = 0, retried = 0, dead = 0;
    for (auto& m : minutes) {
        ok += m["succeeded"].get<std::int64_t>();
        failed += m["failed"].get<std::int64_t>();
        retried += m["retried"].get<std::int64_t>();
        dead += m["dead"].get<std::int64_t>();
    }
    EXPECT_EQ(ok, 7) << minutes.dump();
    EXPECT_EQ(failed, 2) << minutes.dump();
    EXPECT_EQ(retried, 1);
    EXPECT_EQ(dead, 1);

    // Actions: revoke a delayed task (once), retry a dead one, delete a finished one.
    auto csrf = csrf_cookie(http_call(d.url, "GET", "/"));
    httplib::Headers with_csrf = {{"Cookie", "conveyor_csrf=" + csrf}, {"X-Conveyor-CSRF", csrf}};
    auto post = [&](const std::string& path) {
        return http_call(d.url, "POST", path, with_csrf, "").status;
    };
    EXPECT_EQ(post("/api/v1/tasks/later-1/revoke"), 200);
    EXPECT_EQ(post("/api/v1/tasks/later-1/revoke"), 409);
    auto later = Json::parse(http_call(d.url, "GET", "/api/v1/tasks/later-1").body);
    EXPECT_EQ(later["state"], "REVOKED") << later.dump();
    EXPECT_EQ(later["history"]["state"], "revoked");
    EXPECT_EQ(post("/api/v1/tasks/x-1/retry"), 200);
    EXPECT_EQ(post("/api/v1/tasks/x-1/retry"), 409);  // waiting already
    EXPECT_EQ(ids_of(task_list(d.url, "state=waiting")), std::vector<std::string>{"x-1"});
    EXPECT_EQ(post("/api/v1/tasks/b-1/delete"), 200);
    EXPECT_TRUE(
        Json::parse(http_call(d.url, "GET", "/api/v1/tasks/b-1").body)["history"].is_null());
    EXPECT_EQ(post("/api/v1/tasks/nope/retry"), 404);

    for (auto* bad : {"state=bogus", "since=yesterday", "limit=0", "before=-1"}) {
        auto r = http_call(d.url, "GET", std::string("/api/v1/tasks?") + bad);
        EXPECT_EQ(r.status, 400) << bad << ": " << r.body;
    }
    d.process->signal(SIGTERM);
    EXPECT_EQ(d.process->wait(20s), 0);

    // Pruning: a worker told to keep at most 2 finished tasks deletes the oldest at once.
    {
        Process worker({CONVEYOR_CLI, "worker"}, dir.file("worker2.out"),
                       {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db") + "?history_max=2"},
                       dir.path().string());
        auto d2 = dashboard(dir, {}, {}, "dashboard2.out");
        EXPECT_TRUE(testsupport::eventually(
            [&] { return ids_of(task_list(d2.url, "state=succeeded")).size() == 2; }, 20s))
            << task_list(d2.url, "state=succeeded").dump();
        // A running worker shows online, beside the one that stopped.
        EXPECT_TRUE(testsupport::eventually(
            [&] {
                auto w = Json::parse(http_call(d2.url, "GET", "/api/v1/workers").body);
                return w.size() == 2 && w[0]["online"] == true && w[1]["online"] == false;
            },
            20s))
            << http_call(d2.url, "GET", "/api/v1/workers").body;
        // Bulk, on a filter: every succeeded task named bill (the newest two are left, one of
        // them f-1).
        auto csrf2 = csrf_cookie(http_call(d2.url, "GET", "/"));
        httplib::Headers h2 = {{"Cookie", "conveyor_csrf=" + csrf2}, {"X-Conveyor-CSRF", csrf2}};
        auto bulk = http_call(d2.url, "POST", "/api/v1/tasks/bulk/delete?state=succeeded&name=bill",
                              h2, "");
        ASSERT_EQ(bulk.status, 200) << bulk.body;
        EXPECT_EQ(Json::parse(bulk.body)["done"], 1) << bulk.body;
        EXPECT_EQ(ids_of(task_list(d2.url, "state=succeeded")), std::vector<std::string>{"f-1"});
        EXPECT_EQ(http_call(d2.url, "POST", "/api/v1/tasks/bulk/delete?state=nope", h2, "").status,
                  400);
        worker.signal(SIGTERM);
        EXPECT_EQ(worker.wait(20s), 0);
        d2.process->signal(SIGTERM);
        EXPECT_EQ(d2.process->wait(20s), 0);
    }
}

TEST(Dashboard, ShowsTasksLimitsAndWhatWaitsOnThem) {
    using namespace conveyor;
    TempDir dir;
    auto broker = *Broker::open("sqlite://" + dir.file("c.db"));
    ASSERT_TRUE(broker->set_limit({.task = "mail.send", .rate = 0.1, .max_concurrency = 1}));
    Client client(broker);
    for (int i = 0; i < 3; ++i)
        ASSERT_TRUE(
            client.enqueue("mail.send", Json::array({i}), Json::object(), {.queue = "mail"}));
    // A worker takes one and holds it (its lease runs on); the others wait in the broker on the
    // limits.
    auto c = *broker->consume({.queues = {"mail"}, .name = "test"});
    ASSERT_EQ(c->fetch(10, 200ms)->size(), 1u);
    auto d = dashboard(dir, {});
    ASSERT_FALSE(d.url.empty()) << read_file(dir.file("dashboard.out"));
    auto limits = http_call(d.url, "GET", "/api/v1/limits");
    ASSERT_EQ(limits.status, 200) << limits.body;
    EXPECT_EQ(Json::parse(limits.body), Json::parse(R"([{"task": "mail.send", "rate": "6/m",
        "max_concurrency": 1, "key": null, "waiting": 2, "running": 1}])"))
        << limits.body;
    auto queues = Json::parse(http_call(d.url, "GET", "/api/v1/queues").body);
    ASSERT_EQ(queues.size(), 1u);
    EXPECT_EQ(queues[0]["limited"], 2) << queues.dump();
    EXPECT_EQ(queues[0]["in_flight"], 1) << queues.dump();
}
