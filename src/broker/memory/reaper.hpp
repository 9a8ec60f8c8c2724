#pragma once
// Frees what acknowledged tasks leave behind on a thread of its own, as Redis's lazy free does:
// a task's item, message, arguments and strings are each a block of their own, cold by the
// time the task is settled, and the worker's dispatcher (which settles) is the thread that
// sets a worker's pace. Handed over in batches; the thread starts with the first one.

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace conveyor::memory {

template <class T>
class Reaper {
  public:
    /// Past this many items waiting to be freed, the caller frees its batch itself: how many
    /// wait here stays bounded however far behind the thread falls.
    static constexpr std::size_t kMaxWaiting = 1 << 16;

    Reaper() = default;
    Reaper(const Reaper&) = delete;
    Reaper& operator=(const Reaper&) = delete;

    /// Everything handed over is freed before this returns.
    ~Reaper() {
        {
            std::lock_guard lk(mu_);
            stop_ = true;
        }
        cv_.notify_one();
        if (thread_.joinable()) thread_.join();
    }

    /// Takes `batch` to be freed on the reaper's thread (left empty), or frees it here when
    /// too much already waits or the thread cannot start (or memory runs out handing it over).
    void take(std::vector<T>& batch) noexcept {
        if (batch.empty()) return;
        bool wake = false;
        try {
            std::lock_guard lk(mu_);
            if (waiting_ + batch.size() <= kMaxWaiting && start()) {
                batches_.push_back(std::move(batch));
                waiting_ += batches_.back().size();
                wake = batches_.size() == 1;
                batch.clear();  // (moved from)
            }
        } catch (const std::exception&) {  // (out of memory): freed here
        }
        if (wake) cv_.notify_one();
        batch.clear();  // not handed over: freed here
    }

    /// How many are waiting to be freed (for tests).
    std::size_t waiting() const {
        std::lock_guard lk(mu_);
        return waiting_;
    }

  private:
    /// Starts the thread once (mu_ held); false when it cannot be started.
    bool start() {
        if (thread_.joinable()) return true;
        if (failed_) return false;
        try {
            thread_ = std::thread([this] { loop(); });
        } catch (const std::exception&) {
            failed_ = true;  // (out of threads or memory): freed by the callers
        }
        return thread_.joinable();
    }

    void loop() {
        std::unique_lock lk(mu_);
        for (;;) {
            cv_.wait(lk, [&] { return stop_ || !batches_.empty(); });
            if (batches_.empty()) return;  // stopping, and nothing left
            auto taken = std::move(batches_);
            batches_.clear();  // (moved from)
            lk.unlock();
            std::size_t n = 0;
            for (auto& b : taken) {
                n += b.size();
                b.clear();
            }
            taken.clear();
            lk.lock();
            waiting_ -= n;
        }
    }

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::vector<T>> batches_;
    std::size_t waiting_ = 0;
    bool stop_ = false;
    bool failed_ = false;
    std::thread thread_;
};

}  // namespace conveyor::memory
