// The Prometheus text format, a worker's metrics and their bounded labels, listen addresses,
// and the queue counts RabbitMQ's management API gives.

#include "worker/metrics.hpp"

#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "broker/amqp/amqp_management.hpp"
#include "conveyor/worker.hpp"
#include "core/url.hpp"
#include "server/prometheus.hpp"

using namespace conveyor;
using namespace conveyor::detail;

namespace {
using Pair = std::pair<std::string_view, std::string_view>;

bool has_line(const std::string& text, const std::string& line) {
    return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}
}  // namespace

TEST(Prometheus, LabelValuesAndHelpAreEscaped) {
    EXPECT_EQ(escape_label_value(R"(a\b"c)"
                                 "\n"),
              R"(a\\b\"c\n)");
    PromText out;
    out.family("x_total", "counter", "Help with a \\ and a\nnewline.");
    std::array<Pair, 1> labels = {Pair{"task", "say \"hi\"\n"}};
    out.sample("x_total", labels, std::uint64_t(7));
    std::string text = out.take();
    EXPECT_TRUE(has_line(text, R"(# HELP x_total Help with a \\ and a\nnewline.)")) << text;
    EXPECT_TRUE(has_line(text, "# TYPE x_total counter")) << text;
    EXPECT_TRUE(has_line(text, R"(x_total{task="say \"hi\"\n"} 7)")) << text;
}

TEST(Prometheus, HistogramBucketsAreCumulativeWithInfSumAndCount) {
    Histogram h;
    for (double v : {0.0005, 0.003, 0.003, 0.7, 400.0}) h.observe(v);
    h.observe(-1);  // a clock step back counts as 0
    PromText out;
    std::array<Pair, 1> labels = {Pair{"q", "a"}};
    h.write(out, "d_seconds", labels);
    std::string text = out.take();
    EXPECT_TRUE(has_line(text, R"(d_seconds_bucket{q="a",le="0.001"} 2)")) << text;
    EXPECT_TRUE(has_line(text, R"(d_seconds_bucket{q="a",le="0.0025"} 2)")) << text;
    EXPECT_TRUE(has_line(text, R"(d_seconds_bucket{q="a",le="0.005"} 4)")) << text;
    EXPECT_TRUE(has_line(text, R"(d_seconds_bucket{q="a",le="1"} 5)")) << text;
    EXPECT_TRUE(has_line(text, R"(d_seconds_bucket{q="a",le="300"} 5)")) << text;
    EXPECT_TRUE(has_line(text, R"(d_seconds_bucket{q="a",le="+Inf"} 6)")) << text;
    EXPECT_TRUE(has_line(text, R"(d_seconds_count{q="a"} 6)")) << text;
    EXPECT_NEAR(h.sum(), 400.7065, 1e-9);
}

TEST(WorkerMetrics, LabelsAreBoundedToTheWorkersQueuesAndTasks) {
    WorkerMetrics m({"billing"});
    m.set_tasks({"orders.bill"});
    WorkerMetrics::succeeded(m.series("billing", "orders.bill"), 0.01);
    for (int i = 0; i < 1000; ++i)
        WorkerMetrics::dead_lettered(m.series("billing", "junk-" + std::to_string(i)));
    WorkerMetrics::failed(m.series("elsewhere", "orders.bill"), 0.02);
    WorkerMetrics::retried(m.series("elsewhere", "orders.bill"));
    WorkerMetrics::waited(m.series("billing", "orders.bill"), 0.5);
    EXPECT_EQ(&m.series("billing", "orders.bill"), &m.series("billing", "orders.bill"));
    WorkerMetrics::Gauges g;
    g.concurrency = 8;
    g.busy = 3;
    g.depths = std::vector<QueueStats>{{"billing", 5, -1, 2, 1}};
    std::string text = m.render(g);
    EXPECT_TRUE(
        has_line(text, R"(conveyor_tasks_succeeded_total{queue="billing",task="orders.bill"} 1)"))
        << text;
    EXPECT_TRUE(
        has_line(text, R"(conveyor_tasks_dead_lettered_total{queue="billing",task="other"} 1000)"))
        << text;
    EXPECT_TRUE(
        has_line(text, R"(conveyor_tasks_failed_total{queue="other",task="orders.bill"} 1)"))
        << text;
    EXPECT_TRUE(
        has_line(text, R"(conveyor_tasks_retried_total{queue="other",task="orders.bill"} 1)"))
        << text;
    EXPECT_EQ(text.find("junk-"), std::string::npos);
    EXPECT_TRUE(
        has_line(text, R"(conveyor_task_wait_seconds_count{queue="billing",task="orders.bill"} 1)"))
        << text;
    EXPECT_TRUE(has_line(text, "conveyor_worker_concurrency 8")) << text;
    EXPECT_TRUE(has_line(text, "conveyor_worker_busy 3")) << text;
    EXPECT_TRUE(has_line(text, R"(conveyor_queue_depth{queue="billing",state="ready"} 5)")) << text;
    EXPECT_TRUE(has_line(text, R"(conveyor_queue_depth{queue="billing",state="in_flight"} 2)"))
        << text;
    // A count the engine cannot tell is left out, not shown as 0.
    EXPECT_EQ(text.find(R"(state="delayed")"), std::string::npos) << text;
}

