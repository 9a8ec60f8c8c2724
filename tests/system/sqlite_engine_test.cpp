// The sqlite engine against a real file: ordering, delays, leases, results, dead letters.

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <set>
#include <thread>

#include "broker/sqlite/sqlite_db.hpp"
#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/history.hpp"
#include "conveyor/worker.hpp"
#include "core/codec.hpp"
#include "support/process.hpp"
#include "support/queue_stats.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::stats_of;
using testsupport::TempDir;

namespace {

struct Fixture {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db");
    std::shared_ptr<Broker> broker = *Broker::open(url);
    Client client{broker};

    std::string enqueue(const std::string& queue, EnqueueOptions o = {}) {
        o.queue = queue;
        auto id = client.enqueue("t", Json::array(), Json::object(), o);
        EXPECT_TRUE(id) << id.error().message;
        return *id;
    }
    std::unique_ptr<Consumer> consumer(std::vector<std::string> queues,
                                       std::chrono::milliseconds lease = 30s) {
        auto b = Broker::open(url);  // a separate connection, as another process would have
        auto c = (*b)->consume({.queues = std::move(queues), .lease = lease, .name = "test"});
        EXPECT_TRUE(c);
        return std::move(*c);
    }
};

}  // namespace

namespace {

/// Counts the syncs SQLite asks of the file system (xSync): a VFS over the default one,
/// registered as the default while it lives (before any connection of the test opens).
class SyncCounter {
  public:
    SyncCounter() {
        real_ = sqlite3_vfs_find(nullptr);
        vfs_ = *real_;
        vfs_.zName = "conveyor-sync-counter";
        vfs_.szOsFile = int(sizeof(File)) + real_->szOsFile;
        vfs_.pAppData = this;
        vfs_.xOpen = [](sqlite3_vfs* v, const char* name, sqlite3_file* f, int flags,
                        int* out) -> int {
            auto* self = static_cast<SyncCounter*>(v->pAppData);
            auto* file = reinterpret_cast<File*>(f);
            file->real = reinterpret_cast<sqlite3_file*>(file + 1);
            file->counter = self;
            file->real->pMethods = nullptr;
            int rc = self->real_->xOpen(self->real_, name, file->real, flags, out);
            // (Where the real file has methods, SQLite closes it, even after a failed open.)
            file->base.pMethods = file->real->pMethods ? &methods() : nullptr;
            return rc;
        };
        sqlite3_vfs_register(&vfs_, 1);
    }
    ~SyncCounter() {
        sqlite3_vfs_register(real_, 1);
        sqlite3_vfs_unregister(&vfs_);
    }
    SyncCounter(const SyncCounter&) = delete;
    SyncCounter& operator=(const SyncCounter&) = delete;
    int syncs() const { return syncs_.load(); }
    void reset() { syncs_ = 0; }

  private:
    struct File {
        sqlite3_file base;
        sqlite3_file* real;
        SyncCounter* counter;
    };
    static sqlite3_file* real(sqlite3_file* f) { return reinterpret_cast<File*>(f)->real; }
    static const sqlite3_io_methods& methods() {
        static const sqlite3_io_methods m = {
            3,
            [](sqlite3_file* f) { return real(f)->pMethods->xClose(real(f)); },
            [](sqlite3_file* f, void* b, int n, sqlite3_int64 o) {
                return real(f)->pMethods->xRead(real(f), b, n, o);
            },
            [](sqlite3_file* f, const void* b, int n, sqlite3_int64 o) {
                return real(f)->pMethods->xWrite(real(f), b, n, o);
            },
            [](sqlite3_file* f, sqlite3_int64 n) {
                return real(f)->pMethods->xTruncate(real(f), n);
            },
            [](sqlite3_file* f, int flags) {
                reinterpret_cast<File*>(f)->counter->syncs_++;
                return real(f)->pMethods->xSync(real(f), flags);
            },
            [](sqlite3_file* f, sqlite3_int64* n) {
                return real(f)->pMethods->xFileSize(real(f), n);
            },
            [](sqlite3_file* f, int l) { return real(f)->pMethods->xLock(real(f), l); },
            [](sqlite3_file* f, int l) { return real(f)->pMethods->xUnlock(real(f), l); },
            [](sqlite3_file* f, int* r) {
                return real(f)->pMethods->xCheckReservedLock(real(f), r);
            },
            [](sqlite3_file* f, int op, void* a) {
                return real(f)->pMethods->xFileControl(real(f), op, a);
            },
            [](sqlite3_file* f) { return real(f)->pMethods->xSectorSize(real(f)); },
            [](sqlite3_file* f) { return real(f)->pMethods->xDeviceCharacteristics(real(f)); },
            [](sqlite3_file* f, int i, int n, int w, void volatile** p) {
                return real(f)->pMethods->xShmMap(real(f), i, n, w, p);
            },
            [](sqlite3_file* f, int o, int n, int fl) {
                return real(f)->pMethods->xShmLock(real(f), o, n, fl);
            },
            [](sqlite3_file* f) { real(f)->pMethods->xShmBarrier(real(f)); },
            [](sqlite3_file* f, int d) { return real(f)->pMethods->xShmUnmap(real(f), d); },
            [](sqlite3_file* f, sqlite3_int64 o, int n, void** p) {
                return real(f)->pMethods->xFetch(real(f), o, n, p);
            },
            [](sqlite3_file* f, sqlite3_int64 o, void* p) {
                return real(f)->pMethods->xUnfetch(real(f), o, p);
            },
        };
        return m;
    }
    sqlite3_vfs* real_ = nullptr;
    sqlite3_vfs vfs_{};
    std::atomic<int> syncs_{0};
};

}  // namespace

