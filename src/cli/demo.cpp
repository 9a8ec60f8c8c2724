#include "cli/demo.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include "cli/commands.hpp"
#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/worker.hpp"
#include "core/try.hpp"

namespace conveyor {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr int kPoisonOrder = 13;

// Simulated work: a few milliseconds, different per order and service.
void work(const TaskContext& ctx, int salt) {
    int order = ctx.kwargs().value("order", 0);
    std::this_thread::sleep_for(milliseconds(3 + (order * 7 + salt) % 12));
}

}  // namespace

Result<void> run_demo(const DemoOptions& o) {
    std::string url = o.broker;
    if (url.empty()) {
        for (auto suffix : {"", "-wal", "-shm"}) std::filesystem::remove(o.db_path + suffix);
        url = "sqlite://" + o.db_path;
    }
    auto broker_r = Broker::open(url);
    CONVEYOR_TRY(broker_r);
    auto broker = *broker_r;
    bool tty = isatty(2);

    fmt::print(
        "Conveyor demo: an order service places {} orders; inventory, billing and shipping\n"
        "each process every order from their own queue with their own workers.\n"
        "Broker: {} (embedded, durable, no server)\n\n",
        o.orders, broker->url());
    std::fflush(stdout);

    RetryPolicy retry{.max_retries = 3, .backoff_base = 0.2, .backoff_max = 2.0, .jitter = true};
    TaskOptions opts{retry, milliseconds(10000)};

    struct Service {
        std::string name;
        std::string queue;
        std::unique_ptr<Worker> worker;
        std::jthread thread;
    };
    std::vector<Service> services;
    for (auto name : {"inventory", "billing", "shipping"}) {
        WorkerOptions wo;
        wo.queues = {name};
        wo.concurrency = 4;
        wo.name = fmt::format("demo-{}", name);
        wo.lease = milliseconds(10000);
        services.push_back(Service{name, name, std::make_unique<Worker>(broker, wo)});
    }

    std::atomic<int> transient_failures{0};
    auto& inventory = *services[0].worker;
    auto& billing = *services[1].worker;
    auto& shipping = *services[2].worker;
    inventory.handle("inventory.reserve", opts, [](TaskContext& ctx) -> Json {
        work(ctx, 1);
        return {{"reserved", ctx.kwargs()["items"]}};
    });
    billing.handle("billing.charge", opts, [&](TaskContext& ctx) -> Json {
        work(ctx, 2);
        int order = ctx.kwargs().value("order", 0);
        if (order == kPoisonOrder)
            throw TaskError("PaymentDeclined", fmt::format("card for order {} is declined", order));
        if (order % 9 == 4 && ctx.attempt() == 1) {  // the payment gateway times out now and then
            transient_failures++;
            throw TaskError("GatewayTimeout", "payment gateway did not answer");
        }
        return {{"charged", ctx.kwargs()["amount"]}};
    });
    shipping.handle("shipping.schedule", opts, [&](TaskContext& ctx) -> Json {
        work(ctx, 3);
        int order = ctx.kwargs().value("order", 0);
        if (order % 23 == 7 && ctx.attempt() <= 2) {  // carrier API rate-limits us
            transient_failures++;
            throw TaskError("CarrierBusy", "carrier API rate limit");
        }
        return {{"tracking", fmt::format("TRK{:06}", order)}};
    });
    std::mutex reminder_mu;
    std::optional<TimePoint> reminder_ran;
    shipping.handle("shipping.reminder", opts, [&](TaskContext&) -> Json {
        std::lock_guard lk(reminder_mu);
        reminder_ran = SystemClock::now();
        return "reminder sent";
    });

    auto start = Clock::now();
    auto wall_start = SystemClock::now();
    for (auto& s : services) {
        s.thread = std::jthread([&s] {
            auto r = s.worker->run();
            if (!r) fmt::print(stderr, "{} worker stopped: {}\n", s.name, r.error().message);
        });
    }

    // The order service: each order is dispatched to the three services.
    Client client(broker);
    const auto reminder_delay = std::chrono::seconds(3);
    auto reminder_due = SystemClock::now() + reminder_delay;
    EnqueueOptions ro;
    ro.queue = "shipping";
    ro.eta = reminder_due;
    auto reminder_id = client.enqueue("shipping.reminder", Json::array(), {{"order", 1}}, ro);
    CONVEYOR_TRY(reminder_id);
    std::mt19937 rng(42);
    const int batch = 50;
    for (int first = 1; first <= o.orders; first += batch) {
        std::vector<TaskMessage> inv, bill, ship;
        for (int n = first; n < first + batch && n <= o.orders; ++n) {
            Json kw = {
                {"order", n}, {"items", 1 + int(rng() % 5)}, {"amount", 10 + int(rng() % 190)}};
            inv.push_back(TaskMessage{.name = "inventory.reserve", .kwargs = kw});
            bill.push_back(TaskMessage{.name = "billing.charge", .kwargs = kw});
            ship.push_back(TaskMessage{.name = "shipping.schedule", .kwargs = kw});
        }
        for (auto [tasks, queue] : {std::pair{&inv, "inventory"}, std::pair{&bill, "billing"},
                                    std::pair{&ship, "shipping"}}) {
            EnqueueOptions eo;
            eo.queue = queue;
            auto ids = client.enqueue_many(std::move(*tasks), eo);
            CONVEYOR_TRY(ids);
        }
    }

    const std::uint64_t total = std::uint64_t(o.orders) * 3 + 1;
    auto done_count = [&] {
        std::uint64_t n = 0;
        for (auto& s : services) {
            auto st = s.worker->stats();
            n += st.succeeded + st.dead_lettered;
        }
        return n;
    };
    auto last_line = Clock::now() - std::chrono::seconds(10);
    for (;;) {
        auto done = done_count();
        std::uint64_t retries = 0, dead = 0;
        for (auto& s : services) {
            retries += s.worker->stats().retried;
            dead += s.worker->stats().dead_lettered;
        }
        double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        int width = 32;
        int filled = int(double(done) / double(total) * width);
        std::string bar =
            std::string(std::size_t(filled), '#') + std::string(std::size_t(width - filled), '.');
        std::string line = fmt::format("[{}] {:>5}/{} tasks  retries {:>3}  dead {}  {:5.1f}s", bar,
                                       done, total, retries, dead, elapsed);
        if (tty) {
            fmt::print(stderr, "\r{}", line);
        } else if (Clock::now() - last_line >= std::chrono::seconds(1) || done >= total) {
            fmt::print(stderr, "{}\n", line);
            last_line = Clock::now();
        }
        if (done >= total) break;
        if (elapsed > 50) {
            if (tty) fmt::print(stderr, "\n");
            return fail(Errc::timeout, "the demo did not finish within 50 seconds");
        }
        std::this_thread::sleep_for(milliseconds(100));
    }
    if (tty) fmt::print(stderr, "\n");
    double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    for (auto& s : services) s.worker->stop();
    for (auto& s : services) s.thread.join();

    fmt::print("\n{:<12} {:>10} {:>10} {:>14}\n", "service", "processed", "retried",
               "dead-lettered");
    std::uint64_t t_ok = 0, t_retry = 0, t_dead = 0;
    for (auto& s : services) {
        auto st = s.worker->stats();
        fmt::print("{:<12} {:>10} {:>10} {:>14}\n", s.name, st.succeeded + st.dead_lettered,
                   st.retried, st.dead_lettered);
        t_ok += st.succeeded + st.dead_lettered;
        t_retry += st.retried;
        t_dead += st.dead_lettered;
    }
    fmt::print("{:<12} {:>10} {:>10} {:>14}\n", "total", t_ok, t_retry, t_dead);
    fmt::print("\nelapsed {:.2f} s, {:.0f} tasks/s (handlers sleep 3-14 ms to simulate work)\n",
               elapsed, double(t_ok) / elapsed);

    auto dl = broker->dead_letters("billing", 10);
    if (dl && !dl->empty()) {
        fmt::print("\ndead-letter queue 'billing' ({} message):\n", dl->size());
        for (auto& d : *dl) fmt::print("  {}  {}\n", d.message_id, d.reason);
        fmt::print("  (inspect: conveyor --broker {} dlq list --queue billing)\n", broker->url());
    }
    {
        std::lock_guard lk(reminder_mu);
        if (reminder_ran) {
            double due = std::chrono::duration<double>(reminder_due - wall_start).count();
            double ran = std::chrono::duration<double>(*reminder_ran - wall_start).count();
            fmt::print("\ndelayed reminder: due at +{:.2f} s, ran at +{:.2f} s ({:+.0f} ms)\n", due,
                       ran, (ran - due) * 1000);
        }
    }
    auto stats = broker->stats();
    if (stats) {
        std::int64_t left = 0;
        for (auto& s : *stats) left += s.ready + s.delayed + s.in_flight;
        fmt::print("left in queues: {} (nothing lost)\n", left);
    }
    return {};
}

namespace cli {

Command add_demo(CLI::App& app, const Global& g) {
    auto* demo = app.add_subcommand("demo", "Run the order-processing demo on the embedded engine");
    auto opts = std::make_shared<DemoOptions>();
    demo->add_option("--orders", opts->orders, "Orders to place")->check(CLI::Range(1, 1000000));
    demo->add_option("--db", opts->db_path, "SQLite file for the demo");
    return {demo, [&g, opts] {
                DemoOptions o = *opts;
                if (!g.broker.empty()) o.broker = g.broker;
                if (auto r = run_demo(o); !r) die(r.error().message);
                return 0;
            }};
}

}  // namespace cli

}  // namespace conveyor
