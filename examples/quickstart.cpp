// A worker and a client in one program, on the embedded engine (a SQLite file).
// usage: quickstart [BROKER_URL]   (default sqlite://quickstart.db)
#include <chrono>
#include <conveyor/client.hpp>
#include <conveyor/worker.hpp>
#include <cstdio>

int main(int argc, char** argv) {
    auto broker = conveyor::Broker::open(argc > 1 ? argv[1] : "sqlite://quickstart.db");
    if (!broker) return std::fprintf(stderr, "%s\n", broker.error().message.c_str()), 1;

    conveyor::Worker worker(*broker, {.queues = {"billing"}, .concurrency = 4});
    worker.handle("orders.bill", [](conveyor::TaskContext& task) -> conveyor::Json {
        return {{"charged", task.kwargs()["amount"]}};  // throw to fail (retried per policy)
    });
    if (auto started = worker.start(); !started)
        return std::fprintf(stderr, "%s\n", started.error().message.c_str()), 1;

    conveyor::Client client(*broker);
    auto id =
        client.enqueue("orders.bill", {}, {{"order", 42}, {"amount", 99}}, {.queue = "billing"});
    if (!id) return std::fprintf(stderr, "%s\n", id.error().message.c_str()), 1;
    auto result = client.wait(*id, std::chrono::seconds(10));
    if (!result) return std::fprintf(stderr, "%s\n", result.error().message.c_str()), 1;
    std::printf("%s %s\n", conveyor::to_string(result->state), result->result.dump().c_str());
    return result->state == conveyor::TaskState::success ? 0 : 1;
}  // the worker stops here, and its thread is joined
