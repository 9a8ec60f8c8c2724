// The memory engine's reaper (memory::Reaper): what it is handed is freed on its own thread,
// all of it by the time it is destroyed, and no more than its bound waits there.
#include "broker/memory/reaper.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

using namespace conveyor;

namespace {

/// Counts its destruction, and says on which thread it happened.
struct Tracked {
    std::atomic<int>* freed;
    std::mutex* mu;
    std::set<std::thread::id>* threads;
    explicit Tracked(std::atomic<int>* f, std::mutex* m, std::set<std::thread::id>* t)
        : freed(f), mu(m), threads(t) {}
    Tracked(Tracked&& o) noexcept
        : freed(std::exchange(o.freed, nullptr)), mu(o.mu), threads(o.threads) {}
    Tracked& operator=(Tracked&&) = delete;
    ~Tracked() {
        if (!freed) return;
        freed->fetch_add(1);
        std::lock_guard lk(*mu);
        threads->insert(std::this_thread::get_id());
    }
};

}  // namespace

TEST(Reaper, FreesWhatItIsHandedOnItsOwnThreadAndAllOfItBeforeItIsGone) {
    std::atomic<int> freed{0};
    std::mutex mu;
    std::set<std::thread::id> threads;
    {
        memory::Reaper<Tracked> reaper;
        for (int round = 0; round < 50; ++round) {
            std::vector<Tracked> batch;
            for (int i = 0; i < 100; ++i) batch.emplace_back(&freed, &mu, &threads);
            reaper.take(batch);
            EXPECT_TRUE(batch.empty());
        }
        // Freed meanwhile, by another thread than this one.
        for (int i = 0; i < 2000 && (freed.load() < 5000 || reaper.waiting() > 0); ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        EXPECT_EQ(freed.load(), 5000);
        EXPECT_EQ(reaper.waiting(), 0u);
        std::lock_guard lk(mu);
        EXPECT_FALSE(threads.contains(std::this_thread::get_id()));
        EXPECT_EQ(threads.size(), 1u);
    }
    // Handed over just before the end: freed before the destructor returns.
    freed = 0;
    {
        memory::Reaper<Tracked> reaper;
        std::vector<Tracked> batch;
        for (int i = 0; i < 1000; ++i) batch.emplace_back(&freed, &mu, &threads);
        reaper.take(batch);
    }
    EXPECT_EQ(freed.load(), 1000);
}

TEST(Reaper, FreesABatchInPlaceWhenTooMuchWaits) {
    std::atomic<int> freed{0};
    std::mutex mu;
    std::set<std::thread::id> threads;
    memory::Reaper<Tracked> reaper;
    // One batch past the bound is never handed over: freed by the caller, at once.
    std::vector<Tracked> big;
    for (std::size_t i = 0; i < memory::Reaper<Tracked>::kMaxWaiting + 1; ++i)
        big.emplace_back(&freed, &mu, &threads);
    reaper.take(big);
    EXPECT_TRUE(big.empty());
    EXPECT_EQ(freed.load(), int(memory::Reaper<Tracked>::kMaxWaiting + 1));
    EXPECT_EQ(reaper.waiting(), 0u);
    std::lock_guard lk(mu);
    EXPECT_EQ(threads, std::set<std::thread::id>{std::this_thread::get_id()});
}

TEST(Reaper, TakesFromSeveralThreadsAtOnce) {
    std::atomic<int> freed{0};
    std::mutex mu;
    std::set<std::thread::id> threads;
    {
        memory::Reaper<Tracked> reaper;
        std::vector<std::jthread> senders;
        for (int t = 0; t < 4; ++t)
            senders.emplace_back([&] {
                for (int round = 0; round < 200; ++round) {
                    std::vector<Tracked> batch;
                    for (int i = 0; i < 25; ++i) batch.emplace_back(&freed, &mu, &threads);
                    reaper.take(batch);
                }
            });
        senders.clear();  // joins
    }
    EXPECT_EQ(freed.load(), 4 * 200 * 25);
}
