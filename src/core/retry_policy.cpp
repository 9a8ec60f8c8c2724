#include "conveyor/retry_policy.hpp"

#include <algorithm>
#include <cmath>

namespace conveyor {

std::chrono::milliseconds retry_delay(const RetryPolicy& p, int retries_so_far,
                                      double unit_random) noexcept {
    double base = std::max(0.0, p.backoff_base);
    double cap = std::max(0.0, p.backoff_max);
    int n = std::clamp(retries_so_far, 0, 62);
    double bound = std::min(cap, base * std::ldexp(1.0, n));
    double u = std::clamp(unit_random, 0.0, 1.0);
    double seconds = p.jitter ? bound * u : bound;
    return std::chrono::milliseconds(static_cast<long long>(std::llround(seconds * 1000.0)));
}

}  // namespace conveyor