TEST(SqliteEngine, WithSyncFullAClaimDoesNotWaitForTheDiskAndASettlementDoes) {
    // A claim lost to a power cut is a task delivered again, so its commit does not wait for
    // the disk; the settlement's commit does, and takes the claim along (the write-ahead log is
    // written in order). An enqueue waits too.
    SyncCounter disk;
    Fixture f;
    for (int i = 0; i < 5; ++i) f.enqueue("q");
    EXPECT_GE(disk.syncs(), 5);  // one commit each
    auto c = f.consumer({"q"});
    for (int round = 0; round < 2; ++round) {
        disk.reset();
        auto got = c->fetch(10, 0ms);
        ASSERT_TRUE(got);
        ASSERT_EQ(got->size(), round == 0 ? 5u : 1u);
        EXPECT_EQ(disk.syncs(), 0) << "round " << round;
        std::vector<Settlement> acks;
        for (auto& d : *got) acks.push_back(Settlement{Settlement::Kind::ack, d.tag});
        ASSERT_TRUE(c->settle(acks));
        EXPECT_EQ(disk.syncs(), 1) << "round " << round;  // the connection's mode is back
        f.enqueue("q");
    }
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 1);
}

TEST(SqliteEngine, ManyAcknowledgementsInOneSettlementSettleTheTasksTheConsumerHoldsAsTheySay) {
    // 75 acknowledgements in one settlement: a statement of 64, one of 8, then 3 alone. Eleven
    // of the tasks are another consumer's (as after a lease ran out) and stay its own: no
    // result, no count, no history for them. Some were revoked, some never ran (no attempt:
    // the claim's start is kept, finished now).
    for (bool history : {true, false}) {
        TempDir dir;
        std::string url = "sqlite://" + dir.file("c.db") + (history ? "" : "?history=0");
        auto broker = *Broker::open(url);
        Client client(broker);
        std::vector<std::string> ids;
        for (int i = 0; i < 75; ++i)
            ids.push_back(*client.enqueue("t", Json::array({i}), {}, {.queue = "q"}));
        auto consumer = [&](const char* name, std::size_t max) {
            auto c = *broker->consume({.queues = {"q"}, .lease = 30s, .name = name});
            auto got = c->fetch(max, 0ms);
            EXPECT_TRUE(got && got->size() == max);
            return std::pair{std::move(c), *got};
        };
        auto [first, mine] = consumer("first", 64);
        auto [second, theirs] = consumer("second", 11);
        auto t0 = std::chrono::time_point_cast<std::chrono::milliseconds>(SystemClock::now()) -
                  std::chrono::minutes(1);
        std::vector<Settlement> acks;
        std::map<std::string, std::size_t> of_id;  // mine: index in acks
        std::vector<const Delivery*> of_ack;       // each acknowledgement's delivery
        for (std::size_t i = 0; i < 75; ++i) {
            bool other = i % 7 == 3;  // theirs, spread over the three statements and the rest
            auto& d = other ? theirs[i / 7] : mine[i - (i + 3) / 7];
            of_ack.push_back(&d);
            Settlement s{Settlement::Kind::ack, d.tag};
            if (i % 5 != 0)
                s.attempt =
                    Settlement::Attempt{.task = "t",
                                        .started = t0 + std::chrono::milliseconds(10 * i),
                                        .finished = t0 + std::chrono::milliseconds(10 * i + 3)};
            if (i % 4 == 3) s.result = TaskResult{.id = d.message_id, .state = TaskState::revoked};
            if (!other) of_id[d.message_id] = acks.size();
            acks.push_back(std::move(s));
        }
        ASSERT_EQ(of_id.size(), 64u);
        ASSERT_TRUE(first->settle(acks));
        auto stats = stats_of(*broker, "q");
        EXPECT_EQ(stats.in_flight, 11) << history;
        EXPECT_EQ(stats.ready, 0) << history;
        auto h = *broker->history();
        if (history) {
            for (auto& [id, i] : of_id) {
                auto r = h->task(id);
                ASSERT_TRUE(r) << id;
                auto& s = acks[i];
                EXPECT_EQ(r->state, s.result ? HistoryState::revoked : HistoryState::succeeded)
                    << i;
                EXPECT_TRUE(r->worker.starts_with("first#")) << r->worker;
                ASSERT_TRUE(r->started && r->finished) << i;
                if (s.attempt) {
                    EXPECT_EQ(*r->started, s.attempt->started) << i;
                    EXPECT_EQ(*r->finished, s.attempt->finished) << i;
                } else {
                    EXPECT_GT(*r->finished, t0 + std::chrono::seconds(30)) << i;  // now
                }
            }
            for (auto& d : theirs) EXPECT_EQ(h->task(d.message_id)->state, HistoryState::running);
            std::int64_t succeeded = 0;
            auto minutes = h->minutes(t0 - std::chrono::minutes(1));
            ASSERT_TRUE(minutes);
            for (auto& m : *minutes) succeeded += m.succeeded;
            std::int64_t ran = 0;
            for (auto& [id, i] : of_id) ran += acks[i].attempt ? 1 : 0;
            EXPECT_EQ(succeeded, ran);
        } else {
            for (auto& [id, i] : of_id) EXPECT_FALSE(h->task(id)) << i;
        }
        // A result only for the tasks settled (a revoked one of the other consumer's is not).
        for (std::size_t i = 3; i < 75; i += 4) {
            auto r = broker->result(of_ack[i]->message_id);
            ASSERT_TRUE(r);
            if (i % 7 == 3)
                EXPECT_EQ(r->state, TaskState::started) << i;  // running, as the task is
            else
                EXPECT_EQ(r->state, TaskState::revoked) << i;
        }
        // The other consumer's tasks are still its own to settle.
        std::vector<Settlement> rest;
        for (auto& d : theirs) rest.push_back(Settlement{Settlement::Kind::ack, d.tag});
        ASSERT_TRUE(second->settle(rest));
        EXPECT_EQ(stats_of(*broker, "q").in_flight, 0) << history;
        // (No result was stored for the first consumer's acknowledgements of them.)
        for (std::size_t i = 3; i < 75; i += 28)
            EXPECT_NE(broker->result(theirs[i / 7].message_id)->state, TaskState::revoked) << i;
    }
}

