#include "conveyor/config.hpp"

#include <gtest/gtest.h>

#include <limits>

#include "conveyor/limits.hpp"

using namespace conveyor;

TEST(Config, ParsesTheDocumentedKeys) {
    auto c = parse_config(R"(
broker = "sqlite://conveyor.db"
[[queue]]
name = "billing"
[[queue]]
name = "imports"
format = "raw"
task = "orders.import"
[[task]]
name = "orders.bill"
queue = "billing"
exec = ["php", "bill.php"]
timeout = 30
max_retries = 5
retry_backoff = 1.0
retry_backoff_max = 600
[[task]]
name = "orders.ship"
http = "http://127.0.0.1:8080/ship"
input = "body"
[worker]
concurrency = 8
lease = 5
)");
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_EQ(c->broker, "sqlite://conveyor.db");
    ASSERT_EQ(c->queues.size(), 2u);
    EXPECT_EQ(c->find_queue("imports")->format, QueueFormat::raw);
    auto* bill = c->find_task("orders.bill");
    ASSERT_TRUE(bill);
    EXPECT_EQ(bill->exec, (std::vector<std::string>{"php", "bill.php"}));
    EXPECT_EQ(bill->timeout, 30.0);
    EXPECT_EQ(bill->retry.max_retries, 5);
    EXPECT_EQ(bill->retry.backoff_max, 600.0);
    EXPECT_EQ(c->queue_for("orders.bill"), "billing");
    EXPECT_EQ(c->queue_for("unknown"), "celery");
    EXPECT_EQ(c->find_task("orders.ship")->http, "http://127.0.0.1:8080/ship");
    EXPECT_TRUE(c->find_task("orders.ship")->input_body);
    EXPECT_FALSE(bill->input_body);
    EXPECT_EQ(c->worker.concurrency, 8);
    EXPECT_EQ(c->worker.lease, 5.0);
}

