// Hostile input through the command line, the configuration file and task data on the
// embedded engine: one sentence and a non-zero exit for a mistake, no secret printed, no
// header injected, no process left behind, no task run twice at once, and storage trouble
// waited out.

#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/mount.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "conveyor/client.hpp"
#include "conveyor/worker.hpp"
#include "support/http.hpp"
#include "support/process.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::eventually;
using testsupport::Process;
using testsupport::read_file;
using testsupport::run;
using testsupport::TempDir;
using testsupport::write_file;

namespace {

std::pair<int, std::string> cli(const TempDir& dir, std::vector<std::string> args,
                                std::vector<std::string> env = {}) {
    args.insert(args.begin(), CONVEYOR_CLI);
    env.push_back("CONVEYOR_BROKER=sqlite://" + dir.file("c.db"));
    return run(args, env, dir.path().string());
}

/// Another process holding the write lock of the SQLite file `db` (`BEGIN mode`): it holds it
/// once the constructor returns and held() says so, and lets go after `seconds`, or at once
/// when release() is called.
class WriteLockHolder {
  public:
    WriteLockHolder(const TempDir& dir, const std::string& db, double seconds,
                    const char* mode = "IMMEDIATE") {
        static int made = 0;
        std::string name = "lock" + std::to_string(++made);
        locked_ = dir.file(name + ".locked");
        release_ = dir.file(name + ".release");
        out_ = dir.file(name + ".out");
        process_ = std::make_unique<Process>(
            std::vector<std::string>{"/usr/bin/python3", "-c",
                                     "import os, sqlite3, sys, time\n"
                                     "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                                     "c.execute('BEGIN ' + sys.argv[2])\n"
                                     "open(sys.argv[3], 'w').write('locked')\n"
                                     "t = time.time()\n"
                                     "while not os.path.exists(sys.argv[4]) and "
                                     "time.time() - t < float(sys.argv[5]):\n"
                                     "    time.sleep(0.02)\n"
                                     "c.execute('COMMIT')\n",
                                     db, mode, locked_, release_, std::to_string(seconds)},
            out_);
        held_ = eventually([&] { return std::filesystem::exists(locked_); }, 10s);
    }
    bool held() const { return held_; }
    std::string output() const { return read_file(out_); }
    void release() const { write_file(release_, "go"); }

  private:
    std::string locked_, release_, out_;
    std::unique_ptr<Process> process_;
    bool held_ = false;
};

/// Stops `p` (SIGSTOP) at a moment it holds no write lock on the SQLite file `db`: it is
/// stopped, and resumed and stopped again while another connection cannot take the lock.
bool stop_outside_a_write(testsupport::Process& p, const std::string& db) {
    for (int attempt = 0; attempt < 100; ++attempt) {
        p.signal(SIGSTOP);
        // Stopped for certain once /proc says so ('T') of each of its threads.
        bool stopped = eventually(
            [&] {
                std::error_code ec;
                std::filesystem::directory_iterator it("/proc/" + std::to_string(p.pid()) + "/task",
                                                       ec);
                for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
                    std::string stat = read_file((it->path() / "stat").string());
                    auto close = stat.rfind(')');
                    if (close == std::string::npos || close + 2 >= stat.size() ||
                        stat[close + 2] != 'T')
                        return false;
                }
                return !ec;
            },
            5s);
        if (!stopped) return false;
        auto [rc, out] = run({"/usr/bin/python3", "-c",
                              "import sqlite3, sys\n"
                              "c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
                              "c.execute('BEGIN IMMEDIATE')\n"
                              "c.execute('ROLLBACK')\n",
                              db});
        if (rc == 0) return true;
        p.signal(SIGCONT);
        std::this_thread::sleep_for(std::chrono::milliseconds(10 + (7 * attempt) % 50));
    }
    return false;
}

int count_lines(const std::string& path) {
    std::string s = read_file(path);
    return int(std::count(s.begin(), s.end(), '\n'));
}

/// Is a process whose command line holds `token` running (zombies aside)?
bool process_with(const std::string& token) {
    std::error_code ec;
    for (auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
        std::string name = entry.path().filename();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::string cmd = read_file(entry.path().string() + "/cmdline");
        std::replace(cmd.begin(), cmd.end(), '\0', ' ');
        if (cmd.find(token) != std::string::npos) return true;
    }
    return false;
}

}  // namespace

