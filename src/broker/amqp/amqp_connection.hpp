#pragma once
// One rabbitmq-c connection: open (TCP or TLS), error translation, topology calls, and a
// confirm-mode publisher with pipelining. Not thread-safe: one thread uses a connection at a time.

#include <amqp.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "broker/amqp/amqp_table.hpp"
#include "broker/amqp/publish_frames.hpp"
#include "conveyor/error.hpp"
#include "conveyor/task.hpp"
#include "core/url.hpp"

namespace conveyor::amqp {

/// One broker of a URL: where it is and who logs in.
struct Endpoint {
    std::string host = "127.0.0.1";
    int port = 5672;
    std::string vhost = "/";
    std::string user = "guest";
    std::string password = "guest";
};

/// What an amqp:// or amqps:// URL says (or a failover list of them, Celery's
/// "amqp://h1//;amqp://h2//").
struct ConnectionOptions : Endpoint {
    /// The other brokers of a failover list, after this one. Connections try them in turn,
    /// starting with the last one that worked (`preferred`, shared by copies).
    std::vector<Endpoint> failover;
    std::shared_ptr<std::atomic<std::size_t>> preferred =
        std::make_shared<std::atomic<std::size_t>>(0);
    bool tls = false;
    std::string cacert, cert, key;  ///< amqps: CA bundle, client certificate and key (PEM)
    bool verify = true;             ///< amqps: verify the server's certificate and name
    int heartbeat = 60;             ///< seconds
    std::chrono::milliseconds connect_timeout{10000};
    std::chrono::milliseconds rpc_timeout{30000};
    std::chrono::milliseconds publish_timeout{30000};  ///< reconnecting included
    std::string results = "rpc";  ///< result backend: rpc, redis://HOST:PORT/DB or none
    std::chrono::seconds result_expires{86400};  ///< how long results are kept
    std::string delay_queue_type = "quorum";     ///< delay levels: quorum or classic
    /// The management plugin's http:// URL: queue counts come from its API (every queue of
    /// the vhost, in-flight counts included); empty: from passive declares of known queues.
    std::string management;
};

/// Parses amqp://user:pass@host:port/vhost?heartbeat=S&connect_timeout=S&... .
Result<ConnectionOptions> parse_connection_options(const detail::BrokerUrl& url);
/// Parses one URL or a ';'-separated failover list of them; the options (the query) come from
/// the first URL, and a later one may repeat them or leave them out.
Result<ConnectionOptions> parse_connection_options(std::string_view urls);

/// The one translation from rabbitmq-c replies to Error.
Error translate(const amqp_rpc_reply_t& reply, std::string_view what);

/// A message on its way out, as AMQP sees it.
struct Wire {
    std::string_view exchange;
    std::string_view routing_key;
    const Envelope* envelope = nullptr;
    bool mandatory = true;
    /// Instead of `envelope`: a task, sent as codec::encode would have it, with `body`
    /// (codec::encode_body) and its headers written from its fields.
    const TaskMessage* task = nullptr;
    std::string_view body;
};

/// Properties of an envelope (persistent), allocated in `pool`.
/// `sent_at_ms` > 0: a message with headers (a task's, not a raw one) carries it as
/// kSentAtHeader, for the consumer's wait-time measure.
amqp_basic_properties_t properties(Pool& pool, const Envelope& envelope,
                                   std::int64_t sent_at_ms = 0);
/// Properties of codec::encode(task)'s message, as the overload above gives them, written from
/// the task's fields.
amqp_basic_properties_t properties(Pool& pool, const TaskMessage& task, std::int64_t sent_at_ms);
/// The envelope of a received message.
Envelope envelope_of(const amqp_basic_properties_t& props, amqp_bytes_t body);

/// A message a consumer received (basic.deliver), read out of rabbitmq-c's buffers.
struct Received {
    amqp_channel_t channel = 0;
    std::string consumer_tag;
    std::uint64_t delivery_tag = 0;
    bool redelivered = false;
    std::string exchange;
    std::string routing_key;
    std::string message_id;  ///< the message-id property
    /// Its properties and body, and its headers as JSON unless they were left in `headers`
    /// (consume_message's `headers_as_table`; then full_envelope() makes the JSON).
    Envelope envelope;
    OwnedTable headers;
    bool headers_in_envelope = false;
    /// The frame that came instead of a delivery (AMQP_STATUS_UNEXPECTED_STATE): a
    /// channel.close, a basic.cancel, ... Valid until the connection's buffers are released.
    std::optional<amqp_frame_t> unexpected;
};

/// Waits up to `timeout` (null: forever) for a delivery, as amqp_consume_message does, but
/// copies the body out frame by frame and recycles the channel's buffers after each frame:
/// rabbitmq-c otherwise keeps a message's frames, and after one 100 MB message the worker would
/// keep 100 MB for good. AMQP_STATUS_UNEXPECTED_STATE when another frame came first (in
/// `out.unexpected`). The message's headers come as JSON in `out.envelope`, or, with
/// `headers_as_table`, as the table they came in (`out.headers`; full_envelope() makes the JSON).
amqp_rpc_reply_t consume_message(amqp_connection_state_t state, Received& out,
                                 struct timeval* timeout, bool headers_as_table = false);

/// The received message's envelope with its headers as JSON (converted on the first call).
Envelope& full_envelope(Received& received);

/// How a queue is declared (AMQP's queue.declare bits). `passive`: only look it up.
struct QueueFlags {
    bool passive = false;
    bool durable = true;
    bool auto_delete = false;
    bool exclusive = false;
};

/// How an exchange is declared (AMQP's exchange.declare bits). `passive`: only look it up.
struct ExchangeFlags {
    bool passive = false;
    bool durable = true;
    bool auto_delete = false;
    bool internal = false;
};

/// Queue counts from a (passive) declare.
struct QueueInfo {
    std::uint32_t messages = 0;
    std::uint32_t consumers = 0;
};

class Connection {
  public:
    static Result<std::unique_ptr<Connection>> open(const ConnectionOptions& options,
                                                    std::string_view name);
    ~Connection();
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    amqp_connection_state_t raw() const noexcept { return conn_; }
    /// False once the connection failed; it must then be replaced.
    bool healthy() const noexcept { return healthy_; }