TEST(Config, MistakesGetOneSentenceWithTheLine) {
    struct Case {
        const char* toml;
        const char* says;
    };
    Case cases[] = {
        {"broker = 5", "'broker' must be a string"},
        {"brokr = \"x\"", "unknown key 'brokr'"},
        {"[[queue]]\nname = \"q\"\nformat = \"xml\"", "format 'xml'"},
        {"[[queue]]\nname = \"q\"\nformat = \"raw\"", "needs a 'task'"},
        {"[[task]]\nname = \"t\"\nexec = [\"a\"]\nhttp = \"http://x\"", "both 'exec' and 'http'"},
        {"[[task]]\nname = \"t\"\nmax_retries = -1", "cfg:3: 'max_retries' must be from 0 to"},
        {"[[task]]\nname = \"t\"\ntimeout = \"soon\"", "'timeout' must be a number"},
        {"[[task]]\nname = \"t\"\nhttp = \"ftp://x\"", "http:// or https://"},
        // The parser quotes the newline it met: still one line (found by fuzz/fuzz_config).
        {"[[task]]\nname = \"t\"\ntimeout =t\n", "cfg:3: Error while parsing boolean"},
        {"[[task]]\nname = \"t\"\ninput = \"xml\"", "cfg:3: task 't': 'input' must be \"task\""},
        {"[worker]\nconcurrency = 0", "1..1024"},
        {"this is not toml", "cfg:1"},
        // Numbers that would overflow a clock or invert their meaning, and NaN.
        {"[worker]\nlease = 1e300", "cfg:2: 'lease' must be a number from 0.2 to 86400"},
        {"[worker]\nlease = nan", "cfg:2: 'lease' must be a number from 0.2 to 86400"},
        {"[worker]\nprefetch = 10000000", "cfg:2: 'prefetch' must be from 0"},
        {"[worker]\nshutdown_grace = inf", "'shutdown_grace' must be a number from 0 to 86400"},
        {"[worker]\ndelivery_limit = -1", "'delivery_limit' must be from 0"},
        {"[[task]]\nname = \"t\"\ntimeout = 1e300", "cfg:3: 'timeout' must be a number from"},
        {"[[task]]\nname = \"t\"\ntimeout = 0", "'timeout' must be a number from 0.001"},
        {"[[task]]\nname = \"t\"\nretry_backoff = nan", "cfg:3: 'retry_backoff' must be a"},
        {"[retry]\nretry_backoff_max = -1", "cfg:2: 'retry_backoff_max' must be a number from 0"},
        {"[retry]\nmax_retries = 99999999999999", "'max_retries' must be from 0 to 1000000"},
        {"[[schedule]]\nname = \"s\"\ntask = \"t\"\nevery = nan", "every must be from 1"},
        {"[[queue]]\nname = \"q\"\nfair_key = \"tenant\"",
         "cfg:3: queue 'q': fair limit key 'tenant' is not kwargs.NAME or args.N"},
        // Limits across the fleet.
        {"[[task]]\nname = \"t\"\nrate_limit = \"fast\"",
         "cfg:3: task 't': rate limit 'fast' is not N/s, N/m or N/h"},
        {"[[task]]\nname = \"t\"\nrate_limit = \"10/d\"", "rate limit '10/d' is not N/s"},
        {"[[task]]\nname = \"t\"\nrate_limit = \"-1/s\"", "rate limit '-1/s' is not N/s"},
        {"[[task]]\nname = \"t\"\nrate_limit = \"2000000/s\"", "above 1000000/s"},
        {"[[task]]\nname = \"t\"\nrate_limit = true", "'rate_limit' must be a string"},
        {"[[task]]\nname = \"t\"\nmax_concurrency = -2", "'max_concurrency' must be from 0"},
        {"[[task]]\nname = \"t\"\nmax_concurrency = 2\nlimit_key = \"body\"",
         "limit key 'body' is not kwargs.NAME or args.N"},
        {"[[task]]\nname = \"t\"\nlimit_key = \"kwargs.x\"",
         "'limit_key' keys a limit; set 'rate_limit' or 'max_concurrency' too"},
        {"[[task]]\nname = \"t\"\nrate_limit = 5\nlimit_key = \"args.0\"\n"
         "rate_limit_key = \"args.1\"",
         "sets both 'limit_key' and 'rate_limit_key'"},
        {"[[schedule]]\nname = \"s\"\ntask = \"t\"\nevery = 5\ncatch_up_window = 1e300",
         "catch_up_window must be from 0"},
    };
    for (auto& c : cases) {
        auto r = parse_config(c.toml, "cfg");
        ASSERT_FALSE(r) << c.toml;
        EXPECT_EQ(r.error().code, Errc::invalid_argument);
        EXPECT_NE(r.error().message.find(c.says), std::string::npos) << r.error().message;
        EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << r.error().message;
    }
}

TEST(Config, MissingFileIsNotFound) {
    auto r = load_config("/nonexistent/conveyor.toml");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::not_found);
}

TEST(Config, ParsesTopologyForTheAmqpEngine) {
    auto c = parse_config(R"(
[[exchange]]
name = "orders"
type = "fanout"
[[queue]]
name = "billing"
type = "quorum"
max_length = 1000
overflow = "reject-publish"
[[queue]]
name = "shipping"
max_priority = 10
arguments = { "x-queue-version" = 2 }
[[queue]]
name = "ledger"
partitions = 4
[[binding]]
exchange = "orders"
queue = "billing"
[[binding]]
exchange = "orders"
queue = "inventory"
routing_key = "order.created"
)");
    ASSERT_TRUE(c) << c.error().message;
    auto t = c->topology();
    ASSERT_EQ(t.exchanges.size(), 1u);
    EXPECT_EQ(t.exchanges[0].type, "fanout");
    ASSERT_EQ(t.queues.size(), 4u);  // inventory comes from its binding
    EXPECT_EQ(t.queues[0].type, "quorum");
    EXPECT_EQ(t.queues[0].max_length, 1000);
    EXPECT_EQ(t.queues[0].overflow, "reject-publish");
    EXPECT_EQ(t.queues[1].max_priority, 10);
    EXPECT_EQ(t.queues[1].arguments["x-queue-version"], 2);
    EXPECT_EQ(t.queues[2].partitions, 4);
    EXPECT_EQ(t.queues[3].name, "inventory");
    ASSERT_EQ(t.bindings.size(), 2u);
    EXPECT_EQ(t.bindings[1].routing_key, "order.created");
}

