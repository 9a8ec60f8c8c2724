// Workflows on the embedded engine: a chain (each task gets the previous result) and a chord
// (a group in parallel, then one task with all their results).
// usage: workflow [BROKER_URL]   (default sqlite://workflow.db)
#include <chrono>
#include <conveyor/client.hpp>
#include <conveyor/worker.hpp>
#include <cstdio>

using conveyor::Json;
using conveyor::TaskContext;

int main(int argc, char** argv) {
    auto broker = conveyor::Broker::open(argc > 1 ? argv[1] : "sqlite://workflow.db");
    if (!broker) return std::fprintf(stderr, "%s\n", broker.error().message.c_str()), 1;

    conveyor::Worker worker(*broker, {.queues = {"math"}, .concurrency = 4});
    worker.handle("math.add", [](TaskContext& t) -> Json {
        return t.args()[0].get<int>() + t.args()[1].get<int>();
    });
    worker.handle("math.mul", [](TaskContext& t) -> Json {
        return t.args()[0].get<int>() * t.args()[1].get<int>();
    });
    worker.handle("math.sum", [](TaskContext& t) -> Json {
        int sum = 0;
        for (auto& v : t.args()[0]) sum += v.get<int>();
        return sum;
    });
    if (auto started = worker.start(); !started)
        return std::fprintf(stderr, "%s\n", started.error().message.c_str()), 1;

    conveyor::Client client(*broker);
    // (2 + 3) * 10
    auto chain = client.chain({{.task = "math.add", .args = {2, 3}, .queue = "math"},
                               {.task = "math.mul", .args = {10}, .queue = "math"}});
    // 1*1 + 2*2 + 3*3
    std::vector<conveyor::Signature> squares;
    for (int i = 1; i <= 3; ++i)
        squares.push_back({.task = "math.mul", .args = {i, i}, .queue = "math"});
    auto chord = client.chord(squares, {.task = "math.sum", .queue = "math"});
    if (!chain || !chord) return std::fprintf(stderr, "cannot enqueue the workflows\n"), 1;

    auto product = client.wait(*chain, std::chrono::seconds(10));
    auto sum = client.wait(*chord, std::chrono::seconds(10));
    if (!product || !sum) return std::fprintf(stderr, "the workflows did not finish\n"), 1;
    std::printf("chain %s, chord %s\n", product->result.dump().c_str(), sum->result.dump().c_str());
    return product->result == 50 && sum->result == 14 ? 0 : 1;
}