TEST(SqliteEngine, PriorityFirstThenFifo) {
    Fixture f;
    std::vector<std::string> ids;
    for (int p : {0, 5, 9, 5}) ids.push_back(f.enqueue("q", {.priority = p}));
    auto c = f.consumer({"q"});
    auto got = c->fetch(10, 0ms);
    ASSERT_TRUE(got);
    ASSERT_EQ(got->size(), 4u);
    EXPECT_EQ((*got)[0].message_id, ids[2]);
    EXPECT_EQ((*got)[1].message_id, ids[1]);
    EXPECT_EQ((*got)[2].message_id, ids[3]);
    EXPECT_EQ((*got)[3].message_id, ids[0]);
}

TEST(SqliteEngine, DelayedTaskWaitsInTheStoreUntilDue) {
    Fixture f;
    f.enqueue("q", {.countdown = 400ms});
    EXPECT_EQ(stats_of(*f.broker, "q").delayed, 1);
    auto c = f.consumer({"q"});
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(c->fetch(1, 100ms)->empty());
    auto got = c->fetch(1, 3s);
    ASSERT_EQ(got->size(), 1u);
    auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(waited, 350ms);
    EXPECT_LT(waited, 1500ms);
}

TEST(SqliteEngine, ExpiredLeaseGoesToAnotherConsumerAndTheOldOwnerCannotSettle) {
    Fixture f;
    auto id = f.enqueue("q");
    auto a = f.consumer({"q"}, 300ms);
    auto b = f.consumer({"q"}, 300ms);
    auto first = a->fetch(1, 0ms);
    ASSERT_EQ(first->size(), 1u);
    EXPECT_TRUE(b->fetch(1, 100ms)->empty());  // leased to a
    auto second = b->fetch(1, 2s);             // a never renews: the lease runs out
    ASSERT_EQ(second->size(), 1u);
    EXPECT_EQ((*second)[0].message_id, id);
    EXPECT_EQ((*second)[0].deliveries, 2);
    Settlement stale{.kind = Settlement::Kind::ack, .tag = (*first)[0].tag};
    ASSERT_TRUE(a->settle(std::span(&stale, 1)));
    EXPECT_EQ(stats_of(*f.broker, "q").in_flight, 1);  // still b's
}

TEST(SqliteEngine, AReadAheadConsumerClaimsTheNextBatchWhileItsCallerWorksAndHandsItBack) {
    Fixture f;
    std::vector<std::string> ids;
    for (int i = 0; i < 10; ++i) ids.push_back(f.enqueue("q"));
    std::unique_ptr<Consumer> other;
    {
        auto b = *Broker::open(f.url);
        auto c = *b->consume({.queues = {"q"}, .name = "ahead", .read_ahead = true});
        auto first = c->fetch(4, 0ms);
        ASSERT_TRUE(first);
        ASSERT_EQ(first->size(), 4u);
        // Meanwhile the next 4 are claimed for it, and no other consumer gets them.
        auto until = std::chrono::steady_clock::now() + 5s;
        while (stats_of(*f.broker, "q").in_flight < 8 && std::chrono::steady_clock::now() < until)
            std::this_thread::sleep_for(5ms);
        EXPECT_EQ(stats_of(*f.broker, "q").in_flight, 8);
        EXPECT_EQ(stats_of(*f.broker, "q").ready, 2);
        other = f.consumer({"q"});
        auto rest = other->fetch(10, 0ms);
        ASSERT_TRUE(rest);
        ASSERT_EQ(rest->size(), 2u);
        EXPECT_EQ((*rest)[0].message_id, ids[8]);
        // ... and they come next, in order, without waiting.
        auto second = c->fetch(4, 0ms);
        ASSERT_TRUE(second);
        ASSERT_EQ(second->size(), 4u);
        for (int i = 0; i < 4; ++i) {
            EXPECT_EQ((*first)[std::size_t(i)].message_id, ids[std::size_t(i)]);
            EXPECT_EQ((*second)[std::size_t(i)].message_id, ids[std::size_t(i) + 4]);
        }
        // Renewing keeps every one of them.
        auto lost = c->renew();
        ASSERT_TRUE(lost);
        EXPECT_TRUE(lost->empty());
        std::vector<Settlement> done;
        for (auto& d : *first) done.push_back({.kind = Settlement::Kind::ack, .tag = d.tag});
        ASSERT_TRUE(c->settle(done));
    }
    // Gone with 4 unsettled: they are back at once, not delivered in the count.
    auto s = stats_of(*f.broker, "q");
    EXPECT_EQ(s.ready, 4);
    EXPECT_EQ(s.in_flight, 2);  // the other consumer's
    auto again = f.consumer({"q"});
    auto back = again->fetch(10, 0ms);
    ASSERT_TRUE(back);
    ASSERT_EQ(back->size(), 4u);
    EXPECT_EQ((*back)[0].message_id, ids[4]);
    EXPECT_EQ((*back)[0].deliveries, 1);
}

