#pragma once
// Celery protocol v2 (Conveyor's native wire format) and the raw format of foreign publishers.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
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

/// encode(task)'s body: [args, kwargs, embed] as compact JSON text.
std::string encode_body(const TaskMessage& task);

/// Takes encode's headers one at a time (write_headers).
class HeaderWriter {
  public:
    virtual ~HeaderWriter() = default;
    virtual void text(std::string_view key, std::string_view value) = 0;
    virtual void integer(std::string_view key, std::int64_t value) = 0;
    virtual void boolean(std::string_view key, bool value) = 0;
    /// Any other value: the time limits' pair, an extra header.
    virtual void json(std::string_view key, const Json& value) = 0;
};

/// Writes encode(task)'s headers to `to` in their JSON object's key order, without building
/// it: Celery's header set merged with the task's extra headers (a name encode sets itself is
/// not taken from them). `nulls`: also the extra headers that say nothing (is_null_header),
/// which encode keeps.
void write_headers(const TaskMessage& task, HeaderWriter& to, bool nulls);

/// encode(task)'s headers as compact JSON text, in their JSON object's key order, without
/// null ones (is_null_header; Celery reads a missing header as null): the text of that object
/// with its nulls left out, written without building it (the sqlite engine stores it).
std::string headers_text(const TaskMessage& task);

/// Whether a header says no more than a missing one: null, or an array of nulls
/// (`timelimit: [null, null]`).
bool is_null_header(const Json& value);

/// Encodes a task for a `format = "raw"` queue, as a plain publisher would: the body is the one
/// argument (a string as text/plain, anything else as JSON); the id travels as correlation id.
/// Errc::invalid_argument when the task has other than one argument, or kwargs.
Result<Envelope> encode_raw(const TaskMessage& task, std::string_view queue);

/// Makes `task` what decode(encode(task)) gives (root and correlation ids filled in, no raw body),
/// for engines that pass tasks without encoding them. False when a worker's decode would refuse
/// the encoded message (a retry count or time limit out of range, headers nested too deep): such
/// a task is encoded after all, so that the worker dead-letters it as on every engine.
bool as_decoded(TaskMessage& task);

/// A header's value as the decoder reads it: a scalar in place, anything else as `other` (read
/// through Headers::json).
struct HeaderValue {
    enum class Kind { null, boolean, integer, unsigned_integer, real, string, other };
    Kind kind = Kind::null;
    bool boolean = false;
    std::int64_t integer = 0;
    std::uint64_t unsigned_integer = 0;
    double real = 0;
    std::string_view text;  ///< a string's bytes, valid while the headers are
};

/// A message's headers as the decoder reads them, without building a JSON tree of them first:
/// a JSON object (JsonHeaders), or an engine's own table (RabbitMQ's field table).
class Headers {
  public:
    virtual ~Headers() = default;
    /// The header named `key`; nullopt when there is none.
    virtual std::optional<HeaderValue> find(std::string_view key) const = 0;
    /// The header named `key` as JSON (null when there is none), for values that are not
    /// scalars and for the headers a task keeps as they are (TaskMessage::extra_headers).
    virtual Json json(std::string_view key) const = 0;
    /// Calls `each` with every header's name, in the table's order.
    virtual void names(const std::function<void(std::string_view)>& each) const = 0;
    /// Whether they are a table at all (none counts as an empty one).
    virtual bool is_table() const = 0;
    /// Whether some header nests deeper than detail::kMaxJsonDepth.
    virtual bool too_deep() const = 0;
};

/// Headers kept as a JSON object (Envelope::headers).
class JsonHeaders final : public Headers {
  public:
    explicit JsonHeaders(const Json& object) : json_(object) {}
    explicit JsonHeaders(Json&&) = delete;  // it reads the object where it is
    std::optional<HeaderValue> find(std::string_view key) const override;
    Json json(std::string_view key) const override;
    void names(const std::function<void(std::string_view)>& each) const override;
    bool is_table() const override;
    bool too_deep() const override;

  private:
    const Json& json_;
};

/// What decode reads of a message: its properties, its headers and its body.
struct MessageView {
    std::string_view content_type;
    std::string_view correlation_id;
    std::string_view reply_to;
    int priority = 0;
    const Headers& headers;
    std::string_view body;
};

/// Decodes a Celery protocol v2 (or v1) message, as decode(Envelope) does, reading its headers
/// where they are.
Result<TaskMessage> decode(const MessageView& message, std::size_t max_body = kDefaultMaxBody);

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
