#pragma once
// The run state of a long-running object (a worker, a scheduler): run on the caller's thread
// or on a thread of its own, waited for with a deadline, never destroyed while it runs.

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "conveyor/error.hpp"

namespace conveyor::detail {

class Lifecycle {
  public:
    Lifecycle() = default;
    Lifecycle(const Lifecycle&) = delete;
    Lifecycle& operator=(const Lifecycle&) = delete;
    /// Joins its own thread; the owner stops the run and waits for it first.
    ~Lifecycle() { join(); }

    /// Runs `body` on the calling thread. Errc::invalid_argument when a run is under way.
    template <class Body>
    Result<void> run(const char* what, Body&& body) {
        if (!enter()) return already(what);
        auto outcome = body();
        leave(outcome);  // nothing of this object is touched after this
        return outcome;
    }

    /// Runs `body` on a thread of its own; returns at once.
    template <class Body>
    Result<void> start(const char* what, Body body) {
        if (!enter()) return already(what);
        join();  // the thread of a run that ended
        thread_ = std::thread([this, body = std::move(body)]() mutable { leave(body()); });
        return {};
    }

    /// Waits until no run is under way, at most `timeout`; then the last run's outcome
    /// (success when there was none). Errc::timeout when it still runs.
    Result<void> wait(std::optional<std::chrono::milliseconds> timeout, const char* what) {
        std::unique_lock lk(mu_);
        auto done = [&] { return !running_; };
        if (!timeout)
            cv_.wait(lk, done);
        else if (!cv_.wait_for(lk, *timeout, done))
            return fail(Errc::timeout, std::string(what) + " still runs");
        return outcome_;
    }

    bool running() const {
        std::lock_guard lk(mu_);
        return running_;
    }

    void join() {
        if (!thread_.joinable()) return;
        if (thread_.get_id() == std::this_thread::get_id())
            thread_.detach();  // destroyed by its own run (a handler): it ends by itself
        else
            thread_.join();
    }

  private:
    bool enter() {
        std::lock_guard lk(mu_);
        if (running_) return false;
        running_ = true;
        return true;
    }
    void leave(Result<void> outcome) {
        std::lock_guard lk(mu_);
        outcome_ = std::move(outcome);
        running_ = false;
        cv_.notify_all();  // under the lock: a waiter may destroy this object once it has it
    }
    static Result<void> already(const char* what) {
        return fail(Errc::invalid_argument, std::string(what) + " is already running");
    }

    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool running_ = false;
    Result<void> outcome_;
    std::thread thread_;
};

}  // namespace conveyor::detail
