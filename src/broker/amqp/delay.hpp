#pragma once
// Delayed delivery without plugins: 28 levels of TTL queues, one bit of the delay (in seconds)
// each, the bits written in the routing key (NServiceBus's "v2" design).
//
//   level L (27..0): topic exchange conveyor.delay.L bound to
//     - queue conveyor.delay.L (x-message-ttl 2^L s, dead-letters to level L-1's exchange,
//       or to conveyor.delay.deliver after level 0) with key "*.(27-L times)1.#"
//     - exchange conveyor.delay.(L-1) (or conveyor.delay.deliver) with key "*.(27-L)0.#"
//   conveyor.delay.deliver: topic exchange; each destination queue Q is bound with "#.<word(Q)>".
//   Its alternate exchange conveyor.delay.unroutable keeps what no queue takes any more (a
//   deleted destination), so a level is never blocked and nothing is dropped.
//
// A routing key is 28 words "0"/"1" (bit 27 first) and the destination's word.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace conveyor::amqp {

inline constexpr int kDelayLevels = 28;
inline constexpr std::int64_t kMaxDelaySeconds = (std::int64_t(1) << kDelayLevels) - 1;
inline constexpr std::string_view kDeliverExchange = "conveyor.delay.deliver";
inline constexpr std::string_view kUnroutableExchange = "conveyor.delay.unroutable";
inline constexpr std::string_view kUnroutableQueue = "conveyor.delay.unroutable";

/// "conveyor.delay.L": the exchange and the queue of a level (static storage).
std::string_view delay_level_name(int level);

/// A queue name as one routing-key word: '.', '%', '*' and '#' percent-escaped.
std::string routing_word(std::string_view queue);

/// Where a delayed message is published: the exchange of its highest set bit, and its key.
struct DelayRoute {
    std::string_view exchange;
    std::string routing_key;
};

/// Seconds to wait for a delay, rounded up (never early); clamped to [0, kMaxDelaySeconds].
std::int64_t delay_seconds(std::chrono::milliseconds delay);

/// The route of a message to `queue` after `seconds` (1..kMaxDelaySeconds).
DelayRoute delay_route(std::int64_t seconds, std::string_view queue);

/// Binding keys of level L: to its own queue ("1" at its bit) and onwards ("0" at its bit).
std::string delay_binding_key(int level, bool bit_set);

/// The delay (seconds) a routing key still encodes; -1 when it is not a delay key.
std::int64_t decode_delay_key(std::string_view routing_key);

}  // namespace conveyor::amqp
