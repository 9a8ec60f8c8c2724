#pragma once
/// Retry policy: exponential backoff with full jitter, per task.

#include <chrono>

namespace conveyor {

/// How a failed task is retried. Value type.
/// The n-th retry (n = 0 for the first) waits a uniformly random time in
/// [0, min(backoff_max, backoff_base * 2^n)] seconds ("full jitter"), or exactly that
/// bound when `jitter` is false. After `max_retries` retries the task is dead-lettered.
struct RetryPolicy {
    int max_retries = 3;
    double backoff_base = 1.0;   ///< seconds
    double backoff_max = 600.0;  ///< seconds, the cap
    bool jitter = true;
};

/// Delay before retry number `retries_so_far` (0-based). `unit_random` is a sample of
/// U[0,1); pass the same value to get the same delay (tests do).
std::chrono::milliseconds retry_delay(const RetryPolicy& policy, int retries_so_far,
                                      double unit_random) noexcept;

/// True while the task still has retries left.
inline bool may_retry(const RetryPolicy& policy, int retries_so_far) noexcept {
    return retries_so_far < policy.max_retries;
}

}  // namespace conveyor
