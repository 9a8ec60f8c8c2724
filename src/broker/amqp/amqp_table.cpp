#include "broker/amqp/amqp_table.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "core/json_bounds.hpp"

namespace conveyor::amqp {

amqp_bytes_t Pool::bytes(std::string_view s) {
    amqp_bytes_t b{s.size(), nullptr};
    if (s.empty()) return b;
    b.bytes = amqp_pool_alloc(&pool_, s.size());
    std::memcpy(b.bytes, s.data(), s.size());
    return b;
}

amqp_field_value_t Pool::value(const Json& v) {
    amqp_field_value_t f{};
    switch (v.type()) {
        case Json::value_t::null:
        case Json::value_t::discarded:
            f.kind = AMQP_FIELD_KIND_VOID;
            break;
        case Json::value_t::boolean:
            f.kind = AMQP_FIELD_KIND_BOOLEAN;
            f.value.boolean = v.get<bool>() ? 1 : 0;
            break;
        case Json::value_t::number_integer:
        case Json::value_t::number_unsigned: {
            // Small integers as 32-bit, as py-amqp does, so Python peers read plain ints.
            std::int64_t i = v.is_number_unsigned()
                                 ? std::int64_t(std::min<std::uint64_t>(
                                       v.get<std::uint64_t>(),
                                       std::uint64_t(std::numeric_limits<std::int64_t>::max())))
                                 : v.get<std::int64_t>();
            if (i >= std::numeric_limits<std::int32_t>::min() &&
                i <= std::numeric_limits<std::int32_t>::max()) {
                f.kind = AMQP_FIELD_KIND_I32;
                f.value.i32 = std::int32_t(i);
            } else {
                f.kind = AMQP_FIELD_KIND_I64;
                f.value.i64 = i;
            }
            break;
        }
        case Json::value_t::number_float:
            f.kind = AMQP_FIELD_KIND_F64;
            f.value.f64 = v.get<double>();
            break;
        case Json::value_t::string:
            f.kind = AMQP_FIELD_KIND_UTF8;
            f.value.bytes = bytes(v.get_ref<const std::string&>());
            break;
        case Json::value_t::binary: {
            f.kind = AMQP_FIELD_KIND_BYTES;
            auto& bin = v.get_binary();
            f.value.bytes =
                bytes(std::string_view(reinterpret_cast<const char*>(bin.data()), bin.size()));
            break;
        }
        case Json::value_t::array: {
            f.kind = AMQP_FIELD_KIND_ARRAY;
            f.value.array.num_entries = int(v.size());
            f.value.array.entries = static_cast<amqp_field_value_t*>(
                amqp_pool_alloc(&pool_, sizeof(amqp_field_value_t) * (v.empty() ? 1 : v.size())));
            int i = 0;
            for (auto& e : v) f.value.array.entries[i++] = value(e);
            break;
        }
        case Json::value_t::object:
            f.kind = AMQP_FIELD_KIND_TABLE;
            f.value.table = table(v);
            break;
    }
    return f;
}

amqp_table_t Pool::table(const Json& object) {
    amqp_table_t t{0, nullptr};
    if (!object.is_object() || object.empty()) return t;
    t.entries = static_cast<amqp_table_entry_t*>(
        amqp_pool_alloc(&pool_, sizeof(amqp_table_entry_t) * object.size()));
    for (auto& [k, v] : object.items()) {
        t.entries[t.num_entries].key = bytes(k);
        t.entries[t.num_entries].value = value(v);
        t.num_entries++;
    }
    return t;
}

amqp_table_t Pool::table(const Json& object, std::string_view key, std::int64_t value) {
    amqp_table_t t{0, nullptr};
    std::size_t n = object.is_object() ? object.size() : 0;
    t.entries = static_cast<amqp_table_entry_t*>(
        amqp_pool_alloc(&pool_, sizeof(amqp_table_entry_t) * (n + 1)));
    if (n)
        for (auto& [k, v] : object.items()) {
            if (k == key) continue;
            t.entries[t.num_entries].key = bytes(k);
            t.entries[t.num_entries].value = this->value(v);
            t.num_entries++;
        }
    auto& e = t.entries[t.num_entries++];
    e.key = bytes(key);
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = value;
    return t;
}

amqp_table_t Pool::table(const TaskMessage& task, std::string_view key, std::int64_t value) {
    // The entries as codec::write_headers gives them (table(encode(task).headers) without the
    // JSON tree), then `key` (none when empty).
    struct Entries final : codec::HeaderWriter {
        Pool& pool;
        std::string_view skip;
        std::vector<amqp_table_entry_t> out;
        explicit Entries(Pool& p, std::string_view k) : pool(p), skip(k) { out.reserve(24); }
        void add(std::string_view k, amqp_field_value_t v) {
            if (skip.empty() || k != skip) out.push_back(amqp_table_entry_t{pool.bytes(k), v});
        }
        void text(std::string_view k, std::string_view v) override {
            amqp_field_value_t f{};
            f.kind = AMQP_FIELD_KIND_UTF8;
            f.value.bytes = pool.bytes(v);
            add(k, f);
        }
        void integer(std::string_view k, std::int64_t v) override {
            add(k, pool.value(Json(v)));  // (32 bits where it fits, as value() writes numbers)
        }
        void boolean(std::string_view k, bool v) override {
            amqp_field_value_t f{};
            f.kind = AMQP_FIELD_KIND_BOOLEAN;
            f.value.boolean = v ? 1 : 0;
            add(k, f);
        }
        void json(std::string_view k, const Json& v) override { add(k, pool.value(v)); }
    } entries(*this, key);
    codec::write_headers(task, entries, true);
    auto& e = entries.out;
    if (!key.empty()) {
        amqp_field_value_t added{};
        added.kind = AMQP_FIELD_KIND_I64;
        added.value.i64 = value;
        e.push_back(amqp_table_entry_t{bytes(key), added});
    }
    amqp_table_t t{int(e.size()), nullptr};
    t.entries = static_cast<amqp_table_entry_t*>(
        amqp_pool_alloc(&pool_, sizeof(amqp_table_entry_t) * e.size()));
    std::copy(e.begin(), e.end(), t.entries);
    return t;
}

Json to_json(const amqp_field_value_t& f, std::size_t depth) {
    switch (f.kind) {
        case AMQP_FIELD_KIND_BOOLEAN:
            return bool(f.value.boolean);
        case AMQP_FIELD_KIND_I8:
            return f.value.i8;
        case AMQP_FIELD_KIND_U8:
            return f.value.u8;
        case AMQP_FIELD_KIND_I16:
            return f.value.i16;
        case AMQP_FIELD_KIND_U16:
            return f.value.u16;
        case AMQP_FIELD_KIND_I32:
            return f.value.i32;
        case AMQP_FIELD_KIND_U32:
            return f.value.u32;
        case AMQP_FIELD_KIND_I64:
            return f.value.i64;
        case AMQP_FIELD_KIND_U64:
        case AMQP_FIELD_KIND_TIMESTAMP:
            return f.value.u64;
        case AMQP_FIELD_KIND_F32:
            return double(f.value.f32);
        case AMQP_FIELD_KIND_F64:
            return f.value.f64;
        case AMQP_FIELD_KIND_DECIMAL: {
            double d = double(f.value.decimal.value);
            for (int i = 0; i < f.value.decimal.decimals; ++i) d /= 10;
            return d;
        }
        case AMQP_FIELD_KIND_UTF8:
        case AMQP_FIELD_KIND_BYTES:
            return to_string(f.value.bytes);
        case AMQP_FIELD_KIND_ARRAY: {
            Json a = Json::array();
            if (depth > detail::kMaxJsonDepth) return a;
            for (int i = 0; i < f.value.array.num_entries; ++i)
                a.push_back(to_json(f.value.array.entries[i], depth + 1));
            return a;
        }
        case AMQP_FIELD_KIND_TABLE:
            return to_json(f.value.table, depth);
        case AMQP_FIELD_KIND_VOID:
        default:
            return nullptr;
    }
}

Json to_json(const amqp_table_t& table, std::size_t depth) {
    Json o = Json::object();
    if (depth > detail::kMaxJsonDepth) return o;
    for (int i = 0; i < table.num_entries; ++i)
        o[to_string(table.entries[i].key)] = to_json(table.entries[i].value, depth + 1);
    return o;
}

namespace {

/// The last entry named `key`, as to_json keeps it.
const amqp_field_value_t* find_entry(const amqp_table_t& table, std::string_view key) noexcept {
    for (int i = table.num_entries - 1; i >= 0; --i)
        if (view(table.entries[i].key) == key) return &table.entries[i].value;
    return nullptr;
}

/// How deeply a value nests (a scalar 0, a table or array 1 more than its deepest value),
/// counted no further than `limit` + 1.
std::size_t depth_of(const amqp_field_value_t& f, std::size_t limit);

std::size_t depth_of(const amqp_table_t& table, std::size_t limit) {
    std::size_t deepest = 0;
    for (int i = 0; i < table.num_entries && deepest <= limit; ++i)
        deepest = std::max(deepest, depth_of(table.entries[i].value, limit - 1));
    return deepest + 1;
}

std::size_t depth_of(const amqp_field_value_t& f, std::size_t limit) {
    if (limit == 0) return f.kind == AMQP_FIELD_KIND_ARRAY || f.kind == AMQP_FIELD_KIND_TABLE;
    if (f.kind == AMQP_FIELD_KIND_TABLE) return depth_of(f.value.table, limit);
    if (f.kind != AMQP_FIELD_KIND_ARRAY) return 0;
    std::size_t deepest = 0;
    for (int i = 0; i < f.value.array.num_entries && deepest <= limit; ++i)
        deepest = std::max(deepest, depth_of(f.value.array.entries[i], limit - 1));
    return deepest + 1;
}

}  // namespace

void OwnedTable::FreePool::operator()(amqp_pool_t* pool) const noexcept {
    empty_amqp_pool(pool);
    delete pool;
}

namespace {

amqp_bytes_t copy_bytes(amqp_bytes_t b, amqp_pool_t* pool) {
    amqp_bytes_t out{b.len, nullptr};
    if (b.len == 0) return out;
    out.bytes = amqp_pool_alloc(pool, b.len);
    if (!out.bytes) throw std::bad_alloc();
    std::memcpy(out.bytes, b.bytes, b.len);
    return out;
}

template <typename T>
T* pool_array(int n, amqp_pool_t* pool) {
    if (n <= 0) return nullptr;
    auto* p = static_cast<T*>(amqp_pool_alloc(pool, sizeof(T) * std::size_t(n)));
    if (!p) throw std::bad_alloc();
    return p;
}

amqp_table_t copy_table(const amqp_table_t& t, amqp_pool_t* pool);

amqp_field_value_t copy_value(const amqp_field_value_t& v, amqp_pool_t* pool) {
    amqp_field_value_t out = v;
    switch (v.kind) {
        case AMQP_FIELD_KIND_UTF8:
        case AMQP_FIELD_KIND_BYTES:
            out.value.bytes = copy_bytes(v.value.bytes, pool);
            break;
        case AMQP_FIELD_KIND_ARRAY:
            out.value.array.entries =
                pool_array<amqp_field_value_t>(v.value.array.num_entries, pool);
            for (int i = 0; i < v.value.array.num_entries; ++i)
                out.value.array.entries[i] = copy_value(v.value.array.entries[i], pool);
            break;
        case AMQP_FIELD_KIND_TABLE:
            out.value.table = copy_table(v.value.table, pool);
            break;
        default:
            break;
    }
    return out;
}

// Recurses once per level, as rabbitmq-c's decoding of the table did.
amqp_table_t copy_table(const amqp_table_t& t, amqp_pool_t* pool) {
    amqp_table_t out{t.num_entries, pool_array<amqp_table_entry_t>(t.num_entries, pool)};
    for (int i = 0; i < t.num_entries; ++i) {
        out.entries[i].key = copy_bytes(t.entries[i].key, pool);
        out.entries[i].value = copy_value(t.entries[i].value, pool);
    }
    return out;
}

}  // namespace

OwnedTable::OwnedTable(const amqp_table_t& table) {
    if (table.num_entries <= 0) return;
    pool_.reset(new amqp_pool_t);
    init_amqp_pool(pool_.get(), 1024);
    table_ = copy_table(table, pool_.get());
}

const amqp_field_value_t* OwnedTable::find(std::string_view key) const noexcept {
    return find_entry(table_, key);
}

const amqp_field_value_t* TableHeaders::entry(std::string_view key) const noexcept {
    return find_entry(table_, key);
}

std::optional<codec::HeaderValue> TableHeaders::find(std::string_view key) const {
    const amqp_field_value_t* f = entry(key);
    if (!f) return std::nullopt;
    using Kind = codec::HeaderValue::Kind;
    codec::HeaderValue v;
    switch (f->kind) {
        case AMQP_FIELD_KIND_BOOLEAN:
            v.kind = Kind::boolean;
            v.boolean = f->value.boolean != 0;
            break;
        case AMQP_FIELD_KIND_I8:
        case AMQP_FIELD_KIND_I16:
        case AMQP_FIELD_KIND_I32:
        case AMQP_FIELD_KIND_I64:
            v.kind = Kind::integer;
            v.integer = f->kind == AMQP_FIELD_KIND_I8    ? f->value.i8
                        : f->kind == AMQP_FIELD_KIND_I16 ? f->value.i16
                        : f->kind == AMQP_FIELD_KIND_I32 ? f->value.i32
                                                         : f->value.i64;
            break;
        case AMQP_FIELD_KIND_U8:
        case AMQP_FIELD_KIND_U16:
        case AMQP_FIELD_KIND_U32:
        case AMQP_FIELD_KIND_U64:
        case AMQP_FIELD_KIND_TIMESTAMP:
            v.kind = Kind::unsigned_integer;
            v.unsigned_integer = f->kind == AMQP_FIELD_KIND_U8    ? f->value.u8
                                 : f->kind == AMQP_FIELD_KIND_U16 ? f->value.u16
                                 : f->kind == AMQP_FIELD_KIND_U32 ? f->value.u32
                                                                  : f->value.u64;
            break;
        case AMQP_FIELD_KIND_F32:
        case AMQP_FIELD_KIND_F64:
        case AMQP_FIELD_KIND_DECIMAL:
            v.kind = Kind::real;
            v.real = to_json(*f).get<double>();
            break;
        case AMQP_FIELD_KIND_UTF8:
        case AMQP_FIELD_KIND_BYTES:
            v.kind = Kind::string;
            v.text = view(f->value.bytes);
            break;
        case AMQP_FIELD_KIND_ARRAY:
        case AMQP_FIELD_KIND_TABLE:
            v.kind = Kind::other;
            break;
        default:  // void
            break;
    }
    return v;
}

Json TableHeaders::json(std::string_view key) const {
    const amqp_field_value_t* f = entry(key);
    return f ? to_json(*f, 1) : Json();
}

void TableHeaders::names(const std::function<void(std::string_view)>& each) const {
    for (int i = 0; i < table_.num_entries; ++i) each(view(table_.entries[i].key));
}

bool TableHeaders::too_deep() const {
    return depth_of(table_, detail::kMaxJsonDepth) > detail::kMaxJsonDepth;
}

}  // namespace conveyor::amqp
