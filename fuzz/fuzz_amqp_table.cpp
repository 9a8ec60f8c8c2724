// AMQP field tables as they arrive in message headers: decoded by rabbitmq-c, then turned into
// JSON by Conveyor (depth-bounded) and printed; and a task decoded from the table in place, as a
// worker does, which must be the task decoded from that JSON (or refused alike).
#include <amqp.h>

#include <cstddef>
#include <cstdint>

#include "broker/amqp/amqp_table.hpp"
#include "core/codec.hpp"
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
        using namespace conveyor;
        Envelope env;
        env.content_type = "application/json";
        env.body = R"([[1], {"k": "v"}, {}])";
        env.headers = amqp::to_json(table);
        (void)detail::dump_lossy(env.headers);
        // As a worker holds it: copied out of the decoding pool, which is then emptied.
        const amqp::OwnedTable owned(table);
        empty_amqp_pool(&pool);
        if (detail::dump_lossy(amqp::to_json(owned.table())) != detail::dump_lossy(env.headers))
            __builtin_trap();
        const amqp::TableHeaders in_place(owned.table());
        auto a = codec::decode(env, 1 << 20);
        auto b = codec::decode(
            codec::MessageView{
                .content_type = env.content_type, .headers = in_place, .body = env.body},
            1 << 20);
        if (bool(a) != bool(b)) __builtin_trap();
        // (Compared as text: a NaN in a header is unequal to itself.)
        if (a && (detail::dump_lossy(codec::encode(*a).headers) !=
                      detail::dump_lossy(codec::encode(*b).headers) ||
                  detail::dump_lossy(a->extra_headers) != detail::dump_lossy(b->extra_headers)))
            __builtin_trap();
        if (!a && a.error().message != b.error().message) __builtin_trap();
    }
    empty_amqp_pool(&pool);
    return 0;
}