TEST(HostileCli, BadNumbersTimesAndJsonGetOneSentenceAndExit2) {
    TempDir dir;
    std::string deep = std::string(60000, '[') + std::string(60000, ']');
    struct Case {
        std::vector<std::string> args;
        std::string says;
    };
    std::vector<Case> cases = {
        {{"enqueue", "t", "--args", deep}, "--args nests deeper than 128 levels"},
        {{"enqueue", "t", "--kwargs", "{\"a\": " + deep + "}"}, "--kwargs nests deeper"},
        {{"enqueue", "t", "--countdown", "nan"}, "--countdown must be a number of seconds"},
        {{"enqueue", "t", "--countdown", "9999999999"},
         "--countdown 9999999999 ends after 2262-01-01T00:00:00Z"},
        {{"enqueue", "t", "--expires", "9999999999"},
         "--expires 9999999999 ends after 2262-01-01T00:00:00Z"},
        {{"enqueue", "t", "--countdown", "-5"}, "--countdown must be a number of seconds from 0"},
        {{"enqueue", "t", "--eta", "2300-01-01T00:00:00Z"},
         "--eta '2300-01-01T00:00:00Z' is after 2262-01-01T00:00:00Z"},
        {{"enqueue", "t", "--eta", "9999-12-31T23:59:59Z"}, "is after 2262-01-01"},
        {{"result", "x", "--wait", "nan"}, "must be a number of seconds from 0"},
        {{"worker", "--lease", "1e300"}, "must be a number of seconds from 0.2 to 86400"},
        {{"worker", "--grace", "nan"}, "must be a number of seconds"},
    };
    for (auto& c : cases) {
        auto [rc, out] = cli(dir, c.args);
        EXPECT_EQ(rc, 2) << c.args[0] << " " << c.args.back().substr(0, 40) << ": " << out;
        EXPECT_NE(out.find(c.says), std::string::npos) << out;
        EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
    }
    // Nothing was enqueued by any of them.
    auto [rc, queues] = cli(dir, {"--json", "queues"});
    EXPECT_EQ(rc, 0) << queues;
    EXPECT_EQ(queues, "[]\n");
}

TEST(HostileCli, ConfigNumbersOutOfRangeNameTheFileLineAndRange) {
    TempDir dir;
    struct Case {
        std::string toml;
        std::string says;
    };
    std::vector<Case> cases = {
        {"[worker]\nlease = 1e300\n",
         "conveyor.toml:2: 'lease' must be a number from 0.2 to 86400"},
        {"[worker]\nprefetch = 99999999\n", "conveyor.toml:2: 'prefetch' must be from 0"},
        {"[[task]]\nname = \"t\"\nexec = \"true\"\ntimeout = 1e300\n",
         "conveyor.toml:4: 'timeout' must be a number from 0.001 to 31536000"},
        {"[retry]\nretry_backoff = nan\n", "conveyor.toml:2: 'retry_backoff' must be a number"},
        {"[retry]\nmax_retries = 99999999999999\n",
         "conveyor.toml:2: 'max_retries' must be from 0 to 1000000"},
    };
    for (auto& c : cases) {
        write_file(dir.file("conveyor.toml"), c.toml);
        auto [rc, out] = cli(dir, {"worker"});
        EXPECT_EQ(rc, 2) << c.toml << out;
        EXPECT_NE(out.find(c.says), std::string::npos) << out;
        EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
    }
}

TEST(HostileCli, PasswordsAreNeverPrinted) {
    TempDir dir;
    auto [rc, out] = run({CONVEYOR_CLI, "--broker",
                          "amqp://user:s3cr3tpw@127.0.0.1:1/?connect_timeout=1&results="
                          "redis://:redis-pw@127.0.0.1:1/0",
                          "queues"},
                         {}, dir.path().string());
    EXPECT_NE(rc, 0);
    EXPECT_NE(out.find("cannot open broker amqp://user:***@127.0.0.1:1/"), std::string::npos)
        << out;
    EXPECT_EQ(out.find("s3cr3tpw"), std::string::npos) << out;
    EXPECT_EQ(out.find("redis-pw"), std::string::npos) << out;
    auto [rc2, out2] =
        run({CONVEYOR_CLI, "--broker", "amqp://user:s3cr3tpw@127.0.0.1:1/?oops", "queues"}, {},
            dir.path().string());
    EXPECT_EQ(rc2, 2);
    EXPECT_EQ(out2.find("s3cr3tpw"), std::string::npos) << out2;
}

