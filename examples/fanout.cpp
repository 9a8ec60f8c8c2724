// Fan-out on RabbitMQ: the order service publishes each order once to the exchange "orders";
// inventory, billing and shipping each get it on their own queue and process it with their own
// worker, as separate services would.
// usage: fanout AMQP_URL [ORDERS]   e.g. fanout amqp://guest:guest@localhost:5672/ 100
#include <atomic>
#include <chrono>
#include <conveyor/client.hpp>
#include <conveyor/worker.hpp>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
    if (argc < 2) return std::fprintf(stderr, "usage: fanout AMQP_URL [ORDERS]\n"), 2;
    const int orders = argc > 2 ? std::atoi(argv[2]) : 100;
    auto broker = conveyor::Broker::open(argv[1]);
    if (!broker) return std::fprintf(stderr, "%s\n", broker.error().message.c_str()), 1;

    const std::vector<std::string> services = {"inventory", "billing", "shipping"};
    conveyor::Topology topology;
    topology.exchanges.push_back({.name = "orders", .type = "fanout"});
    for (auto& s : services) {
        topology.queues.push_back({.name = "orders." + s});
        topology.bindings.push_back({.exchange = "orders", .queue = "orders." + s});
    }
    if (auto ok = (*broker)->set_topology(topology); !ok)
        return std::fprintf(stderr, "%s\n", ok.error().message.c_str()), 1;
    if (auto ok = (*broker)->declare_topology(); !ok)
        return std::fprintf(stderr, "%s\n", ok.error().message.c_str()), 1;

    // One worker per service, each with its own handler for the same task.
    std::vector<std::atomic<int>> done(services.size());
    std::vector<std::unique_ptr<conveyor::Worker>> workers;
    for (std::size_t i = 0; i < services.size(); ++i) {
        auto& w = *workers.emplace_back(std::make_unique<conveyor::Worker>(
            *broker,
            conveyor::WorkerOptions{.queues = {"orders." + services[i]}, .concurrency = 2}));
        w.handle("orders.placed",
                 [&done, i](conveyor::TaskContext&) -> conveyor::Json { return ++done[i]; });
        if (auto ok = w.start(); !ok)
            return std::fprintf(stderr, "%s\n", ok.error().message.c_str()), 1;
    }

    conveyor::Client client(*broker);
    for (int order = 1; order <= orders; ++order) {
        auto id = client.enqueue("orders.placed", {order}, {}, {.exchange = "orders"});
        if (!id) return std::fprintf(stderr, "%s\n", id.error().message.c_str()), 1;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    auto all_done = [&] {
        for (auto& d : done)
            if (d.load() < orders) return false;
        return true;
    };
    while (!all_done() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (std::size_t i = 0; i < services.size(); ++i)
        std::printf("%s processed %d of %d orders\n", services[i].c_str(), done[i].load(), orders);
    return all_done() ? 0 : 1;
}  // each worker stops and joins as it goes out of scope
