#pragma once
// Publishing messages the caller is done with: an engine that keeps messages in memory may take
// their envelopes instead of copying them. Not part of the public API.

#include <span>

#include "conveyor/broker.hpp"

namespace conveyor::detail {

/// An engine that can take published messages' envelopes (the memory engine).
class MovePublisher {
  public:
    [[nodiscard]] virtual Result<void> publish_moved(std::span<OutgoingMessage> messages) = 0;
    /// It hands tasks to its workers as they are (OutgoingMessage::task), without encoding.
    virtual bool passes_tasks() const noexcept { return false; }

  protected:
    ~MovePublisher() = default;
};

/// Whether publishers to `to` give it task objects instead of encoded messages.
inline bool passes_tasks(const Publisher& to) {
    auto* p = dynamic_cast<const MovePublisher*>(&to);
    return p && p->passes_tasks();
}

/// Publishes `messages`; their envelopes may be moved out (left valid but unspecified).
[[nodiscard]] inline Result<void> publish_moved(Publisher& to,
                                                std::span<OutgoingMessage> messages) {
    if (auto* p = dynamic_cast<MovePublisher*>(&to)) return p->publish_moved(messages);
    return to.publish(std::span<const OutgoingMessage>(messages));
}

}  // namespace conveyor::detail