TEST(SqliteEngine, StoppingReadAheadHandsBackWhatWasClaimedAheadAtOnce) {
    Fixture f;
    std::vector<std::string> ids;
    for (int i = 0; i < 8; ++i) ids.push_back(f.enqueue("q"));
    auto b = *Broker::open(f.url);
    auto c = *b->consume({.queues = {"q"}, .name = "ahead", .read_ahead = true});
    auto first = c->fetch(4, 0ms);
    ASSERT_TRUE(first);
    ASSERT_EQ(first->size(), 4u);
    auto until = std::chrono::steady_clock::now() + 5s;
    while (stats_of(*f.broker, "q").in_flight < 8 && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(5ms);
    ASSERT_EQ(stats_of(*f.broker, "q").in_flight, 8);
    ASSERT_TRUE(c->stop_reading_ahead());
    // The 4 claimed ahead are ready again, never delivered in the count; the 4 handed out stay.
    auto s = stats_of(*f.broker, "q");
    EXPECT_EQ(s.ready, 4);
    EXPECT_EQ(s.in_flight, 4);
    auto other = f.consumer({"q"});
    auto rest = other->fetch(10, 0ms);
    ASSERT_TRUE(rest);
    ASSERT_EQ(rest->size(), 4u);
    EXPECT_EQ((*rest)[0].message_id, ids[4]);
    EXPECT_EQ((*rest)[0].deliveries, 1);
    // It claims nothing ahead any more, and still settles what it has.
    f.enqueue("q");
    auto own = c->fetch(4, 0ms);
    ASSERT_TRUE(own);
    EXPECT_EQ(own->size(), 1u);
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(stats_of(*f.broker, "q").in_flight, 9);  // 4 + 1 of c, 4 of the other
    std::vector<Settlement> done;
    for (auto& d : *first) done.push_back({.kind = Settlement::Kind::ack, .tag = d.tag});
    ASSERT_TRUE(c->settle(done));
    EXPECT_EQ(stats_of(*f.broker, "q").in_flight, 5);
}

TEST(SqliteEngine, AStoppingWorkerHandsBackWhatItClaimedAheadWhileItsTaskStillRuns) {
    Fixture f;
    for (int i = 0; i < 10; ++i) f.enqueue("q");
    auto b = *Broker::open(f.url);
    Worker w(b, WorkerOptions{.queues = {"q"},
                              .concurrency = 1,
                              .prefetch = 2,
                              .shutdown_grace = 30s,
                              .remote_control = false});
    std::atomic<int> started{0};
    std::atomic<bool> go{false};
    w.handle("t", [&](TaskContext&) -> Json {
        started++;
        while (!go.load()) std::this_thread::sleep_for(1ms);
        return nullptr;
    });
    std::jthread runner([&] { (void)w.run(); });
    auto until = std::chrono::steady_clock::now() + 5s;
    while ((started.load() == 0 || stats_of(*f.broker, "q").in_flight < 4) &&
           std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(5ms);
    ASSERT_EQ(stats_of(*f.broker, "q").in_flight, 4);  // running, queued, 2 claimed ahead
    w.stop();
    // Only the running one stays leased; the rest are back before it ends.
    until = std::chrono::steady_clock::now() + 5s;
    while (stats_of(*f.broker, "q").in_flight > 1 && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(5ms);
    auto s = stats_of(*f.broker, "q");
    EXPECT_EQ(s.in_flight, 1);
    EXPECT_EQ(s.ready, 9);
    EXPECT_EQ(started.load(), 1);
    go = true;
    runner.join();
    EXPECT_EQ(w.stats().succeeded, 1u);
    EXPECT_EQ(stats_of(*f.broker, "q").in_flight, 0);
}

TEST(SqliteEngine, RenewedLeaseIsNotTakenOver) {
    Fixture f;
    f.enqueue("q");
    auto a = f.consumer({"q"}, 300ms);
    auto b = f.consumer({"q"}, 300ms);
    ASSERT_EQ(a->fetch(1, 0ms)->size(), 1u);
    auto until = std::chrono::steady_clock::now() + 1200ms;
    while (std::chrono::steady_clock::now() < until) {
        ASSERT_TRUE(a->renew());
        EXPECT_TRUE(b->fetch(1, 80ms)->empty());
    }
}

TEST(SqliteEngine, ResultStatesFollowTheTask) {
    Fixture f;
    auto id = f.enqueue("q");
    EXPECT_EQ(f.client.result(id)->state, TaskState::pending);
    auto c = f.consumer({"q"});
    auto got = c->fetch(1, 0ms);
    EXPECT_EQ(f.client.result(id)->state, TaskState::started);
    Settlement retry{.kind = Settlement::Kind::retry,
                     .tag = (*got)[0].tag,
                     .envelope = (*got)[0].envelope,
                     .not_before = SystemClock::now()};
    ASSERT_TRUE(c->settle(std::span(&retry, 1)));
    EXPECT_EQ(f.client.result(id)->state, TaskState::retry);
    got = c->fetch(1, 1s);
    ASSERT_EQ(got->size(), 1u);
    TaskResult r{.id = id, .state = TaskState::success, .result = 42};
    Settlement ack{.kind = Settlement::Kind::ack, .tag = (*got)[0].tag, .result = r};
    ASSERT_TRUE(c->settle(std::span(&ack, 1)));
    auto done = f.client.wait(id, 1s);
    ASSERT_TRUE(done);
    EXPECT_EQ(done->state, TaskState::success);
    EXPECT_EQ(done->result, 42);
    EXPECT_EQ(done->retries, 0);
    // A finished id is not enqueued again.
    f.enqueue("q", {.id = id});
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 0);
}

TEST(SqliteEngine, DeadLettersKeepTheReasonAndCanBeReplayedOrPurged) {
    Fixture f;
    auto a = f.enqueue("q");
    auto b = f.enqueue("q");
    auto c = f.consumer({"q"});
    auto got = c->fetch(2, 0ms);
    ASSERT_EQ(got->size(), 2u);
    std::vector<Settlement> s = {
        {.kind = Settlement::Kind::dead_letter, .tag = (*got)[0].tag, .reason = "reason A"},
        {.kind = Settlement::Kind::dead_letter, .tag = (*got)[1].tag, .reason = "reason B"}};
    ASSERT_TRUE(c->settle(s));
    auto dl = f.broker->dead_letters("q", 10);
    ASSERT_EQ(dl->size(), 2u);
    EXPECT_EQ((*dl)[0].reason, "reason A");
    EXPECT_EQ(stats_of(*f.broker, "q").dead, 2);
    std::vector<std::string> only = {a};
    EXPECT_EQ(*f.broker->replay_dead("q", only), 1u);
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 1);
    EXPECT_EQ(*f.broker->purge_dead("q"), 1u);
    EXPECT_EQ(stats_of(*f.broker, "q").dead, 0);
    auto again = c->fetch(5, 0ms);
    ASSERT_EQ(again->size(), 1u);
    EXPECT_EQ((*again)[0].message_id, a);
    auto t = codec::decode((*again)[0].envelope);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->retries, 0);
    (void)b;
}