TEST(Config, TopologyMistakesAreNamed) {
    auto bad_type = parse_config("[[exchange]]\nname = \"x\"\ntype = \"fan\"\n", "c.toml");
    ASSERT_FALSE(bad_type);
    EXPECT_NE(bad_type.error().message.find("c.toml:3"), std::string::npos);
    EXPECT_NE(bad_type.error().message.find("exchange 'x' has type 'fan'"), std::string::npos);
    auto quorum_prio =
        parse_config("[[queue]]\nname = \"q\"\ntype = \"quorum\"\nmax_priority = 5\n", "c.toml");
    ASSERT_FALSE(quorum_prio);
    EXPECT_NE(quorum_prio.error().message.find("quorum queues have no priorities"),
              std::string::npos);
    auto both = parse_config("[[binding]]\nexchange = \"x\"\nqueue = \"q\"\nto_exchange = \"y\"\n",
                             "c.toml");
    ASSERT_FALSE(both);
    EXPECT_NE(both.error().message.find("exactly one of 'queue' and 'to_exchange'"),
              std::string::npos);
}

TEST(Config, SchedulesParseAndMistakesNameTheLine) {
    auto c = parse_config(R"(
[[schedule]]
name = "settlement"
task = "billing.settle"
cron = "30 2 * * *"
timezone = "Europe/Berlin"
args = [1]
catch_up = "all"
overlap = "skip"
[[schedule]]
name = "sync"
task = "crm.sync"
every = 10
kwargs = { full = false }
queue = "crm"
)");
    ASSERT_TRUE(c) << c.error().message;
    ASSERT_EQ(c->schedules.size(), 2u);
    EXPECT_EQ(c->schedules[0].cron, "30 2 * * *");
    EXPECT_EQ(c->schedules[0].timezone, "Europe/Berlin");
    EXPECT_EQ(c->schedules[0].args, Json::array({1}));
    EXPECT_EQ(c->schedules[0].catch_up, "all");
    EXPECT_EQ(c->schedules[0].overlap, "skip");
    EXPECT_EQ(*c->schedules[1].every, 10);
    EXPECT_EQ(c->schedules[1].kwargs, Json({{"full", false}}));

    auto bad = parse_config("[[schedule]]\nname = \"x\"\ntask = \"t\"\ncron = \"* * 32 * *\"\n",
                            "conveyor.toml");
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.error().message.find("conveyor.toml:1"), std::string::npos)
        << bad.error().message;
    EXPECT_NE(bad.error().message.find("day of month 32 is out of range"), std::string::npos)
        << bad.error().message;
    auto twice = parse_config(
        "[[schedule]]\nname = \"x\"\ntask = \"t\"\nevery = 5\n[[schedule]]\nname = \"x\"\n"
        "task = \"t\"\nevery = 6\n");
    ASSERT_FALSE(twice);
    EXPECT_NE(twice.error().message.find("defined twice"), std::string::npos);
    auto key = parse_config("[[schedule]]\nname = \"x\"\ntask = \"t\"\nevery = 5\ncolor = 1\n");
    ASSERT_FALSE(key);
    EXPECT_NE(key.error().message.find("unknown key 'color'"), std::string::npos);
}

