// AMQP field tables as they arrive in message headers: decoded by rabbitmq-c, then turned into
// JSON by Conveyor (depth-bounded) and printed.
#include <amqp.h>

#include <cstddef>
#include <cstdint>

#include "broker/amqp/amqp_table.hpp"
#include "core/json_bounds.hpp"

extern "C" int amqp_decode_table(amqp_bytes_t encoded, amqp_pool_t* pool, amqp_table_t* output,
                                 size_t* offset);

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t table;
    std::size_t offset = 0;
    amqp_bytes_t bytes{size, const_cast<std::uint8_t*>(data)};
    if (amqp_decode_table(bytes, &pool, &table, &offset) == AMQP_STATUS_OK) {
        auto json = conveyor::amqp::to_json(table);
        (void)conveyor::detail::dump_lossy(json);
    }
    empty_amqp_pool(&pool);
    return 0;
}
