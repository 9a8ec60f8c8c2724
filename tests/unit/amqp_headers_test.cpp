// A RabbitMQ worker decodes a task from the message's field table as it came
// (amqp::TableHeaders), without the JSON tree of the headers the rest of Conveyor reads
// (codec::JsonHeaders over amqp::to_json). Both must give the same task, or the same refusal.
#include <gtest/gtest.h>
#include <zlib.h>

#include <string>
#include <vector>

#include "broker/amqp/amqp_connection.hpp"
#include "broker/amqp/amqp_names.hpp"
#include "broker/amqp/amqp_table.hpp"
#include "core/codec.hpp"
#include "core/json_bounds.hpp"
#include "support/encoding_cases.hpp"

using namespace conveyor;

namespace {

struct Decoded {
    bool ok = false;
    std::string what;  ///< the task as encoded again, or the refusal
};

Decoded as_json(const Envelope& env, const amqp_table_t& table) {
    Envelope e = env;
    e.headers = amqp::to_json(table);
    auto t = codec::decode(e, 4096);
    if (!t) return {false, t.error().message};
    auto again = codec::encode(*t);
    return {true, again.headers.dump() + again.body + t->extra_headers.dump() + t->reply_to +
                      t->correlation_id + std::to_string(t->priority)};
}

Decoded in_place(const Envelope& env, const amqp_table_t& table) {
    const amqp::TableHeaders headers(table);
    auto t = codec::decode(codec::MessageView{.content_type = env.content_type,
                                              .correlation_id = env.correlation_id,
                                              .reply_to = env.reply_to,
                                              .priority = env.priority,
                                              .headers = headers,
                                              .body = env.body},
                           4096);
    if (!t) return {false, t.error().message};
    auto again = codec::encode(*t);
    return {true, again.headers.dump() + again.body + t->extra_headers.dump() + t->reply_to +
                      t->correlation_id + std::to_string(t->priority)};
}

void expect_same(const Envelope& env, const amqp_table_t& table, const std::string& label) {
    auto a = as_json(env, table);
    auto b = in_place(env, table);
    EXPECT_EQ(a.ok, b.ok) << label << ": " << a.what << " / " << b.what;
    EXPECT_EQ(a.what, b.what) << label;
}

Envelope message(std::string body = R"([[1, "two"], {"k": [3]}, {"callbacks": null}])") {
    Envelope e;
    e.content_type = "application/json";
    e.correlation_id = "corr";
    e.reply_to = "replies";
    e.priority = 7;
    e.body = std::move(body);
    return e;
}

std::string zlib_compress(const std::string& in) {
    uLongf n = compressBound(uLong(in.size()));
    std::string out(n, '\0');
    compress(reinterpret_cast<Bytef*>(out.data()), &n, reinterpret_cast<const Bytef*>(in.data()),
             uLong(in.size()));
    out.resize(n);
    return out;
}

amqp_field_value_t nested(amqp_pool_t* pool, int levels) {
    amqp_field_value_t v{};
    v.kind = AMQP_FIELD_KIND_I32;
    v.value.i32 = 1;
    for (int i = 0; i < levels; ++i) {
        auto* inner = static_cast<amqp_field_value_t*>(amqp_pool_alloc(pool, sizeof v));
        *inner = v;
        v = amqp_field_value_t{};
        if (i % 2) {
            v.kind = AMQP_FIELD_KIND_ARRAY;
            v.value.array = {1, inner};
        } else {
            auto* entry =
                static_cast<amqp_table_entry_t*>(amqp_pool_alloc(pool, sizeof(amqp_table_entry_t)));
            entry->key = amqp_cstring_bytes("k");
            entry->value = *inner;
            v.kind = AMQP_FIELD_KIND_TABLE;
            v.value.table = {1, entry};
        }
    }
    return v;
}

}  // namespace

