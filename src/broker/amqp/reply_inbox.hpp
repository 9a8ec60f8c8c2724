#pragma once
// Celery's rpc:// result backend on the sending side: this process's reply queue.

#include <sys/time.h>

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

#include "broker/amqp/amqp_engine.hpp"
#include "conveyor/broker.hpp"

namespace conveyor::amqp {

/// This process's rpc reply queue: results of the tasks it sent come back here (Celery's rpc://
/// backend). Auto-deleted when the process goes; `x-expires` = result_expires otherwise.
class ReplyInbox {
  public:
    explicit ReplyInbox(std::shared_ptr<Engine> e) : e_(std::move(e)) {}

    Result<std::string> address();
    const std::string& name() const { return queue_; }

    /// Remembers ids sent with this reply queue, so their result reads PENDING until it comes.
    void sent(std::span<const OutgoingMessage> msgs);

    Result<TaskResult> get(std::string_view id);

    Result<TaskResult> wait(std::string_view id, milliseconds timeout);

  private:
    static Result<TaskResult> not_sent(std::string_view id);

    Result<void> ensure();

    /// Reads every reply that arrives within `first` (then whatever is already there).
    void drain(timeval first);

    void remember(std::string id);

    static constexpr std::size_t kKeep = 100000;
    std::shared_ptr<Engine> e_;
    std::mutex mu_;
    std::unique_ptr<Connection> conn_;
    std::string queue_;
    std::unordered_map<std::string, TaskResult> known_;
    std::deque<std::string> order_;
};

}  // namespace conveyor::amqp