TEST(HostileTaskData, ATaskIdCannotInjectAnHttpHeader) {
    httplib::Server server;
    std::mutex mu;
    httplib::Headers seen;
    server.Post("/h", [&](const httplib::Request& req, httplib::Response& res) {
        std::lock_guard lk(mu);
        seen = req.headers;
        res.set_content("{}", "application/json");
    });
    int port = server.bind_to_any_port("127.0.0.1");
    std::jthread srv([&] { server.listen_after_bind(); });
    while (!server.is_running()) std::this_thread::sleep_for(1ms);
    TempDir dir;
    auto broker = *Broker::open("sqlite://" + dir.file("c.db"));
    Worker worker(broker, WorkerOptions{.queues = {"q"}, .concurrency = 1});
    worker.handle_http("hook", "http://127.0.0.1:" + std::to_string(port) + "/h", TaskOptions{});
    std::jthread th([&] { (void)worker.run(); });
    Client client(broker);
    auto id =
        client.enqueue("hook", {}, {}, EnqueueOptions{.queue = "q", .id = "a\r\nX-Injected: yes"});
    ASSERT_TRUE(id);
    auto r = client.wait(*id, 20s);
    worker.stop();
    server.stop();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::success);
    std::lock_guard lk(mu);
    // One header, not two. (It travels as "a%0D%0AX-Injected: yes"; cpp-httplib's server
    // decodes percent escapes in header values, so it shows the id as it was.)
    EXPECT_EQ(seen.count("X-Injected"), 0u);
    ASSERT_EQ(seen.count("X-Conveyor-Task-Id"), 1u);
    EXPECT_EQ(seen.find("X-Conveyor-Task-Id")->second, "a\r\nX-Injected: yes");
}