TEST(AmqpHeaders, ATaskDecodedFromTheFieldTableIsTheTaskDecodedFromItsJson) {
    const Json base = {{"task", "orders.bill"}, {"id", "id-1"}};
    std::vector<std::pair<std::string, Json>> cases = {
        {"Conveyor's own", codec::encode(TaskMessage{.id = "x", .name = "a.b"}).headers},
        {"bare", base},
        {"every field",
         {{"task", "orders.bill"},
          {"id", "id-1"},
          {"retries", 3},
          {"max_retries", 9},
          {"eta", "2030-01-02T03:04:05.123456+00:00"},
          {"expires", "2031-01-02T03:04:05+00:00"},
          {"timelimit", {30, 12.5}},
          {"root_id", "r"},
          {"parent_id", "p"},
          {"group", "g"},
          {"group_index", 4},
          {"origin", "gen1@host"},
          {"ignore_result", true},
          {"shadow", "renamed"},
          {"x-extra", {{"nested", {1, 2, {{"deep", nullptr}}}}}},
          {"x-conveyor-sent-at", 1700000000000LL},
          {"float", 0.25},
          {"huge", 18446744073709551615ULL}}},
        {"nulls", {{"task", "t"}, {"id", "i"}, {"eta", nullptr}, {"timelimit", nullptr}}},
        {"retries a string", {{"task", "t"}, {"id", "i"}, {"retries", "x"}}},
        {"retries negative", {{"task", "t"}, {"id", "i"}, {"retries", -1}}},
        {"retries too many", {{"task", "t"}, {"id", "i"}, {"retries", 5000000000LL}}},
        {"eta garbage", {{"task", "t"}, {"id", "i"}, {"eta", "tomorrow"}}},
        {"eta a number", {{"task", "t"}, {"id", "i"}, {"eta", 5}}},
        {"timelimit shape", {{"task", "t"}, {"id", "i"}, {"timelimit", {1}}}},
        {"timelimit a string", {{"task", "t"}, {"id", "i"}, {"timelimit", "60"}}},
        {"timelimit type", {{"task", "t"}, {"id", "i"}, {"timelimit", {"a", nullptr}}}},
        {"timelimit too long", {{"task", "t"}, {"id", "i"}, {"timelimit", {1e12, nullptr}}}},
        {"parent_id a number", {{"task", "t"}, {"id", "i"}, {"parent_id", 3}}},
        {"ignore_result a string", {{"task", "t"}, {"id", "i"}, {"ignore_result", "yes"}}},
        {"no task", {{"id", "i"}}},
        {"task a number", {{"task", 12}, {"id", "i"}}},
        {"empty task", {{"task", ""}, {"id", "i"}}},
        {"no id", {{"task", "t"}}},
        {"unsupported compression", {{"task", "t"}, {"id", "i"}, {"compression", "bz2"}}},
        {"compressed garbage", {{"task", "t"}, {"id", "i"}, {"compression", "zlib"}}},
    };
    for (auto& [label, headers] : cases) {
        amqp::Pool pool;
        expect_same(message(), pool.table(headers), label);
    }
    amqp::Pool pool;
    auto table = pool.table(base);
    expect_same(message("not json"), table, "not JSON");
    expect_same(message(R"([[1], {}])"), table, "two elements");
    expect_same(message(R"({"task": "v1.task", "id": "v1", "args": [1], "retries": 2})"),
                pool.table(Json::object()), "protocol v1");
    expect_same(message(std::string(5000, ' ')), table, "too big");
    Envelope no_type = message();
    no_type.content_type.clear();
    expect_same(no_type, table, "no content type");
    Envelope gz = message(zlib_compress(R"([[2, 3], {"z": 1}, {}])"));
    auto compressed = pool.table(Json{{"task", "t"}, {"id", "i"}, {"compression", "gzip"}});
    expect_same(gz, compressed, "compressed");
    EXPECT_TRUE(in_place(gz, compressed).ok);
}

TEST(AmqpHeaders, FieldKindsOfOtherPublishersReadAsTheirJson) {
    // What py-amqp, php-amqplib or a Java client may send: small and unsigned integers, 32-bit
    // floats, decimals, byte strings, timestamps, voids, and a name twice (the last counts).
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    std::vector<amqp_table_entry_t> entries;
    auto add = [&](const char* key, amqp_field_value_t v) {
        entries.push_back(amqp_table_entry_t{amqp_cstring_bytes(key), v});
    };
    amqp_field_value_t v{};
    v.kind = AMQP_FIELD_KIND_BYTES;
    v.value.bytes = amqp_cstring_bytes("first");
    add("task", v);
    v.value.bytes = amqp_cstring_bytes("orders.bill");
    add("task", v);
    v.kind = AMQP_FIELD_KIND_UTF8;
    v.value.bytes = amqp_cstring_bytes("id-2");
    add("id", v);
    v = {};
    v.kind = AMQP_FIELD_KIND_U8;
    v.value.u8 = 200;
    add("retries", v);
    v.kind = AMQP_FIELD_KIND_I8;
    v.value.i8 = 3;
    add("group_index", v);
    v.kind = AMQP_FIELD_KIND_U16;
    v.value.u16 = 7;
    add("max_retries", v);
    v.kind = AMQP_FIELD_KIND_F32;
    v.value.f32 = 1.5f;
    add("x-f32", v);
    v.kind = AMQP_FIELD_KIND_DECIMAL;
    v.value.decimal = {2, 12345};
    add("x-decimal", v);
    v.kind = AMQP_FIELD_KIND_TIMESTAMP;
    v.value.u64 = 1700000000;
    add("x-timestamp", v);
    v.kind = AMQP_FIELD_KIND_VOID;
    add("parent_id", v);
    v.kind = AMQP_FIELD_KIND_BOOLEAN;
    v.value.boolean = 1;
    add("ignore_result", v);
    amqp_table_t table{int(entries.size()), entries.data()};
    expect_same(message(), table, "other publishers' kinds");
    auto t = in_place(message(), table);
    ASSERT_TRUE(t.ok) << t.what;
    EXPECT_NE(t.what.find("\"orders.bill\""), std::string::npos) << t.what;

    // A kind the codec refuses is refused alike: a signed 16-bit retry count below zero.
    v.kind = AMQP_FIELD_KIND_I16;
    v.value.i16 = -2;
    entries[3].value = v;
    table = {int(entries.size()), entries.data()};
    expect_same(message(), table, "negative retries");
    EXPECT_FALSE(in_place(message(), table).ok);
    empty_amqp_pool(&pool);
}

