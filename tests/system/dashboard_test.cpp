// `conveyor dashboard` as a client of its API sees it: the UI's pages and assets, the JSON API
// over a real sqlite store, CSRF, authentication, read-only mode, and bad input answered with
// 4xx JSON errors.

#include <gtest/gtest.h>
#include <signal.h>

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
