#pragma once
// Publishing messages the caller is done with: an engine that keeps messages in memory may take
// their envelopes instead of copying them, and an engine may take tasks instead of Celery
// messages. Not part of the public API.

#include <span>

#include "conveyor/broker.hpp"

namespace conveyor::detail {

/// How an engine takes a Celery task published in this process.
enum class TaskForm {
    message,  ///< encoded as a Celery message (OutgoingMessage::envelope)
    decoded,  ///< as the task its workers run (memory: OutgoingMessage::task, codec::as_decoded)
    task,     ///< as given (OutgoingMessage::task): the engine writes it in its own form
              ///< (sqlite: the stored text; RabbitMQ: the header table), without the JSON tree
              ///< of the headers
};

/// An engine that can take published messages' envelopes (memory), or tasks (memory, sqlite,
/// RabbitMQ).
class MovePublisher {
  public:
    [[nodiscard]] virtual Result<void> publish_moved(std::span<OutgoingMessage> messages) = 0;
    /// How it takes tasks published in this process.
    virtual TaskForm task_form() const noexcept { return TaskForm::message; }

  protected:
    ~MovePublisher() = default;
};

/// How publishers to `to` give it tasks.
inline TaskForm task_form(const Publisher& to) {
    auto* p = dynamic_cast<const MovePublisher*>(&to);
    return p ? p->task_form() : TaskForm::message;
}

/// Publishes `messages`; their envelopes may be moved out (left valid but unspecified).
[[nodiscard]] inline Result<void> publish_moved(Publisher& to,
                                                std::span<OutgoingMessage> messages) {
    if (auto* p = dynamic_cast<MovePublisher*>(&to)) return p->publish_moved(messages);
    return to.publish(std::span<const OutgoingMessage>(messages));
}

}  // namespace conveyor::detail