TEST(AmqpHeaders, NestingIsRefusedAtTheSameDepthAsTheJsonTree) {
    for (int levels : {1, 2, 120, 126, 127, 128, 129, 130, 200, 5000}) {
        amqp_pool_t pool;
        init_amqp_pool(&pool, 4096);
        amqp_table_entry_t entries[3] = {
            {amqp_cstring_bytes("task"), {}}, {amqp_cstring_bytes("id"), {}}, {}};
        entries[0].value.kind = entries[1].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[0].value.value.bytes = amqp_cstring_bytes("t");
        entries[1].value.value.bytes = amqp_cstring_bytes("i");
        entries[2] = {amqp_cstring_bytes("x-deep"), nested(&pool, levels)};
        amqp_table_t table{3, entries};
        const amqp::TableHeaders headers(table);
        EXPECT_EQ(headers.too_deep(),
                  detail::json_depth(amqp::to_json(table)) > detail::kMaxJsonDepth)
            << levels << " levels";
        expect_same(message(), table, std::to_string(levels) + " levels");
        empty_amqp_pool(&pool);
    }
}

TEST(AmqpHeaders, AnOwnedTableOutlivesTheBuffersItWasCopiedFrom) {
    amqp::OwnedTable owned;
    {
        amqp::Pool pool;
        owned = amqp::OwnedTable(pool.table(Json{{"task", "t"}, {"list", {1, "two", {{"k", 3}}}}}));
        pool.clear();
    }
    amqp::OwnedTable moved = std::move(owned);
    EXPECT_EQ(owned.table().num_entries, 0);
    ASSERT_NE(moved.find("task"), nullptr);
    EXPECT_EQ(amqp::view(moved.find("task")->value.bytes), "t");
    EXPECT_EQ(moved.find("absent"), nullptr);
    EXPECT_EQ(amqp::to_json(moved.table()),
              Json({{"task", "t"}, {"list", {1, "two", {{"k", 3}}}}}));
    EXPECT_EQ(amqp::OwnedTable().table().num_entries, 0);

    // Names any publisher may send and rabbitmq-c's amqp_table_clone refuses: empty ones, at
    // the top and nested in a table inside an array.
    amqp::Pool pool;
    const Json odd = {{"", 1}, {"task", "t"}, {"x", {{{"", "v"}}, {{"k", nullptr}}}}};
    amqp::OwnedTable copy(pool.table(odd));
    pool.clear();
    EXPECT_EQ(amqp::to_json(copy.table()), odd);
}

TEST(AmqpHeaders, ATaskPassedAsItIsIsPublishedAsItsEncodedMessageWouldBe) {
    // A task published in this process reaches the RabbitMQ engine as it is (TaskForm::task);
    // its properties and header table, written from its fields, are the encoded message's:
    // every entry in the same place, of the same kind, with the same value.
    for (auto& t : testsupport::encoding_cases()) {
        amqp::Pool pool;
        auto a = amqp::properties(pool, codec::encode(t), 1234);
        auto b = amqp::properties(pool, t, 1234);
        EXPECT_EQ(a._flags, b._flags) << t.id;
        EXPECT_EQ(a.delivery_mode, b.delivery_mode) << t.id;
        EXPECT_EQ(a.priority, b.priority) << t.id;
        for (auto [x, y] :
             {std::pair{a.content_type, b.content_type},
              std::pair{a.content_encoding, b.content_encoding},
              std::pair{a.correlation_id, b.correlation_id}, std::pair{a.reply_to, b.reply_to}})
            EXPECT_EQ(amqp::view(x), amqp::view(y)) << t.id;
        ASSERT_EQ(a.headers.num_entries, b.headers.num_entries) << t.id;
        for (int i = 0; i < a.headers.num_entries; ++i) {
            auto& x = a.headers.entries[i];
            auto& y = b.headers.entries[i];
            EXPECT_EQ(amqp::view(x.key), amqp::view(y.key)) << t.id << " #" << i;
            EXPECT_EQ(x.value.kind, y.value.kind) << t.id << " " << amqp::view(x.key);
            EXPECT_EQ(amqp::to_json(x.value), amqp::to_json(y.value))
                << t.id << " " << amqp::view(x.key);
        }
        EXPECT_EQ(amqp::view(b.headers.entries[b.headers.num_entries - 1].key),
                  amqp::kSentAtHeader);
        // Without a time of sending, as the envelope's: no entry for it.
        auto c = amqp::properties(pool, codec::encode(t), 0);
        auto d = amqp::properties(pool, t, 0);
        ASSERT_EQ(c.headers.num_entries, d.headers.num_entries) << t.id;
        for (int i = 0; i < c.headers.num_entries; ++i)
            EXPECT_EQ(amqp::view(c.headers.entries[i].key), amqp::view(d.headers.entries[i].key));
    }
}
