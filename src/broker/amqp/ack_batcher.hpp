#pragma once
// When a RabbitMQ consumer acks what its worker settled: few frames, without holding settled
// deliveries so long that they fill the prefetch window. Pure logic; the consumer sends.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <vector>

namespace conveyor::amqp {

/// Settled delivery tags waiting for their ack. Most go in one multiple-ack covering every
/// settled tag below the oldest delivery still unsettled (handlers finish roughly in order);
/// the others wait for a later call, but at most kDelay, kBacklog tags or a quarter of the
/// prefetch window, then they are acked one by one. Not thread-safe.
class AckBatcher {
  public:
    using Clock = std::chrono::steady_clock;
    static constexpr auto kDelay = std::chrono::milliseconds(100);
    static constexpr std::size_t kBacklog = 512;
    static constexpr auto kLinger = std::chrono::milliseconds(5);
    static constexpr std::size_t kBatch = 128;

    /// What to send now: one multiple-ack up to a tag, and single acks.
    struct Acks {
        std::optional<std::uint64_t> up_to;  ///< basic.ack multiple=1 with this tag
        std::vector<std::uint64_t> singles;  ///< basic.ack multiple=0, one each
        bool empty() const { return !up_to && singles.empty(); }
    };

    explicit AckBatcher(std::size_t prefetch) : prefetch_(prefetch) {}

    /// A delivery was settled; its ack may wait.
    void settled(std::uint64_t tag) { waiting_.insert(tag); }
    /// The acks due at `now`, taken out of the waiting ones. `oldest_unsettled`: the oldest
    /// delivery still held by the worker (none: every delivery is settled). `all`: send every
    /// waiting ack now (shutdown, ordered queues).
    Acks due(std::optional<std::uint64_t> oldest_unsettled, bool all, Clock::time_point now);
    /// Forgets every waiting ack (the connection they belonged to is gone).
    void clear() {
        waiting_.clear();
        since_.reset();
    }
    bool empty() const { return waiting_.empty(); }
    std::size_t size() const { return waiting_.size(); }

  private:
    std::size_t prefetch_;
    std::set<std::uint64_t> waiting_;
    std::optional<Clock::time_point> since_;  // when the oldest waiting ack began to wait
};

}  // namespace conveyor::amqp
