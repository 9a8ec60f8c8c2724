#include "conveyor/config.hpp"

#include <gtest/gtest.h>

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
        {"[[task]]\nname = \"t\"\nmax_retries = -1", "must not be negative"},
        {"[[task]]\nname = \"t\"\ntimeout = \"soon\"", "'timeout' must be a number"},
        {"[[task]]\nname = \"t\"\nhttp = \"ftp://x\"", "http:// or https://"},
        {"[worker]\nconcurrency = 0", "1..1024"},
        {"this is not toml", "cfg:1"},
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