TEST(SqliteEngine, SurvivesReopeningTheFile) {
    TempDir dir;
    std::string url = "sqlite://" + dir.file("c.db");
    std::string id;
    {
        auto broker = *Broker::open(url);
        Client c(broker);
        id = *c.enqueue("t", {1}, Json::object(), {.queue = "q"});
    }
    auto broker = *Broker::open(url);
    auto c = (*broker->consume({.queues = {"q"}}));
    auto got = c->fetch(1, 0ms);
    ASSERT_EQ(got->size(), 1u);
    EXPECT_EQ((*got)[0].message_id, id);
}

TEST(SqliteEngine, UnreachablePathIsAClearError) {
    auto b = Broker::open("sqlite:///nonexistent-dir/sub/c.db");
    ASSERT_FALSE(b);
    EXPECT_NE(b.error().message.find("cannot open"), std::string::npos) << b.error().message;
    auto bad = Broker::open("sqlite://x.db?sync=maybe");
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().code, Errc::invalid_argument);
}

namespace {

/// Rows of `table` in the database at `path`, read through a connection of its own.
std::int64_t rows_of(const std::string& path, const std::string& table) {
    auto db = sqlite::Db::open(path, "normal");
    EXPECT_TRUE(db);
    auto q = db->prepare("SELECT count(*) FROM " + table);
    EXPECT_TRUE(q);
    EXPECT_TRUE(q->step());
    return q->i64(0);
}

}  // namespace

TEST(SqliteEngine, AMessageLivesApartFromItsTaskRowAndGoesWithIt) {
    Fixture f;
    std::string big(1 << 20, 'x');  // a 1 MB argument comes back whole
    auto id = f.client.enqueue("t", Json::array({big}), Json::object(), {.queue = "q"});
    ASSERT_TRUE(id);
    f.enqueue("q");
    auto path = f.dir.file("c.db");
    EXPECT_EQ(rows_of(path, "messages"), 2);
    auto c = f.consumer({"q"});
    auto got = c->fetch(10, 0ms);
    ASSERT_TRUE(got);
    ASSERT_EQ(got->size(), 2u);
    auto t = codec::decode((*got)[0].envelope);
    ASSERT_TRUE(t);
    EXPECT_EQ(t->id, *id);
    EXPECT_EQ(t->args, Json::array({big}));
    // A retry stores the message as it goes again; a dead letter keeps it; the acknowledged
    // task's message goes with its row (history off here: ?history=0 is the default's opposite).
    auto retried = (*got)[0].envelope;
    retried.headers["retries"] = 1;
    std::vector<Settlement> s = {
        {.kind = Settlement::Kind::retry,
         .tag = (*got)[0].tag,
         .envelope = retried,
         .not_before = SystemClock::now()},
        {.kind = Settlement::Kind::dead_letter, .tag = (*got)[1].tag, .reason = "no"}};
    ASSERT_TRUE(c->settle(s));
    auto again = c->fetch(10, 2s);
    ASSERT_TRUE(again);
    ASSERT_EQ(again->size(), 1u);
    auto t2 = codec::decode((*again)[0].envelope);
    ASSERT_TRUE(t2);
    EXPECT_EQ(t2->retries, 1);
    EXPECT_EQ(t2->args, Json::array({big}));
    auto dl = f.broker->dead_letters("q", 10);
    ASSERT_TRUE(dl);
    ASSERT_EQ(dl->size(), 1u);
    EXPECT_EQ(codec::decode((*dl)[0].envelope)->id, (*got)[1].message_id);
    EXPECT_EQ(*f.broker->purge_dead("q"), 1u);
    EXPECT_EQ(rows_of(path, "messages"), 1);
}

TEST(SqliteEngine, AConsumerThatDecodesHandsOverTheTaskAndKeepsItsMessageAsStored) {
    Fixture f;
    // A message from another publisher: headers Conveyor does not know, a masked argsrepr,
    // a shadow name; beside it one that does not decode and one of a raw queue.
    Envelope foreign = codec::encode(TaskMessage{.id = "foreign-1",
                                                 .name = "t",
                                                 .args = {1},
                                                 .priority = 7,
                                                 .reply_to = "replies",
                                                 .correlation_id = "corr-1"});
    foreign.headers["argsrepr"] = "***";
    foreign.headers["shadow"] = "renamed";
    foreign.headers["x-custom"] = {{"a", {1, "two"}}, {"", nullptr}};
    Envelope broken = codec::encode(TaskMessage{.id = "broken-1", .name = "t"});
    broken.headers.erase("id");
    Envelope raw;
    raw.content_type = "text/plain";
    raw.body = "hello";
    ASSERT_TRUE(f.broker->publish(
        std::vector<OutgoingMessage>{{.queue = "q", .task_id = "foreign-1", .envelope = foreign},
                                     {.queue = "q", .task_id = "broken-1", .envelope = broken},
                                     {.queue = "raw", .task_id = "raw-1", .envelope = raw}}));
    auto b = Broker::open(f.url);
    auto c = (*b)->consume({.queues = {"q", "raw"},
                            .name = "test",
                            .read_ahead = true,
                            .decode = true,
                            .raw_queues = {"raw"}});
    ASSERT_TRUE(c);
    std::map<std::string, Delivery> got;
    for (int i = 0; i < 3 && got.size() < 3; ++i) {
        auto batch = (*c)->fetch(10, 1s);
        ASSERT_TRUE(batch);
        for (auto& d : *batch) got[d.message_id] = std::move(d);
    }
    ASSERT_EQ(got.size(), 3u);
    // The task, decoded as it was read; its message only on asking, as stored.
    auto& good = got["foreign-1"];
    ASSERT_TRUE(good.task);
    EXPECT_EQ(good.task->name, "t");
    EXPECT_EQ(good.task->args, Json({1}));
    EXPECT_EQ(good.task->extra_headers.at("x-custom"), foreign.headers["x-custom"]);
    EXPECT_EQ(good.task->priority, 7);
    EXPECT_EQ(good.task->reply_to, "replies");
    EXPECT_EQ(good.task->correlation_id, "corr-1");
    EXPECT_TRUE(good.envelope.body.empty());
    auto kept = (*c)->message(good.tag);
    ASSERT_TRUE(kept);
    EXPECT_EQ(kept->headers, foreign.headers);
    EXPECT_EQ(kept->body, foreign.body);
    EXPECT_EQ(kept->content_type, foreign.content_type);
    // The others come as their envelopes, for the worker to decode (and refuse) itself.
    EXPECT_FALSE(got["broken-1"].task);
    EXPECT_FALSE(codec::decode(got["broken-1"].envelope));
    EXPECT_FALSE(got["raw-1"].task);
    EXPECT_EQ(got["raw-1"].envelope.body, "hello");
    // A retry sends on the message as stored; delivered again, it comes as its envelope (the
    // worker's delivery limit comes before decoding it again).
    Envelope again = *kept;
    again.headers["retries"] = 1;
    std::vector<Settlement> s = {{.kind = Settlement::Kind::retry,
                                  .tag = good.tag,
                                  .envelope = again,
                                  .not_before = SystemClock::now()},
                                 {.kind = Settlement::Kind::ack, .tag = got["broken-1"].tag},
                                 {.kind = Settlement::Kind::ack, .tag = got["raw-1"].tag}};
    ASSERT_TRUE((*c)->settle(s));
    EXPECT_FALSE((*c)->message(good.tag)) << "settled: no longer held";
    auto second = (*c)->fetch(10, 2s);
    ASSERT_TRUE(second);
    ASSERT_EQ(second->size(), 1u);
    EXPECT_FALSE((*second)[0].task);
    EXPECT_EQ((*second)[0].deliveries, 2);
    EXPECT_EQ((*second)[0].envelope.headers, again.headers);
}

