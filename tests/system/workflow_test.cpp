// Workflows (chain, group, chord, callbacks, errbacks) built with Conveyor's client and run by
// Conveyor workers on the embedded sqlite engine (a real file, several workers).

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "conveyor/client.hpp"
#include "conveyor/worker.hpp"
#include "support/process.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::TempDir;

namespace {

std::atomic<int> sums{0};  // chord bodies run

struct WorkflowRunning {
    Worker worker;
    std::thread thread;
    WorkflowRunning(std::shared_ptr<Broker> b, WorkerOptions o)
        : worker(std::move(b), std::move(o)) {
        worker.handle("w.add", [](TaskContext& c) -> Json {
            return c.args()[0].get<int>() + c.args()[1].get<int>();
        });
        worker.handle("w.mul", [](TaskContext& c) -> Json {
            return c.args()[0].get<int>() * c.args()[1].get<int>();
        });
        worker.handle("w.sum", [](TaskContext& c) -> Json {
            sums++;
            int s = 0;
            for (auto& v : c.args()[0]) s += v.get<int>();
            return s;
        });
        worker.handle("w.fail", [](TaskContext& c) -> Json {
            throw TaskError("ValueError", "no: " + c.args().dump(), false);
        });
        worker.handle("w.note",
                      [](TaskContext& c) -> Json { return "noted " + c.args()[0].dump(); });
        thread = std::thread([this] { (void)worker.run(); });
    }
    ~WorkflowRunning() {
        worker.stop();
        thread.join();
    }
};

struct WorkflowFixture {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("w.db");
    std::shared_ptr<Broker> broker = *Broker::open(url);
    Client client{broker};
    std::vector<std::unique_ptr<WorkflowRunning>> workers;
    WorkflowFixture() {
        WorkerOptions o;
        o.queues = {"celery", "other"};
        o.concurrency = 2;
        for (int i = 0; i < 2; ++i)
            workers.push_back(std::make_unique<WorkflowRunning>(*Broker::open(url), o));
    }
    TaskResult wait(const std::string& id) {
        auto r = client.wait(id, 20s);
        EXPECT_TRUE(r) << r.error().message;
        return r ? *r : TaskResult{};
    }
};

}  // namespace

TEST(Workflow, ChainPassesEachResultToTheNextTask) {
    WorkflowFixture f;
    // (2 + 3) * 10, then + 1 on another queue; the last link ignores nothing.
    auto last = f.client.chain({{.task = "w.add", .args = {2, 3}},
                                {.task = "w.mul", .args = {10}},
                                {.task = "w.add", .args = {1}, .queue = "other"}});
    ASSERT_TRUE(last) << last.error().message;
    auto r = f.wait(*last);
    EXPECT_EQ(r.state, TaskState::success);
    EXPECT_EQ(r.result, 51);
}

TEST(Workflow, ImmutableLinkDoesNotReceiveThePreviousResult) {
    WorkflowFixture f;
    auto last = f.client.chain(
        {{.task = "w.add", .args = {2, 3}}, {.task = "w.mul", .args = {6, 7}, .immutable = true}});
    ASSERT_TRUE(last);
    EXPECT_EQ(f.wait(*last).result, 42);
}

TEST(Workflow, GroupRunsItsTasksAndEachHasItsResult) {
    WorkflowFixture f;
    std::vector<Signature> members;
    for (int i = 0; i < 10; ++i) members.push_back({.task = "w.add", .args = {i, i}});
    auto ids = f.client.group(members);
    ASSERT_TRUE(ids) << ids.error().message;
    ASSERT_EQ(ids->size(), 10u);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(f.wait((*ids)[i]).result, 2 * i);
}

TEST(Workflow, ChordRunsTheBodyOnceWithTheHeaderResultsInOrder) {
    WorkflowFixture f;
    sums = 0;
    std::vector<Signature> header;
    for (int i = 0; i < 20; ++i) header.push_back({.task = "w.mul", .args = {i, 2}});
    auto body = f.client.chord(header, {.task = "w.sum"});
    ASSERT_TRUE(body) << body.error().message;
    auto r = f.wait(*body);
    EXPECT_EQ(r.state, TaskState::success);
    EXPECT_EQ(r.result, 380);  // 2 * (0 + ... + 19)
    std::this_thread::sleep_for(200ms);
    EXPECT_EQ(sums.load(), 1);
}

TEST(Workflow, AFailedChainLinkFailsTheRestOfTheChain) {
    WorkflowFixture f;
    auto last = f.client.chain(
        {{.task = "w.add", .args = {1, 1}}, {.task = "w.fail"}, {.task = "w.add", .args = {1}}});
    ASSERT_TRUE(last);
    auto r = f.wait(*last);
    EXPECT_EQ(r.state, TaskState::failure);
    EXPECT_EQ(r.result["exc_type"], "ValueError");
}

TEST(Workflow, AChordWithAFailedPartFailsItsBodyWithChordError) {
    WorkflowFixture f;
    auto body =
        f.client.chord({{.task = "w.add", .args = {1, 1}}, {.task = "w.fail"}}, {.task = "w.sum"});
    ASSERT_TRUE(body);
    auto r = f.wait(*body);
    EXPECT_EQ(r.state, TaskState::failure);
    EXPECT_EQ(r.result["exc_type"], "ChordError");
    EXPECT_NE(r.result.dump().find("ValueError"), std::string::npos) << r.result.dump();
}

TEST(Workflow, ChordsOnTheMemoryEngineAreRefusedInOneSentence) {
    auto broker = *Broker::open("memory://chords");
    Client client(broker);
    auto body = client.chord({{.task = "w.add", .args = {1, 1}}}, {.task = "w.sum"});
    ASSERT_FALSE(body);
    EXPECT_NE(body.error().message.find("chords need"), std::string::npos);
}
