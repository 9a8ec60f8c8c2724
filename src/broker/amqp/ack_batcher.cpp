// When a RabbitMQ consumer acks what its worker settled.
#include "broker/amqp/ack_batcher.hpp"

#include <algorithm>
#include <iterator>

namespace conveyor::amqp {

AckBatcher::Acks AckBatcher::due(std::optional<std::uint64_t> oldest_unsettled, bool all,
                                 Clock::time_point now) {
    Acks out;
    if (waiting_.empty()) return out;
    auto covered = waiting_.lower_bound(oldest_unsettled.value_or(UINT64_MAX));
    if (!since_) since_ = now;
    // Covered acks go in one frame per kBatch tags (or kLinger), not per call. Settled
    // deliveries not yet acked still count against the prefetch window: never let them take
    // more than a quarter of it.
    const std::size_t window_share = std::max<std::size_t>(1, prefetch_ / 4);
    const std::size_t batch = std::min(kBatch, window_share);
    std::size_t n_covered = 0;  // counted up to `batch` only
    for (auto it = waiting_.begin(); it != covered && n_covered < batch; ++it) ++n_covered;
    // When acks must go (all, crowding their quarter of the window, or waited kDelay), the
    // covered ones go at once in one frame rather than lingering or going singly; what is left
    // is then looked at again: it goes one by one only if it still must.
    auto overdue = [&] {
        return all || waiting_.size() >= std::min(kBacklog, window_share) ||
               now - *since_ >= kDelay;
    };
    bool linger =
        !all && oldest_unsettled && n_covered < batch && now - *since_ < kLinger && !overdue();
    if (covered != waiting_.begin() && !linger) {
        out.up_to = *std::prev(covered);
        waiting_.erase(waiting_.begin(), covered);
    }
    if (waiting_.empty()) {
        since_.reset();
        return out;
    }
    if (!overdue()) return out;
    out.singles.assign(waiting_.begin(), waiting_.end());
    clear();
    return out;
}

}  // namespace conveyor::amqp