TEST(SqliteEngine, AFileFromBeforeMessagesHadATableOfTheirOwnIsMovedForward) {
    TempDir dir;
    auto path = dir.file("old.db");
    {
        auto db = sqlite::Db::open(path, "normal");
        ASSERT_TRUE(db);
        // The layout of earlier releases: the message in the task's row.
        ASSERT_TRUE(db->exec(R"sql(
CREATE TABLE tasks(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, queue TEXT NOT NULL,
  state INTEGER NOT NULL, priority INTEGER NOT NULL DEFAULT 0,
  available_at INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, lease_until INTEGER,
  deliveries INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0,
  props TEXT NOT NULL, headers TEXT NOT NULL, body BLOB NOT NULL, reason TEXT,
  dead_at INTEGER, name TEXT, created_at INTEGER, started_at INTEGER, finished_at INTEGER,
  attempts TEXT, error TEXT);
INSERT INTO tasks(id, queue, state, props, headers, body, name, reason) VALUES
  ('old-1', 'q', 0, '{"content_type":"application/json","content_encoding":"utf-8"}',
   '{"lang":"py","task":"t","id":"old-1","retries":0}', '[[1], {}, {}]', 't', NULL),
  ('old-2', 'q', 2, '{"content_type":"application/json","content_encoding":"utf-8"}',
   '{"lang":"py","task":"t","id":"old-2","retries":0}', '[[2], {}, {}]', 't', 'boom');
)sql"));
    }
    auto broker = Broker::open("sqlite://" + path);
    ASSERT_TRUE(broker) << broker.error().message;
    EXPECT_EQ(rows_of(path, "messages"), 2);
    // ... and counted from its rows.
    EXPECT_EQ(stats_of(**broker, "q").ready, 1);
    EXPECT_EQ(stats_of(**broker, "q").dead, 1);
    auto dl = (*broker)->dead_letters("q", 10);
    ASSERT_TRUE(dl) << dl.error().message;
    ASSERT_EQ(dl->size(), 1u);
    EXPECT_EQ((*dl)[0].reason, "boom");
    EXPECT_EQ((*dl)[0].envelope.body, "[[2], {}, {}]");
    Client client(*broker);
    auto fresh = client.enqueue("t", Json::array({3}), Json::object(), {.queue = "q"});
    ASSERT_TRUE(fresh);
    auto c = (*broker)->consume({.queues = {"q"}, .name = "test"});
    ASSERT_TRUE(c);
    auto got = (*c)->fetch(10, 0ms);
    ASSERT_TRUE(got);
    ASSERT_EQ(got->size(), 2u);
    auto old = codec::decode((*got)[0].envelope);
    ASSERT_TRUE(old) << old.error().message;
    EXPECT_EQ(old->id, "old-1");
    EXPECT_EQ(old->args, Json::array({1}));
    EXPECT_EQ(codec::decode((*got)[1].envelope)->id, *fresh);
    // Opening it again finds nothing more to move.
    auto again = Broker::open("sqlite://" + path);
    ASSERT_TRUE(again) << again.error().message;
    EXPECT_EQ(rows_of(path, "messages"), 3);
}

TEST(SqliteEngine, ABatchGoesInByChunksAndEachNewIdGetsItsOwnMessageOnce) {
    // 214 tasks in one enqueue (chunks of 64, 64, 64, 8, 8, then six of one) and 9 messages
    // published as they came (8 and 1), among them ids the file already holds (waiting, or
    // with a stored result), an id twice in one chunk and twice across chunks, and a chunk of
    // only known ids: the first of each new id is stored, with its own message.
    Fixture f;
    auto path = f.dir.file("c.db");
    for (int i = 0; i < 3; ++i)
        ASSERT_TRUE(f.client.enqueue("t", Json::array({-1}), {},
                                     {.queue = "q", .id = fmt::format("old-{}", i)}));
    ASSERT_TRUE(f.broker->store_results(
        std::vector<TaskResult>{{.id = "done-0", .state = TaskState::success, .result = 1}}, ""));
    const std::map<int, std::string> known = {
        {70, "old-0"},  {80, "new-3"},   {100, "new-90"}, {192, "old-0"}, {193, "old-1"},
        {194, "old-2"}, {195, "done-0"}, {196, "new-5"},  {197, "new-6"}, {198, "new-7"},
        {199, "new-8"}, {203, "done-0"}, {210, "old-1"}};
    std::vector<TaskMessage> batch;
    std::map<std::string, int> first;  // new id -> the argument it was first enqueued with
    int delayed = 0;
    for (int i = 0; i < 214; ++i) {
        auto k = known.find(i);
        std::string id = k != known.end() ? k->second : fmt::format("new-{}", i);
        TaskMessage t{.id = id, .name = "t", .args = Json::array({i})};
        if (i % 9 == 4) t.eta = SystemClock::now() + std::chrono::hours(1);
        if (k == known.end()) {
            delayed += t.eta ? 1 : 0;
            first[id] = i;
        }
        batch.push_back(std::move(t));
    }
    ASSERT_EQ(first.size(), 214u - known.size());
    ASSERT_TRUE(f.client.enqueue_many(std::move(batch), {.queue = "q"}));
    // Messages as they came (their envelope stored as it is).
    std::vector<OutgoingMessage> envelopes;
    for (int i = 0; i < 9; ++i) {
        std::string id = i == 4 ? "new-0" : fmt::format("env-{}", i);
        envelopes.push_back({.queue = "q",
                             .task_id = id,
                             .envelope = codec::encode(TaskMessage{
                                 .id = id, .name = "t", .args = Json::array({1000 + i})})});
        if (i != 4) first[id] = 1000 + i;
    }
    ASSERT_TRUE(f.broker->publish(envelopes));
    const auto stored = std::int64_t(3 + first.size());
    auto stats = stats_of(*f.broker, "q");
    EXPECT_EQ(stats.ready, stored - delayed);
    EXPECT_EQ(stats.delayed, delayed);
    EXPECT_EQ(rows_of(path, "tasks"), stored);
    EXPECT_EQ(rows_of(path, "messages"), stored);
    // Each task's message is its own (delayed ones too): its id, and the argument of its
    // first enqueue.
    auto db = sqlite::Db::open(path, "normal");
    ASSERT_TRUE(db);
    auto rows = db->prepare(
        "SELECT tasks.id, json_extract(headers, '$.id'), json_extract(CAST(body AS TEXT), "
        "'$[0][0]') FROM tasks JOIN messages USING(seq)");
    ASSERT_TRUE(rows);
    std::set<std::string> seen;
    while (*rows->step()) {
        std::string id = rows->text(0);
        EXPECT_EQ(rows->text(1), id);
        EXPECT_TRUE(seen.insert(id).second) << id << " twice";
        if (id.starts_with("old-")) {
            EXPECT_EQ(rows->i64(2), -1) << id;
            continue;
        }
        ASSERT_TRUE(first.contains(id)) << id;
        EXPECT_EQ(rows->i64(2), first[id]) << id;
    }
    EXPECT_EQ(std::int64_t(seen.size()), stored);
    // And the consumer gets them.
    auto c = f.consumer({"q"});
    auto got = c->fetch(300, 0ms);
    ASSERT_TRUE(got);
    EXPECT_EQ(std::int64_t(got->size()), stored - delayed);
}

TEST(SqliteEngine, AnAcknowledgementTwiceInOneChunkSettlesItsTaskOnceAsTheFirstSays) {
    Fixture f;
    std::vector<std::string> ids;
    for (int i = 0; i < 8; ++i) ids.push_back(f.enqueue("q"));
    auto c = f.consumer({"q"});
    auto got = c->fetch(8, 0ms);
    ASSERT_TRUE(got);
    ASSERT_EQ(got->size(), 8u);
    // Eight acknowledgements in one statement, the third task's twice (the second time
    // revoked, with its result); then the last one alone.
    std::vector<Settlement> acks;
    for (int i = 0; i < 8; ++i) {
        if (i == 4)
            acks.push_back(
                {.kind = Settlement::Kind::ack,
                 .tag = (*got)[2].tag,
                 .result = TaskResult{.id = (*got)[2].message_id, .state = TaskState::revoked}});
        acks.push_back({.kind = Settlement::Kind::ack, .tag = (*got)[std::size_t(i)].tag});
    }
    ASSERT_TRUE(c->settle(acks));
    EXPECT_EQ(stats_of(*f.broker, "q").in_flight, 0);
    auto h = *f.broker->history();
    for (auto& d : *got) EXPECT_EQ(h->task(d.message_id)->state, HistoryState::succeeded);
    EXPECT_NE(f.broker->result((*got)[2].message_id)->state, TaskState::revoked);
}

TEST(SqliteEngine, AClaimReadsItsMessagesByChunksEachToItsOwnTask) {
    // 75 tasks claimed at once (their messages read 64, 8, then 1 at a time), by priority
    // first, so not in the order of their numbers; one has lost its message.
    Fixture f;
    std::vector<std::string> ids;
    for (int i = 0; i < 75; ++i) {
        auto id = f.client.enqueue("t", Json::array({i}), Json::object(),
                                   {.queue = "q", .priority = i % 3});
        ASSERT_TRUE(id);
        ids.push_back(*id);
    }
    auto path = f.dir.file("c.db");
    {
        auto db = sqlite::Db::open(path, "normal");
        ASSERT_TRUE(db);
        ASSERT_TRUE(db->exec(fmt::format(
            "DELETE FROM messages WHERE seq=(SELECT seq FROM tasks WHERE id='{}')", ids[40])));
    }
    auto c = f.consumer({"q"});
    auto got = c->fetch(75, 0ms);
    ASSERT_TRUE(got);
    ASSERT_EQ(got->size(), 75u);
    std::set<std::string> seen;
    int last_priority = 2;
    for (auto& d : *got) {
        auto i = std::find(ids.begin(), ids.end(), d.message_id) - ids.begin();
        ASSERT_LT(i, 75) << d.message_id;
        seen.insert(d.message_id);
        EXPECT_LE(i % 3, last_priority) << i;  // highest priority first
        last_priority = int(i % 3);
        if (i == 40) {  // delivered empty (the worker dead-letters it as malformed)
            EXPECT_FALSE(d.task);
            EXPECT_TRUE(d.envelope.body.empty());
            continue;
        }
        std::optional<TaskMessage> task;
        if (d.task)
            task = *d.task;
        else if (auto t = codec::decode(d.envelope))
            task = std::move(*t);
        ASSERT_TRUE(task) << i;
        EXPECT_EQ(task->id, d.message_id);
        EXPECT_EQ(task->args, Json::array({i})) << i;
    }
    EXPECT_EQ(seen.size(), 75u);
}

TEST(SqliteEngine, ANewTaskNeverTakesTheNumberOfOneTheSearchIndexHasRead) {
    // The newest task deleted as it finishes (?history=0), then another enqueued: the search
    // finds the new one by its own arguments, not by the gone one's.
    TempDir dir;
    auto broker = *Broker::open("sqlite://" + dir.file("c.db") + "?history=0");
    Client client(broker);
    ASSERT_TRUE(client.enqueue("t", Json::array({"alphabet"}), {}, {.queue = "q"}));
    auto h = *broker->history();
    ASSERT_EQ(*h->index(100), 1u);
    auto c = *broker->consume({.queues = {"q"}, .lease = 30s, .name = "c"});
    auto got = c->fetch(1, 0ms);
    ASSERT_EQ(got->size(), 1u);
    std::vector<Settlement> ack = {{Settlement::Kind::ack, (*got)[0].tag}};
    ASSERT_TRUE(c->settle(ack));
    auto id = client.enqueue("t", Json::array({"bravo"}), {}, {.queue = "q"});
    ASSERT_TRUE(id);
    ASSERT_EQ(*h->index(100), 1u);
    auto found = h->tasks({.search = "bravo"});
    ASSERT_TRUE(found) << found.error().message;
    ASSERT_EQ(found->tasks.size(), 1u);
    EXPECT_EQ(found->tasks[0].id, *id);
    auto gone = h->tasks({.search = "alphabet"});
    ASSERT_TRUE(gone);
    EXPECT_TRUE(gone->tasks.empty());
}

TEST(SqliteEngine, QueueCountsFollowEveryChangeOfState) {
    Fixture f;
    auto path = f.dir.file("c.db");
    // The counts the writers keep against the rows themselves.
    auto truth = [&](int state) {
        return rows_of(path, fmt::format("tasks WHERE queue='q' AND state={}", state));
    };
    auto same = [&](const char* when) {
        auto s = stats_of(*f.broker, "q");
        EXPECT_EQ(s.ready, truth(0)) << when;
        EXPECT_EQ(s.in_flight, truth(1)) << when;
        EXPECT_EQ(s.dead, truth(2)) << when;
        EXPECT_EQ(s.delayed, truth(3)) << when;
    };
    for (int i = 0; i < 6; ++i) f.enqueue("q");
    f.enqueue("q", {.countdown = std::chrono::hours(1)});
    same("enqueued");
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 6);
    EXPECT_EQ(stats_of(*f.broker, "q").delayed, 1);
    auto c = f.consumer({"q"});
    auto got = c->fetch(5, 0ms);
    ASSERT_EQ(got->size(), 5u);
    same("claimed");
    EXPECT_EQ(stats_of(*f.broker, "q").in_flight, 5);
    std::vector<Settlement> s = {
        {.kind = Settlement::Kind::ack, .tag = (*got)[0].tag},
        {.kind = Settlement::Kind::dead_letter, .tag = (*got)[1].tag, .reason = "x"},
        {.kind = Settlement::Kind::dead_letter, .tag = (*got)[2].tag, .reason = "y"},
        {.kind = Settlement::Kind::release, .tag = (*got)[3].tag},
        {.kind = Settlement::Kind::retry,
         .tag = (*got)[4].tag,
         .envelope = (*got)[4].envelope,
         .not_before = SystemClock::now() + std::chrono::hours(1)}};
    ASSERT_TRUE(c->settle(s));
    same("settled");
    EXPECT_EQ(stats_of(*f.broker, "q").delayed, 2);
    EXPECT_EQ(stats_of(*f.broker, "q").dead, 2);
    std::vector<std::string> one = {(*got)[1].message_id};
    EXPECT_EQ(*f.broker->replay_dead("q", one), 1u);
    same("replayed");
    EXPECT_EQ(*f.broker->purge_dead("q"), 1u);
    same("purged");
    auto all = stats_of(*f.broker, "q");
    EXPECT_EQ(all.ready, 3);
    EXPECT_EQ(all.dead, 0);
    {
        // Claimed and handed back as the consumer closes; claimed and reclaimed once its lease
        // runs out.
        auto gone = f.consumer({"q"});
        ASSERT_EQ(gone->fetch(1, 0ms)->size(), 1u);
        same("claimed by a consumer that closes");
    }
    same("handed back as it closed");
    auto lapsing = f.consumer({"q"}, 200ms);
    ASSERT_EQ(lapsing->fetch(1, 0ms)->size(), 1u);
    std::this_thread::sleep_for(300ms);
    auto taker = f.consumer({"q"});
    auto taken = taker->fetch(10, 0ms);
    ASSERT_TRUE(taken);
    EXPECT_EQ(taken->size(), 3u);
    same("reclaimed");
    EXPECT_EQ(stats_of(*f.broker, "q").in_flight, 3);
    std::vector<Settlement> back;
    for (auto& d : *taken) back.push_back({.kind = Settlement::Kind::release, .tag = d.tag});
    ASSERT_TRUE(taker->settle(back));
    // What the dashboard does to one task.
    auto history = f.broker->history();
    ASSERT_TRUE(history);
    auto id = (*taken)[0].message_id;
    ASSERT_TRUE((*history)->revoke(id));
    same("revoked");
    ASSERT_TRUE((*history)->retry(id));
    same("retried");
    ASSERT_TRUE((*history)->remove(id));
    same("removed");
    EXPECT_EQ(stats_of(*f.broker, "q").ready, 2);
}