TEST(ExecHandler, ACommandDiesWithItsWorker) {
    TempDir dir;
    std::string token = "conveyor-orphan-" + std::to_string(getpid());
    // The shell is named after the token ($0); its `sleep` by a duration no one else uses.
    write_file(dir.file("conveyor.toml"),
               "[[task]]\nname = \"long\"\nqueue = \"q\"\nexec = [\"/bin/sh\", \"-c\", \"echo "
               "started >> " +
                   dir.file("started") + "; sleep 4.0731; echo finished >> " +
                   dir.file("finished") + "\", \"" + token + "\"]\n");
    auto [rc, id] = cli(dir, {"enqueue", "long"});
    ASSERT_EQ(rc, 0) << id;
    auto worker = std::make_unique<Process>(
        std::vector<std::string>{CONVEYOR_CLI, "worker", "--lease", "1"}, dir.file("worker.out"),
        std::vector<std::string>{"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")},
        dir.path().string());
    ASSERT_TRUE(eventually([&] { return count_lines(dir.file("started")) == 1; }, 20s))
        << read_file(dir.file("worker.out"));
    EXPECT_TRUE(process_with(token));
    EXPECT_TRUE(process_with("sleep 4.0731"));
    worker->signal(SIGKILL);
    worker->wait(5s);
    // The command, and the `sleep` it started, went with the worker.
    EXPECT_TRUE(
        eventually([&] { return !process_with(token) && !process_with("sleep 4.0731"); }, 5s));
    std::this_thread::sleep_for(4500ms);
    EXPECT_FALSE(std::filesystem::exists(dir.file("finished")));
    // Once its lease ran out, another worker runs the task, once.
    Process again({CONVEYOR_CLI, "worker", "--lease", "1"}, dir.file("worker2.out"),
                  {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")}, dir.path().string());
    ASSERT_TRUE(eventually([&] { return count_lines(dir.file("finished")) == 1; }, 30s))
        << read_file(dir.file("worker2.out"));
    EXPECT_EQ(count_lines(dir.file("started")), 2);
}

TEST(ExecHandler, ACommandWhoseLeaseIsLostIsStopped) {
    // A worker stalls (SIGSTOP) past its lease; another worker takes the task. When the first
    // resumes it learns the lease is gone and kills its run, which never finishes: only the
    // second's does. (The command runs on while its worker is stopped, so it sleeps long enough
    // for the second worker to take the task before it could finish.)
    TempDir dir;
    write_file(dir.file("conveyor.toml"),
               "[[task]]\nname = \"long\"\nqueue = \"q\"\nmax_retries = 0\nexec = [\"/bin/sh\", "
               "\"-c\", \"echo $$ >> " +
                   dir.file("started") + "; sleep 8; echo $$ >> " + dir.file("finished") + "\"]\n");
    auto [rc, id] = cli(dir, {"enqueue", "long"});
    ASSERT_EQ(rc, 0) << id;
    std::vector<std::string> env = {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")};
    Process first({CONVEYOR_CLI, "worker", "--lease", "0.6"}, dir.file("first.out"), env,
                  dir.path().string());
    ASSERT_TRUE(eventually([&] { return count_lines(dir.file("started")) == 1; }, 20s));
    // Stalled in a write transaction (a lease renewal), it would hold SQLite's write lock and
    // every other process with it: that is SQLite's, not this test's. So it is stopped again
    // until it is stopped between two transactions.
    ASSERT_TRUE(stop_outside_a_write(first, dir.file("c.db")));
    Process second({CONVEYOR_CLI, "worker", "--lease", "0.6"}, dir.file("second.out"), env,
                   dir.path().string());
    ASSERT_TRUE(eventually([&] { return count_lines(dir.file("started")) == 2; }, 20s))
        << read_file(dir.file("second.out"));
    first.signal(SIGCONT);
    ASSERT_TRUE(eventually([&] { return count_lines(dir.file("finished")) >= 1; }, 20s));
    std::this_thread::sleep_for(1s);
    std::string started = read_file(dir.file("started"));
    std::string finished = read_file(dir.file("finished"));
    EXPECT_EQ(count_lines(dir.file("finished")), 1) << finished;
    // The run that finished is the second worker's.
    EXPECT_EQ(started.substr(started.find('\n') + 1), finished);
    EXPECT_NE(read_file(dir.file("first.out")).find("its lease was lost"), std::string::npos)
        << read_file(dir.file("first.out"));
    first.signal(SIGTERM);
    second.signal(SIGTERM);
    EXPECT_EQ(first.wait(20s), 0);
    EXPECT_EQ(second.wait(20s), 0);
}

TEST(DeliveryLimit, ATaskThatKeepsKillingItsWorkerIsDeadLetteredOnSqlite) {
    TempDir dir;
    write_file(dir.file("conveyor.toml"),
               "[[task]]\nname = \"killer\"\nqueue = \"q\"\nexec = [\"/bin/sh\", \"-c\", \"echo x "
               ">> " +
                   dir.file("started") + "; sleep 30\"]\n");
    auto [rc, id] = cli(dir, {"enqueue", "killer", "--id", "killer-1"});
    ASSERT_EQ(rc, 0) << id;
    std::vector<std::string> env = {"CONVEYOR_BROKER=sqlite://" + dir.file("c.db")};
    for (int i = 1; i <= 5; ++i) {
        Process w({CONVEYOR_CLI, "worker", "--lease", "0.3"}, dir.file("w.out"), env,
                  dir.path().string());
        ASSERT_TRUE(eventually([&] { return count_lines(dir.file("started")) == i; }, 20s))
            << read_file(dir.file("w.out"));
        w.signal(SIGKILL);
        w.wait(5s);
    }
    Process last({CONVEYOR_CLI, "worker", "--lease", "0.3"}, dir.file("last.out"), env,
                 dir.path().string());
    std::string listed;
    ASSERT_TRUE(eventually(
        [&] {
            listed = cli(dir, {"dlq", "list", "--queue", "q"}).second;
            return listed.find("killer-1") != std::string::npos;
        },
        20s))
        << read_file(dir.file("last.out"));
    EXPECT_NE(listed.find("delivered 6 times without being settled (delivery limit 5)"),
              std::string::npos)
        << listed;
    EXPECT_EQ(count_lines(dir.file("started")), 5);
    last.signal(SIGTERM);
    EXPECT_EQ(last.wait(20s), 0);
}

TEST(SqliteStorage, AWriteLockHeldPastTheBusyTimeoutIsWaitedOut) {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db") + "?busy_timeout=0.2";
    write_file(
        dir.file("conveyor.toml"),
        "[[task]]\nname = \"t\"\nqueue = \"q\"\nexec = \"echo ran >> " + dir.file("ran") + "\"\n");
    for (int i = 0; i < 20; ++i) ASSERT_EQ(cli(dir, {"--broker", url, "enqueue", "t"}).first, 0);
    // Another process takes the write lock and keeps it for 4 s.
    WriteLockHolder lock(dir, dir.file("c.db"), 4, "EXCLUSIVE");
    ASSERT_TRUE(lock.held()) << lock.output();
    Process worker({CONVEYOR_CLI, "--broker", url, "worker", "--http", "127.0.0.1:0"},
                   dir.file("worker.out"), {}, dir.path().string());
    // Its health check says the broker fails, and why, while the lock is held.
    std::string url_http = testsupport::served_url(dir.file("worker.out"), 10s);
    ASSERT_FALSE(url_http.empty()) << read_file(dir.file("worker.out"));
    auto health = testsupport::await_status(url_http, "/healthz", 503, 10s);
    ASSERT_EQ(health.status, 503) << health.body;
    auto why = Json::parse(health.body, nullptr, false);
    EXPECT_EQ(why.value("status", ""), "failing") << health.body;
    EXPECT_NE(why.value("reason", "").find("write lock"), std::string::npos) << health.body;
    EXPECT_EQ(testsupport::sample(testsupport::http_request(url_http, "/metrics").body,
                                  "conveyor_broker_up"),
              0);
    EXPECT_EQ(testsupport::http_request(url_http, "/readyz").status, 503);
    ASSERT_TRUE(eventually([&] { return count_lines(dir.file("ran")) == 20; }, 30s))
        << read_file(dir.file("worker.out"));
    std::string log = read_file(dir.file("worker.out"));
    EXPECT_NE(log.find("another process holds the write lock"), std::string::npos) << log;
    EXPECT_NE(log.find("retrying with backoff"), std::string::npos) << log;
    EXPECT_NE(log.find("the broker works again"), std::string::npos) << log;
    EXPECT_EQ(testsupport::http_request(url_http, "/healthz").status, 200);
    EXPECT_FALSE(worker.wait(0ms));  // still running
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(20s), 0);
}

namespace {

/// A small tmpfs of its own (a real disk that fills up), unmounted at the end.
struct SmallDisk {
    std::string at;
    explicit SmallDisk(const TempDir& dir) : at(dir.file("disk")) {
        std::filesystem::create_directory(at);
        mounted = mount("tmpfs", at.c_str(), "tmpfs", 0, "size=8m") == 0;
    }
    ~SmallDisk() {
        if (mounted) umount2(at.c_str(), MNT_DETACH);
    }
    /// Writes a file until the disk is full.
    void fill() const {
        std::ofstream filler(at + "/filler", std::ios::binary);
        std::string chunk(64 * 1024, 'x');
        while (filler.write(chunk.data(), std::streamsize(chunk.size())) && filler.flush()) {
        }
    }
    void make_room() const { std::filesystem::remove(at + "/filler"); }
    bool mounted = false;
};

}  // namespace

TEST(SqliteStorage, ALockHeldForTheBusyTimeoutIsSaidOnceItHasPassed) {
    // busy_timeout is how long a write waits for another process's lock: then a command fails
    // with a sentence, and a worker says it backs off (it was seven times as long: each wait of
    // a transaction was retried five times over, after a wait as the broker opened).
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db") + "?busy_timeout=1";
    write_file(
        dir.file("conveyor.toml"),
        "[[task]]\nname = \"t\"\nqueue = \"q\"\nexec = \"echo ran >> " + dir.file("ran") + "\"\n");
    ASSERT_EQ(cli(dir, {"--broker", url, "enqueue", "t"}).first, 0);
    WriteLockHolder lock(dir, dir.file("c.db"), 9);
    ASSERT_TRUE(lock.held()) << lock.output();
    auto began = std::chrono::steady_clock::now();
    auto [rc, out] = cli(dir, {"--broker", url, "enqueue", "t"});
    auto took = std::chrono::steady_clock::now() - began;
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(out.find("another process holds the write lock"), std::string::npos) << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
    EXPECT_GE(took, 1s);
    EXPECT_LT(took, 4s);
    began = std::chrono::steady_clock::now();
    Process worker({CONVEYOR_CLI, "--broker", url, "worker"}, dir.file("worker.out"), {},
                   dir.path().string());
    ASSERT_TRUE(eventually(
        [&] {
            return read_file(dir.file("worker.out")).find("retrying with backoff") !=
                   std::string::npos;
        },
        10s))
        << read_file(dir.file("worker.out"));
    took = std::chrono::steady_clock::now() - began;
    EXPECT_GE(took, 1s);
    EXPECT_LT(took, 4s);  // (six waits of the lock, and one more as the broker opened: 7 s)
    // The lock gone, the task runs.
    ASSERT_TRUE(eventually([&] { return count_lines(dir.file("ran")) == 1; }, 30s))
        << read_file(dir.file("worker.out"));
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(20s), 0);
}