TEST(WorkerMetrics, AnIdleWorkerServesItsGaugesWithoutAListener) {
    auto broker = Broker::open("memory://");
    ASSERT_TRUE(broker);
    WorkerOptions o;
    o.concurrency = 2;
    Worker w(*broker, o);
    std::string text = w.metrics();
    EXPECT_TRUE(has_line(text, "conveyor_worker_concurrency 2")) << text;
    EXPECT_TRUE(has_line(text, "conveyor_worker_busy 0")) << text;
    EXPECT_EQ(w.http_port(), 0);
}

TEST(ListenAddress, HostAndPortOrPortAlone) {
    auto a = parse_listen_address("0.0.0.0:9808");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->host, "0.0.0.0");
    EXPECT_EQ(a->port, 9808);
    a = parse_listen_address("9808");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->host, "127.0.0.1");  // loopback unless told otherwise
    a = parse_listen_address(":0");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->host, "127.0.0.1");
    EXPECT_EQ(a->port, 0);
    a = parse_listen_address("[::1]:80");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->host, "::1");
    for (auto* bad : {"", "host:", "h:-1", "h:65536", "h:80x", "::1:80", "[::1:80", "a/b:1"}) {
        auto r = parse_listen_address(bad);
        EXPECT_FALSE(r) << bad;
        if (!r) {
            EXPECT_EQ(r.error().code, Errc::invalid_argument) << bad;
        }
    }
}

TEST(AmqpManagement, QueuesFoldIntoConveyorsViewOfThem) {
    using conveyor::amqp::ManagedQueue;
    std::vector<ManagedQueue> qs = {
        {"billing", 5, 2, false, false},
        {"billing.dead", 3, 0, false, false},
        {"orders.p0", 1, 1, false, false},
        {"orders.p1", 2, 0, false, false},
        {"orders.dead", 1, 0, false, false},
        {"report.p7", 4, 0, false, false},  // not an ordered queue: a queue of its own
        {"conveyor.delay.3", 6, 0, false, false},
        {"conveyor.delay.unroutable", 1, 0, false, false},
        {"celery@host.celery.pidbox", 0, 0, false, true},
        {"celeryev.1234", 9, 0, false, true},
        {"amq.gen-xyz", 1, 0, true, false},
        {"6f1c-reply", 1, 0, false, true},
        // Tasks waiting for concurrency slots, counted as limited where they go back to.
        {"conveyor.wait.billing.pay", 7, 1, false, false, "billing"},
        {"conveyor.wait.billing.refund", 2, 0, false, false, "billing"},
        {"conveyor.wait.gone.x", 2, 0, false, false, ""},  // not Conveyor's: left out
    };
    auto out = conveyor::amqp::fold_queues(qs, [](const std::string& q) { return q == "orders"; });
    std::map<std::string, QueueStats> by;
    for (auto& s : out) by[s.queue] = s;
    ASSERT_EQ(by.size(), 4u);
    EXPECT_EQ(by["billing"].ready, 5);
    EXPECT_EQ(by["billing"].in_flight, 2);
    EXPECT_EQ(by["billing"].dead, 3);
    EXPECT_EQ(by["billing"].delayed, -1);
    EXPECT_EQ(by["billing"].limited, 10);
    EXPECT_EQ(by["orders"].ready, 3);
    EXPECT_EQ(by["orders"].in_flight, 1);
    EXPECT_EQ(by["orders"].dead, 1);
    EXPECT_EQ(by["report.p7"].ready, 4);
    EXPECT_EQ(by["(delayed, all queues)"].delayed, 6);
    EXPECT_EQ(by["(delayed, all queues)"].dead, 1);
}
