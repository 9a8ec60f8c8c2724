#pragma once
// Celery protocol v2 (Conveyor's native wire format) and the raw format of foreign publishers.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "conveyor/error.hpp"
#include "conveyor/task.hpp"

namespace conveyor::codec {

inline constexpr std::string_view kJson = "application/json";
/// Bodies larger than this are refused by default (16 MiB).
inline constexpr std::size_t kDefaultMaxBody = 16u << 20;
/// Retry counts (`retries`, `max_retries`) and chord positions above this are refused.
inline constexpr std::int64_t kMaxRetries = 1000000;
/// Time limits (header `timelimit`, `[[task]] timeout`) above this many seconds (a year) are
/// refused: a task's deadline is kept on a clock that must not overflow.
inline constexpr double kMaxTimeLimit = 365.0 * 86400.0;

/// Encodes a task as Celery 5.2.6 does: full header set, body [args, kwargs, embed].
Envelope encode(const TaskMessage& task);

/// Encodes a task for a `format = "raw"` queue, as a plain publisher would: the body is the one
/// argument (a string as text/plain, anything else as JSON); the id travels as correlation id.
/// Errc::invalid_argument when the task has other than one argument, or kwargs.
Result<Envelope> encode_raw(const TaskMessage& task, std::string_view queue);

/// Makes `task` what decode(encode(task)) gives (root and correlation ids filled in, no raw body),
/// for engines that pass tasks without encoding them. False when a worker's decode would refuse
/// the encoded message (a retry count or time limit out of range, headers nested too deep): such
/// a task is encoded after all, so that the worker dead-letters it as on every engine.
bool as_decoded(TaskMessage& task);

/// Decodes a Celery protocol v2 (or v1) message. Every way a message can be wrong is
/// an Errc::malformed error whose message says what is wrong; it never throws.
Result<TaskMessage> decode(const Envelope& env, std::size_t max_body = kDefaultMaxBody);

/// Decodes a message of a `format = "raw"` queue: the body is the payload (args = [payload],
/// parsed as JSON when it is JSON, else a string) and the task name comes from the queue.
/// `fallback_id` is used when the publisher set neither an `id` header nor a correlation id.
Result<TaskMessage> decode_raw(const Envelope& env, std::string_view task_name,
                               std::string_view fallback_id,
                               std::size_t max_body = kDefaultMaxBody);

/// Python-like repr of a value (task-succeeded events carry the result this way).
std::string value_repr(const Json& value);
/// Python-like repr of args/kwargs for the argsrepr/kwargsrepr headers.
std::string args_repr(const Json& args);
std::string kwargs_repr(const Json& kwargs);

/// The id a broker files an envelope under: header `id`, else correlation id, else empty.
std::string envelope_id(const Envelope& env);

}  // namespace conveyor::codec