TEST(SqliteStorage, AWorkerWhoseStartWritesWaitsOutALockAsItWouldWhileRunning) {
    // What a worker writes as it starts meets another process's lock past the busy timeout: a
    // queue's new fair key (written as the broker opens), then, on a file of its own, a task's
    // fleet-wide limit (written as the worker starts). Each time the worker says so, its health
    // check says why, and it waits, then runs the task; stopped while it waits, it exits 0.
    struct Pass {
        std::string what;
        std::string before, after;  // conveyor.toml for the enqueue, and for the worker
        const char* says;
        bool stop;  // stopped (SIGTERM) while it waits
    };
    auto task = [](const std::string& ran, const std::string& extra) {
        return "[[task]]\nname = \"t\"\nqueue = \"q\"\n" + extra + "exec = \"echo ran >> " + ran +
               "\"\n";
    };
    TempDir dir;
    std::string ran = dir.file("ran");
    const std::string fair = "[[queue]]\nname = \"q\"\nfair_key = \"kwargs.tenant\"\n";
    const std::string limit = "rate_limit = \"100/s\"\n";
    const char* fair_says = "cannot record the queues' settings";
    const char* limit_says = "setting task 't' limits failed";
    Pass passes[] = {
        {"fair_key", task(ran, ""), fair + task(ran, ""), fair_says, false},
        {"limit", task(ran, limit), task(ran, limit), limit_says, false},
        {"fair_key_stopped", task(ran, ""), fair + task(ran, ""), fair_says, true},
        {"limit_stopped", task(ran, limit), task(ran, limit), limit_says, true},
    };
    int runs = 0;
    for (auto& pass : passes) {
        SCOPED_TRACE(pass.what);
        std::string db = dir.file(pass.what + ".db");
        std::string url = "sqlite://" + db + "?busy_timeout=0.3";
        write_file(dir.file("conveyor.toml"), pass.before);
        ASSERT_EQ(
            cli(dir, {"--broker", url, "enqueue", "t", "--kwargs", R"({"tenant": "a"})"}).first, 0);
        write_file(dir.file("conveyor.toml"), pass.after);
        // The lock is held until the worker said it meets it.
        WriteLockHolder lock(dir, db, 60);
        ASSERT_TRUE(lock.held()) << lock.output();
        std::string out = dir.file(pass.what + ".out");
        Process worker({CONVEYOR_CLI, "--broker", url, "worker", "--http", "127.0.0.1:0"}, out, {},
                       dir.path().string());
        EXPECT_TRUE(eventually(
            [&] {
                auto log = read_file(out);
                return log.find(pass.says) != std::string::npos &&
                       log.find("another process holds the write lock") != std::string::npos;
            },
            30s))
            << read_file(out);
        // Its health check says why, while it waits.
        std::string http = testsupport::served_url(out, 10s);
        ASSERT_FALSE(http.empty()) << read_file(out);
        auto health = testsupport::await_status(http, "/healthz", 503, 10s);
        EXPECT_EQ(health.status, 503) << health.body;
        EXPECT_NE(health.body.find("write lock"), std::string::npos) << health.body;
        if (pass.stop) {
            worker.signal(SIGTERM);
            EXPECT_EQ(worker.wait(20s), 0) << read_file(out);
            EXPECT_NE(read_file(out).find("stopped while"), std::string::npos) << read_file(out);
            EXPECT_EQ(count_lines(ran), runs);  // nothing ran
            lock.release();
            continue;
        }
        lock.release();
        ++runs;
        ASSERT_TRUE(eventually([&] { return count_lines(ran) == runs; }, 30s)) << read_file(out);
        EXPECT_FALSE(worker.wait(0ms)) << read_file(out);  // still running
        EXPECT_NE(read_file(out).find("retrying"), std::string::npos) << read_file(out);
        EXPECT_NE(read_file(out).find("works again"), std::string::npos) << read_file(out);
        worker.signal(SIGTERM);
        EXPECT_EQ(worker.wait(20s), 0) << read_file(out);
    }
    // Fair keys already recorded are not written again: a command opening the broker under
    // another process's lock does not wait for it.
    write_file(dir.file("conveyor.toml"), fair + task(ran, ""));
    WriteLockHolder lock(dir, dir.file("fair_key.db"), 60);
    ASSERT_TRUE(lock.held()) << lock.output();
    auto [rc, out] = cli(
        dir, {"--broker", "sqlite://" + dir.file("fair_key.db") + "?busy_timeout=0.3", "queues"});
    EXPECT_EQ(rc, 0) << out;
    EXPECT_EQ(out.find("cannot record"), std::string::npos) << out;
    lock.release();
}