    /// Checks a reply on `channel`; answers a server's channel.close (the channel must be
    /// reopened) and marks the connection unhealthy on connection-level failures.
    Result<void> check(amqp_rpc_reply_t reply, amqp_channel_t channel, std::string_view what);
    /// After a consume returned AMQP_STATUS_UNEXPECTED_STATE: true when the frame that caused
    /// it was harmless (look again); false when a channel or the connection was closed, or the
    /// consumer cancelled.
    static bool pass_unexpected_frame(const amqp_frame_t& frame);
    /// Opens `channel` unless it is open.
    Result<void> ensure_channel(amqp_channel_t channel);
    /// Records that the server closed `channel` (after answering close-ok).
    void channel_closed(amqp_channel_t channel);

    // Topology, on the admin channel.
    Result<void> declare_exchange(std::string_view name, std::string_view type, ExchangeFlags flags,
                                  const Json& arguments);
    Result<QueueInfo> declare_queue(std::string_view name, const Json& arguments,
                                    QueueFlags flags = {});
    Result<void> bind_queue(std::string_view queue, std::string_view exchange, std::string_view key,
                            const Json& arguments = Json::object());
    Result<void> bind_exchange(std::string_view destination, std::string_view source,
                               std::string_view key, const Json& arguments = Json::object());
    Result<std::uint32_t> purge_queue(std::string_view name);
    /// Takes the oldest message of queue `name` and rejects it without requeueing, so that
    /// RabbitMQ dead-letters it (to where the queue's x-dead-letter-* arguments say) at once.
    /// False when the queue was empty or does not exist. A message taken and not rejected (the
    /// connection failed) goes back to the queue with the connection.
    Result<bool> dead_letter_oldest(std::string_view name);
    Result<void> delete_queue(std::string_view name);

    /// Publishes with confirms, pipelined, `mandatory` as each message says. Succeeds only when
    /// every message was confirmed and none was returned unroutable. `confirmed` (when given)
    /// says which ones the broker confirmed, so a caller can retry only the rest.
    Result<void> publish(std::span<const Wire> messages,
                         std::chrono::steady_clock::time_point deadline,
                         std::span<bool> confirmed = {});

    static constexpr amqp_channel_t kPublishChannel = 1;
    static constexpr amqp_channel_t kAdminChannel = 2;

  private:
    Connection() = default;
    static Result<std::unique_ptr<Connection>> open_endpoint(const ConnectionOptions& options,
                                                             const Endpoint& endpoint,
                                                             std::string_view name);
    amqp_connection_state_t conn_ = nullptr;
    bool healthy_ = true;
    bool open_channels_[4] = {false, false, false, false};
    bool confirm_mode_ = false;
    std::uint64_t next_seq_ = 1;  ///< publish sequence number of the next message
    ConnectionOptions options_;
    Pool pool_;
    PublishFrames frames_;  ///< a burst of publishes, written out in one send()
};

/// Percent-decodes a URL component.
std::string url_decode(std::string_view s);

}  // namespace conveyor::amqp