TEST(Config, DeclareFlagsPassiveAndRawExchangesAreConfiguration) {
    auto c = parse_config(R"(
[[exchange]]
name = "task_exchange"
durable = false
auto_delete = true
internal = false
[[exchange]]
name = "plain"
format = "raw"
[[queue]]
name = "task_queue"
durable = false
auto_delete = true
exclusive = true
format = "raw"
task = "orders.import"
[[queue]]
name = "owned"
passive = true
[[binding]]
exchange = "task_exchange"
queue = "task_queue"
)",
                          "cfg");
    ASSERT_TRUE(c) << c.error().message;
    EXPECT_FALSE(c->exchanges[0].durable);
    EXPECT_TRUE(c->exchanges[0].auto_delete);
    auto* q = c->find_queue("task_queue");
    EXPECT_FALSE(q->declare.durable);
    EXPECT_TRUE(q->declare.auto_delete);
    EXPECT_TRUE(q->declare.exclusive);
    EXPECT_TRUE(c->find_queue("owned")->declare.passive);
    // Tasks published to an exchange whose bindings all lead to raw queues go out raw.
    EXPECT_TRUE(c->publishes_raw("task_exchange", ""));
    EXPECT_TRUE(c->publishes_raw("plain", ""));
    EXPECT_TRUE(c->publishes_raw("", "task_queue"));
    EXPECT_FALSE(c->publishes_raw("", "owned"));
    EXPECT_FALSE(c->publishes_raw("unknown", ""));
    for (auto [toml, says] : std::vector<std::pair<std::string, std::string>>{
             {"[[queue]]\nname = \"q\"\ndurable = \"no\"",
              "cfg:3: 'durable' must be true or false"},
             {"[[queue]]\nname = \"q\"\ntype = \"quorum\"\ndurable = false",
              "quorum queues are durable"},
             {"[[exchange]]\nname = \"x\"\nformat = \"xml\"", "format 'xml'"}}) {
        auto r = parse_config(toml, "cfg");
        ASSERT_FALSE(r) << toml;
        EXPECT_NE(r.error().message.find(says), std::string::npos) << r.error().message;
    }
}

TEST(Config, TaskLimitsAcrossTheFleet) {
    auto cfg = parse_config(
        "[[task]]\nname = \"a\"\nrate_limit = \"100/m\"\nrate_limit_key = \"kwargs.customer\"\n"
        "[[task]]\nname = \"b\"\nmax_concurrency = 5\nrate_limit = 2.5\n"
        "[[task]]\nname = \"c\"\nrate_limit = \"0\"\n"
        "[[task]]\nname = \"d\"\n",
        "cfg");
    ASSERT_TRUE(cfg) << cfg.error().message;
    auto* a = cfg->find_task("a");
    EXPECT_DOUBLE_EQ(*a->rate_limit, 100.0 / 60);
    EXPECT_FALSE(a->max_concurrency);
    EXPECT_EQ(a->limit_key, "kwargs.customer");
    auto* b = cfg->find_task("b");
    EXPECT_DOUBLE_EQ(*b->rate_limit, 2.5);
    EXPECT_EQ(*b->max_concurrency, 5);
    EXPECT_EQ(*cfg->find_task("c")->rate_limit, 0.0);  // set: removes the broker's
    EXPECT_FALSE(cfg->find_task("d")->rate_limit);     // unset: leaves the broker's alone
}