TEST(SqliteStorage, AFullDiskIsWaitedOutAndNothingIsLost) {
    TempDir dir;
    SmallDisk disk(dir);
    ASSERT_TRUE(disk.mounted) << "mounting a tmpfs needs root: " << std::strerror(errno);
    std::string db = disk.at + "/c.db";
    std::string url = "sqlite://" + db;
    write_file(
        dir.file("conveyor.toml"),
        "[[task]]\nname = \"t\"\nqueue = \"q\"\nexec = \"echo ran >> " + dir.file("ran") + "\"\n");
    for (int i = 0; i < 50; ++i) ASSERT_EQ(cli(dir, {"--broker", url, "enqueue", "t"}).first, 0);
    // The write-ahead log is emptied and kept open (so it stays, empty), then the disk is
    // filled: the worker's first write needs room that is not there.
    Process holder({"/usr/bin/python3", "-c",
                    "import sqlite3, sys, time\n"
                    "c = sqlite3.connect(sys.argv[1])\n"
                    "c.execute('PRAGMA wal_checkpoint(TRUNCATE)')\n"
                    "open(sys.argv[2], 'w').write('ready')\n"
                    "time.sleep(120)\n",
                    db, dir.file("held")},
                   dir.file("holder.out"));
    ASSERT_TRUE(eventually([&] { return std::filesystem::exists(dir.file("held")); }, 10s))
        << read_file(dir.file("holder.out"));
    disk.fill();
    Process worker({CONVEYOR_CLI, "--broker", url, "worker"}, dir.file("worker.out"), {},
                   dir.path().string());
    ASSERT_TRUE(eventually(
        [&] {
            return read_file(dir.file("worker.out")).find("retrying with backoff") !=
                   std::string::npos;
        },
        20s))
        << read_file(dir.file("worker.out"));
    EXPECT_NE(read_file(dir.file("worker.out")).find("database or disk is full"), std::string::npos)
        << read_file(dir.file("worker.out"));
    EXPECT_FALSE(worker.wait(1s));  // waiting, not gone
    disk.make_room();
    ASSERT_TRUE(eventually([&] { return count_lines(dir.file("ran")) == 50; }, 30s))
        << read_file(dir.file("worker.out"));
    EXPECT_NE(read_file(dir.file("worker.out")).find("the broker works again"), std::string::npos);
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(20s), 0);
    auto [rc, q] = cli(dir, {"--broker", url, "--json", "queues"});
    EXPECT_EQ(rc, 0);
    auto counts = Json::parse(q, nullptr, false);
    ASSERT_TRUE(counts.is_array()) << q;
    EXPECT_EQ(counts[0]["ready"], 0);
    EXPECT_EQ(counts[0]["dead"], 0);
}

