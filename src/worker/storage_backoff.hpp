#pragma once
// Backing off while the broker fails for a while (a full disk, a lock another process holds
// past the busy timeout, an I/O error, RabbitMQ refusing for a moment). Pure: the caller gives
// the time and says what happened.

#include <algorithm>
#include <chrono>

#include "conveyor/error.hpp"

namespace conveyor::detail {

/// Waits 100 ms after the first failure, doubling up to 5 s while failures go on; a success
/// starts over. Not thread-safe.
class StorageBackoff {
  public:
    using Clock = std::chrono::steady_clock;
    static constexpr std::chrono::milliseconds kFirst{100};
    static constexpr std::chrono::milliseconds kMax{5000};

    /// Whether the broker may be tried again at `now`.
    bool ready(Clock::time_point now) const { return now >= retry_at_; }
    /// A failure at `now`. False when it is fatal (only Errc::unavailable may pass by
    /// itself); otherwise the next try waits, and true.
    bool failed(const Error& e, Clock::time_point now) {
        if (e.code != Errc::unavailable) return false;
        failing_ = true;
        retry_at_ = now + delay_;
        delay_ = std::min(delay_ * 2, kMax);
        return true;
    }
    /// A success: the next failure waits kFirst again.
    void succeeded() {
        failing_ = false;
        delay_ = kFirst;
    }
    /// Between a failure and the next success.
    bool failing() const { return failing_; }

  private:
    bool failing_ = false;
    Clock::time_point retry_at_{};
    std::chrono::milliseconds delay_{kFirst};
};

}  // namespace conveyor::detail
