#pragma once
// AMQP field tables <-> JSON, and a pool that owns the memory of tables being built.

#include <amqp.h>

#include <string>
#include <string_view>

#include "conveyor/task.hpp"

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

}  // namespace conveyor::amqp