TEST(Limits, RatesAreReadAndWrittenAsCeleryDoes) {
    EXPECT_DOUBLE_EQ(*parse_rate("100/s"), 100);
    EXPECT_DOUBLE_EQ(*parse_rate("100"), 100);
    EXPECT_DOUBLE_EQ(*parse_rate("6/m"), 0.1);
    EXPECT_DOUBLE_EQ(*parse_rate("3600/h"), 1);
    EXPECT_DOUBLE_EQ(*parse_rate("0.5/s"), 0.5);
    EXPECT_DOUBLE_EQ(*parse_rate(""), 0);
    EXPECT_DOUBLE_EQ(*parse_rate("0"), 0);
    for (auto bad : {"x", "/s", "1/", "1/sec", "1 /s", "-5", "nan/s", "inf", "1e7/s", "1e400/s",
                     "-0.5/m", "5/s/s"})
        EXPECT_FALSE(parse_rate(bad)) << bad;
    EXPECT_EQ(format_rate(100), "100/s");
    EXPECT_EQ(format_rate(0.1), "6/m");
    EXPECT_EQ(format_rate(1.0 / 3600), "1/h");
    EXPECT_EQ(format_rate(0), "0");
    EXPECT_EQ(describe_limit({.task = "t", .rate = 20, .max_concurrency = 2, .key = "args.0"}),
              "20/s, at most 2 running, per args.0");
}

TEST(Limits, EveryEngineChecksALimitAlike) {
    EXPECT_TRUE(check_limit({.task = "t", .rate = 20, .max_concurrency = 2, .key = "args.0"}));
    EXPECT_TRUE(check_limit({.task = "t"}));  // no limit: removes one
    EXPECT_TRUE(check_limit({.task = "t", .rate = 1.0 / (7 * 86400)}));
    for (const TaskLimit& bad :
         std::vector<TaskLimit>{{.task = "", .rate = 1},
                                {.task = "t", .rate = -1},
                                {.task = "t", .rate = std::numeric_limits<double>::quiet_NaN()},
                                {.task = "t", .rate = std::numeric_limits<double>::infinity()},
                                {.task = "t", .rate = 2e6},
                                {.task = "t", .rate = 1e-300},  // a start every 10^292 years
                                {.task = "t", .max_concurrency = -1},
                                {.task = "t", .rate = 1, .key = "body"}}) {
        auto r = check_limit(bad);
        ASSERT_FALSE(r) << bad.task << " " << bad.rate;
        EXPECT_EQ(r.error().code, Errc::invalid_argument);
    }
    EXPECT_NE(check_limit({.task = "t", .rate = 1e-9}).error().message.find("one start a week"),
              std::string::npos);
}

TEST(Limits, AKeyComesFromTheArgumentsAndIsBounded) {
    Json args = Json::array({"acme", 7, Json::object({{"a", 1}})});
    Json kwargs = {{"customer", "c-1"}, {"n", 3}, {"none", nullptr}};
    EXPECT_EQ(limit_key_of("args.0", args, kwargs), "acme");
    EXPECT_EQ(limit_key_of("args.1", args, kwargs), "7");
    EXPECT_EQ(limit_key_of("args.2", args, kwargs), "{\"a\":1}");
    EXPECT_EQ(limit_key_of("args.9", args, kwargs), "");
    EXPECT_EQ(limit_key_of("kwargs.customer", args, kwargs), "c-1");
    EXPECT_EQ(limit_key_of("kwargs.n", args, kwargs), "3");
    EXPECT_EQ(limit_key_of("kwargs.none", args, kwargs), "");
    EXPECT_EQ(limit_key_of("kwargs.missing", args, kwargs), "");
    EXPECT_EQ(limit_key_of("kwargs.customer", Json("not an array"), Json(5)), "");
    // Long keys are cut at 200 bytes, at a character boundary.
    std::string long_key(199, 'x');
    long_key += "\xc3\xa9\xc3\xa9";
    EXPECT_EQ(limit_key_of("args.0", Json::array({long_key}), Json::object()),
              std::string(199, 'x'));
    for (auto ok : {"kwargs.x", "args.0", "args.12"}) EXPECT_TRUE(parse_limit_key(ok)) << ok;
    for (auto bad : {"kwargs.", "args.", "args.x", "args.-1", "body", ""})
        EXPECT_FALSE(parse_limit_key(bad)) << bad;
}