TEST(SqliteStorage, AWorkerStartedOnAFullDiskWaitsForRoom) {
    TempDir dir;
    SmallDisk disk(dir);
    ASSERT_TRUE(disk.mounted) << "mounting a tmpfs needs root: " << std::strerror(errno);
    std::string url = "sqlite://" + disk.at + "/c.db";
    write_file(
        dir.file("conveyor.toml"),
        "[[task]]\nname = \"t\"\nqueue = \"q\"\nexec = \"echo ran >> " + dir.file("ran") + "\"\n");
    disk.fill();
    Process worker({CONVEYOR_CLI, "--broker", url, "worker"}, dir.file("worker.out"), {},
                   dir.path().string());
    ASSERT_TRUE(eventually(
        [&] { return read_file(dir.file("worker.out")).find("retrying in") != std::string::npos; },
        20s))
        << read_file(dir.file("worker.out"));
    EXPECT_FALSE(worker.wait(1s));
    disk.make_room();
    ASSERT_EQ(cli(dir, {"--broker", url, "enqueue", "t"}).first, 0);
    ASSERT_TRUE(eventually([&] { return count_lines(dir.file("ran")) == 1; }, 30s))
        << read_file(dir.file("worker.out"));
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(20s), 0);
}

TEST(SqliteStorage, ADeletedWriteAheadLogIsRecoveredAndNothingIsLost) {
    TempDir dir;
    std::string db = dir.file("c.db");
    std::string url = "sqlite://" + db;
    write_file(
        dir.file("conveyor.toml"),
        "[[task]]\nname = \"t\"\nqueue = \"q\"\nexec = \"echo ran >> " + dir.file("ran") + "\"\n");
    // A worker of another queue keeps the database open, so the log is not folded into the
    // file when the enqueuing commands exit: the tasks live only in the log.
    Process holder({CONVEYOR_CLI, "--broker", url, "worker", "--queues", "elsewhere"},
                   dir.file("holder.out"), {}, dir.path().string());
    ASSERT_TRUE(eventually(
        [&] { return read_file(dir.file("holder.out")).find("queues") != std::string::npos; },
        10s));
    for (int i = 0; i < 20; ++i) ASSERT_EQ(cli(dir, {"--broker", url, "enqueue", "t"}).first, 0);
    ASSERT_GT(std::filesystem::file_size(db + "-wal"), 0u);
    std::filesystem::remove(db + "-wal");
    // The worker holding the deleted log copies it into the database and takes a new one...
    ASSERT_TRUE(eventually(
        [&] {
            return read_file(dir.file("holder.out")).find("write-ahead log") != std::string::npos;
        },
        10s))
        << read_file(dir.file("holder.out"));
    // ...so every other process reads what it held, even after that worker dies without a
    // chance to close its database.
    holder.signal(SIGKILL);
    holder.wait(10s);
    auto [rc, q] = cli(dir, {"--broker", url, "--json", "queues"});
    ASSERT_EQ(rc, 0) << q;
    auto counts = Json::parse(q, nullptr, false);
    ASSERT_TRUE(counts.is_array()) << q;
    auto ready = [&](const std::string& name) {
        for (auto& c : counts)
            if (c.value("queue", "") == name) return c.value("ready", -1);
        return -1;
    };
    EXPECT_EQ(ready("q"), 20) << q;
    ASSERT_EQ(cli(dir, {"--broker", url, "enqueue", "t"}).first, 0);
    Process worker({CONVEYOR_CLI, "--broker", url, "worker"}, dir.file("worker.out"), {},
                   dir.path().string());
    ASSERT_TRUE(eventually([&] { return count_lines(dir.file("ran")) == 21; }, 30s))
        << read_file(dir.file("worker.out"));
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(20s), 0);
}

TEST(SqliteStorage, ReadOnlyAndCorruptFilesSaySo) {
    TempDir dir;
    std::filesystem::permissions(dir.path(), std::filesystem::perms::all);
    ASSERT_EQ(cli(dir, {"enqueue", "t", "--queue", "q"}).first, 0);
    // Another user may read the file, not write it.
    auto [rc, out] = run({"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          CONVEYOR_CLI, "--broker", "sqlite://" + dir.file("c.db"), "queues"},
                         {}, "/");
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find("is read-only for this process"), std::string::npos) << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
    write_file(dir.file("corrupt.db"), std::string(8192, 'z'));
    auto [rc2, out2] =
        run({CONVEYOR_CLI, "--broker", "sqlite://" + dir.file("corrupt.db"), "queues"});
    EXPECT_EQ(rc2, 1) << out2;
    EXPECT_NE(out2.find("not a SQLite database, or it is corrupt"), std::string::npos) << out2;
}
