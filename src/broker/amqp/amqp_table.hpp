#pragma once
// AMQP field tables <-> JSON, and a pool that owns the memory of tables being built.

#include <amqp.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "conveyor/task.hpp"
#include "core/codec.hpp"

namespace conveyor::amqp {

/// Memory for tables and byte strings handed to rabbitmq-c; freed with the pool.
class Pool {
  public:
    Pool() { init_amqp_pool(&pool_, 4096); }
    ~Pool() { empty_amqp_pool(&pool_); }
    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;

    amqp_bytes_t bytes(std::string_view s);
    /// A JSON object as a field table; other JSON kinds give an empty table.
    amqp_table_t table(const Json& object);
    /// The same, with one more 64-bit integer entry (replacing one of that name).
    amqp_table_t table(const Json& object, std::string_view key, std::int64_t value);
    /// codec::encode(task)'s headers as that table, written from the task's fields without
    /// their JSON tree (with no more entry when `key` is empty).
    amqp_table_t table(const TaskMessage& task, std::string_view key, std::int64_t value);
    amqp_field_value_t value(const Json& v);
    void clear() { recycle_amqp_pool(&pool_); }

  private:
    amqp_pool_t pool_;
};

inline std::string to_string(amqp_bytes_t b) {
    return b.len ? std::string(static_cast<const char*>(b.bytes), b.len) : std::string();
}

/// A field table as a JSON object (nested tables and arrays included; byte strings as text).
/// Nesting is followed one level past detail::kMaxJsonDepth, no further (deeper values become
/// null), so a hostile table cannot exhaust the stack and the codec still sees it too deep.
Json to_json(const amqp_table_t& table, std::size_t depth = 0);
Json to_json(const amqp_field_value_t& value, std::size_t depth = 0);

/// A field table copied out of the connection's buffers (which are recycled after each frame),
/// in memory of its own: one allocation for a task's usual headers. Copies every table
/// rabbitmq-c decodes (amqp_table_clone refuses empty names; a publisher may send them).
class OwnedTable {
  public:
    OwnedTable() = default;
    explicit OwnedTable(const amqp_table_t& table);
    OwnedTable(OwnedTable&& other) noexcept
        : pool_(std::move(other.pool_)), table_(std::exchange(other.table_, {0, nullptr})) {}
    OwnedTable& operator=(OwnedTable&& other) noexcept {
        pool_ = std::move(other.pool_);
        table_ = std::exchange(other.table_, {0, nullptr});
        return *this;
    }
    const amqp_table_t& table() const noexcept { return table_; }
    /// The entry named `key`; null when there is none (the last of two with that name, as
    /// to_json keeps).
    const amqp_field_value_t* find(std::string_view key) const noexcept;

  private:
    struct FreePool {
        void operator()(amqp_pool_t* pool) const noexcept;
    };
    std::unique_ptr<amqp_pool_t, FreePool> pool_;
    amqp_table_t table_{0, nullptr};
};

/// A field table as the codec reads headers (codec::Headers), read in place: no JSON tree of
/// the whole table, only of the values a task keeps as they are. Reads what to_json reads: the
/// same value for each header, the last of two with one name.
class TableHeaders final : public codec::Headers {
  public:
    explicit TableHeaders(const amqp_table_t& table) : table_(table) {}
    explicit TableHeaders(amqp_table_t&&) = delete;  // it reads the table where it is
    std::optional<codec::HeaderValue> find(std::string_view key) const override;
    Json json(std::string_view key) const override;
    void names(const std::function<void(std::string_view)>& each) const override;
    bool is_table() const override { return true; }
    bool too_deep() const override;

  private:
    const amqp_field_value_t* entry(std::string_view key) const noexcept;
    const amqp_table_t& table_;
};

inline std::string_view view(amqp_bytes_t b) {
    return b.len ? std::string_view(static_cast<const char*>(b.bytes), b.len) : std::string_view();
}

}  // namespace conveyor::amqp
