#include "results/redis_results.hpp"

#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <optional>
#include <thread>

#include "core/result_meta.hpp"
#include "core/time.hpp"
#include "core/try.hpp"
#include "core/url.hpp"

namespace conveyor::results {

namespace {

using namespace std::chrono;

timeval to_timeval(milliseconds ms) {
    if (ms.count() < 1) ms = milliseconds(1);
    return timeval{time_t(ms.count() / 1000), suseconds_t(ms.count() % 1000 * 1000)};
}

struct ReplyDeleter {
    void operator()(redisReply* r) const noexcept {
        if (r) freeReplyObject(r);
    }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

std::string_view text(const redisReply* r) {
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
                 r->type == REDIS_REPLY_ERROR)
               ? std::string_view(r->str, r->len)
               : std::string_view();
}

}  // namespace

struct RedisResults::Conn {
    redisContext* ctx = nullptr;
    bool healthy = true;
    ~Conn() {
        if (ctx) redisFree(ctx);
    }
    Error error(std::string_view what) {
        healthy = false;
        return Error{Errc::unavailable,
                     fmt::format("Redis result backend: {} failed: {}", what,
                                 ctx && ctx->errstr[0] ? ctx->errstr : "connection lost")};
    }
    /// Sends a command given as arguments; waits for its reply.
    Result<Reply> command(std::initializer_list<std::string_view> args, std::string_view what) {
        CONVEYOR_TRY(append(args));
        return read(what);
    }
    Result<void> append(std::initializer_list<std::string_view> args) {
        return append_argv(std::span(args.begin(), args.size()));
    }
    Result<void> append_argv(std::span<const std::string_view> args) {
        std::vector<const char*> argv;
        std::vector<size_t> lens;
        for (auto a : args) {
            argv.push_back(a.data());
            lens.push_back(a.size());
        }
        if (redisAppendCommandArgv(ctx, int(argv.size()), argv.data(), lens.data()) != REDIS_OK)
            return std::unexpected(error("sending a command"));
        return {};
    }
    Result<Reply> read(std::string_view what) {
        void* raw = nullptr;
        if (redisGetReply(ctx, &raw) != REDIS_OK) return std::unexpected(error(what));
        Reply r(static_cast<redisReply*>(raw));
        if (r && r->type == REDIS_REPLY_ERROR)
            return fail(Errc::unavailable,
                        fmt::format("Redis result backend: {}: {}", what, text(r.get())));
        return r;
    }
};

Result<RedisOptions> parse_redis_url(std::string_view url) {
    RedisOptions o;
    constexpr std::string_view kScheme = "redis://";
    if (!url.starts_with(kScheme))
        return fail(Errc::invalid_argument,
                    fmt::format("result backend '{}' is not a redis://HOST:PORT/DB URL",
                                detail::redact_url(url)));
    std::string_view rest = url.substr(kScheme.size());
    std::string_view db;
    if (auto slash = rest.find('/'); slash != std::string_view::npos) {
        db = rest.substr(slash + 1);
        rest = rest.substr(0, slash);
    }
    if (!db.empty()) {
        auto [p, ec] = std::from_chars(db.data(), db.data() + db.size(), o.db);
        if (ec != std::errc() || p != db.data() + db.size() || o.db < 0)
            return fail(Errc::invalid_argument,
                        fmt::format("result backend '{}': database '{}' is not a number",
                                    detail::redact_url(url), db));
    }
    auto authority =
        detail::parse_authority(rest, fmt::format("result backend '{}':", detail::redact_url(url)));
    CONVEYOR_TRY(authority);
    // redis://:PASSWORD@host, or redis://PASSWORD@host as redis-py also takes it.
    o.password = authority->has_password ? authority->password : authority->user;
    if (authority->port) o.port = *authority->port;
    if (!authority->host.empty()) o.host = std::move(authority->host);
    if (o.host == "localhost") o.host = "127.0.0.1";
    return o;
}

RedisResults::RedisResults(RedisOptions options) : opts_(std::move(options)) {}
RedisResults::~RedisResults() = default;

std::string RedisResults::key(std::string_view id) {
    return fmt::format("celery-task-meta-{}", id);
}

Result<std::unique_ptr<RedisResults::Conn>> RedisResults::checkout() {
    {
        std::lock_guard lk(mu_);
        while (!idle_.empty()) {
            auto c = std::move(idle_.back());
            idle_.pop_back();
            if (c->healthy) return c;
        }
    }
    auto c = std::make_unique<Conn>();
    c->ctx = redisConnectWithTimeout(opts_.host.c_str(), opts_.port, to_timeval(opts_.timeout));
    std::string where = fmt::format("redis://{}:{}/{}", opts_.host, opts_.port, opts_.db);
    if (!c->ctx || c->ctx->err)
        return fail(Errc::unavailable,
                    fmt::format("cannot reach the Redis result backend at {}: {}", where,
                                c->ctx ? c->ctx->errstr : "out of memory"));
    redisSetTimeout(c->ctx, to_timeval(opts_.timeout));
    redisEnableKeepAlive(c->ctx);
    if (!opts_.password.empty()) {
        CONVEYOR_TRY(c->command({"AUTH", opts_.password}, "AUTH"));
    }
    if (opts_.db != 0) {
        auto db = std::to_string(opts_.db);
        CONVEYOR_TRY(c->command({"SELECT", db}, "SELECT"));
    }
    return c;
}

void RedisResults::checkin(std::unique_ptr<Conn> c) {
    if (!c || !c->healthy) return;
    std::lock_guard lk(mu_);
    if (idle_.size() < 16) idle_.push_back(std::move(c));
}

Result<void> RedisResults::check() {
    auto c = checkout();
    CONVEYOR_TRY(c);
    auto r = (*c)->command({"PING"}, "PING");
    CONVEYOR_TRY(r);
    checkin(std::move(*c));
    return {};
}

Result<void> RedisResults::store(std::span<const TaskResult> results) {
    if (results.empty()) return {};
    auto c = checkout();
    CONVEYOR_TRY(c);
    Conn& conn = **c;
    std::vector<std::string> keys;
    keys.reserve(results.size());
    for (auto& r : results) {
        keys.push_back(key(r.id));
        CONVEYOR_TRY(conn.append({"GET", keys.back()}));
    }
    std::vector<bool> skip(results.size(), false);
    for (std::size_t i = 0; i < results.size(); ++i) {
        auto r = conn.read("GET");
        CONVEYOR_TRY(r);
        if (auto v = text(r->get()); !v.empty()) {
            auto stored = result_meta::decode(v);
            skip[i] = stored && stored->state == TaskState::success;
        }
    }
    std::string ttl = std::to_string(opts_.expires.count());
    std::size_t sent = 0;
    for (std::size_t i = 0; i < results.size(); ++i) {
        if (skip[i]) continue;
        std::string body = result_meta::encode(results[i], result_meta::Style::redis);
        for (auto ok : {conn.append({"MULTI"}), conn.append({"SETEX", keys[i], ttl, body}),
                        conn.append({"PUBLISH", keys[i], body}), conn.append({"EXEC"})})
            if (!ok) return ok;
        ++sent;
    }
    for (std::size_t i = 0; i < sent * 4; ++i) CONVEYOR_TRY(conn.read("storing a result"));
    checkin(std::move(*c));
    return {};
}

Result<TaskResult> RedisResults::get(std::string_view id) {
    auto c = checkout();
    CONVEYOR_TRY(c);
    auto r = (*c)->command({"GET", key(id)}, "GET");
    CONVEYOR_TRY(r);
    checkin(std::move(*c));
    TaskResult out;
    out.id = std::string(id);
    if (auto v = text(r->get()); !v.empty()) {
        auto stored = result_meta::decode(v);
        CONVEYOR_TRY(stored);
        out = std::move(*stored);
        if (out.id.empty()) out.id = std::string(id);
    }
    return out;
}

Result<TaskResult> RedisResults::wait(std::string_view id, milliseconds timeout) {
    auto deadline = steady_clock::now() + timeout;
    // Subscribe first, then look: a result stored in between is seen either way.
    auto sub = checkout();
    CONVEYOR_TRY(sub);
    std::unique_ptr<Conn> listener = std::move(*sub);
    std::string channel = key(id);
    CONVEYOR_TRY(listener->command({"SUBSCRIBE", channel}, "SUBSCRIBE"));
    // A subscribed connection is never pooled again; it closes when this returns.
    auto now = get(id);
    if (!now || now->ready()) return now;
    for (;;) {
        auto left = ceil<milliseconds>(deadline - steady_clock::now());
        if (left.count() <= 0) break;
        redisSetTimeout(listener->ctx, to_timeval(left));
        void* raw = nullptr;
        if (redisGetReply(listener->ctx, &raw) != REDIS_OK) break;  // timed out or lost
        Reply msg(static_cast<redisReply*>(raw));
        if (msg && msg->type == REDIS_REPLY_ARRAY && msg->elements == 3 &&
            text(msg->element[0]) == "message") {
            auto r = result_meta::decode(text(msg->element[2]));
            if (r && r->ready()) {
                if (r->id.empty()) r->id = std::string(id);
                return r;
            }
            if (r) now = std::move(*r);
        }
    }
    // The listener was cut off (or the time is up): look by polling until the deadline.
    for (;;) {
        now = get(id);
        if (!now || now->ready()) return now;
        auto left = deadline - steady_clock::now();
        if (left <= steady_clock::duration::zero()) break;
        std::this_thread::sleep_for(std::min<steady_clock::duration>(left, milliseconds(50)));
    }
    return fail(Errc::timeout,
                fmt::format("task {} is still {} after the wait", id, to_string(now->state)));
}

std::string RedisResults::unique_key(std::string_view key) {
    return fmt::format("conveyor-unique-{}", key);
}

namespace {

// KEYS[1] the key; ARGV: the task id, the hold period's end (epoch ms, 0: none), the lease (ms).
constexpr std::string_view kTakeUnique = R"(
local holder = redis.call('HGET', KEYS[1], 'id')
if holder then return holder end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'until', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return ARGV[1])";
// ARGV: the task id, when the key lapses (epoch ms). A task that finished before its publisher
// got here left the key to its hold period ('done').
constexpr std::string_view kKeepUnique = R"(
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'done') == 1 then return 0 end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1)";
// ARGV: the task id, now (epoch ms).
constexpr std::string_view kReleaseUnique = R"(
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
local hold = tonumber(redis.call('HGET', KEYS[1], 'until') or '0') or 0
if hold > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'done', '1')
  redis.call('PEXPIREAT', KEYS[1], hold)
else
  redis.call('DEL', KEYS[1])
end
return 1)";
// ARGV: the task id.
constexpr std::string_view kDropUnique = R"(
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1)";

}  // namespace

Result<std::string> RedisResults::eval(std::string_view script, std::string_view key,
                                       std::initializer_list<std::string_view> args,
                                       std::string_view what) {
    std::string k = unique_key(key);
    std::string_view keys[] = {k};
    auto r = eval_keys(script, keys, std::span(args.begin(), args.size()), what);
    CONVEYOR_TRY(r);
    return r->empty() ? std::string() : std::move(r->front());
}

Result<std::vector<std::string>> RedisResults::eval_keys(std::string_view script,
                                                         std::span<const std::string_view> keys,
                                                         std::span<const std::string_view> args,
                                                         std::string_view what) {
    auto c = checkout();
    CONVEYOR_TRY(c);
    std::string n = std::to_string(keys.size());
    std::vector<std::string_view> argv = {"EVAL", script, n};
    argv.insert(argv.end(), keys.begin(), keys.end());
    argv.insert(argv.end(), args.begin(), args.end());
    CONVEYOR_TRY((*c)->append_argv(argv));
    auto r = (*c)->read(what);
    CONVEYOR_TRY(r);
    checkin(std::move(*c));
    auto one = [](const redisReply* x) {
        return x && x->type == REDIS_REPLY_INTEGER ? std::to_string(x->integer)
                                                   : std::string(text(x));
    };
    std::vector<std::string> out;
    if (r->get() && (*r)->type == REDIS_REPLY_ARRAY) {
        for (std::size_t i = 0; i < (*r)->elements; ++i) out.push_back(one((*r)->element[i]));
    } else {
        out.push_back(one(r->get()));
    }
    return out;
}

namespace {

constexpr std::string_view kLimitsKey = "conveyor-limits";

// The scripts below build a task's other keys the same way (Lua: 'conveyor-held-'..task).
std::string rate_key(std::string_view task, std::string_view key) {
    return fmt::format("conveyor-rate-{}:{}:{}", task.size(), task, key);
}

// KEYS: the rate's next start, the key's slots, the task's held-back ids, the task's slot sets.
// ARGV: ms between starts (0: no rate), the most running (0: no limit), the slot's member,
// its lease (ms), the task id, '1' when it comes back for a reserved start, how far ahead a
// start may be and still run (ms), how long a task held back is away (ms). Times are Redis's.
// A held-back id is scored by when it is due back and a minute (then it no longer counts as
// waiting); a reserved start is its score less that minute.
constexpr std::string_view kAdmit = R"(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local most = tonumber(ARGV[2])
local grace = 60000
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local at = nil
if interval > 0 and ARGV[6] == '1' then
  local s = redis.call('ZSCORE', KEYS[3], ARGV[5])
  if s then at = tonumber(s) - grace end
end
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= most then
    redis.call('ZADD', KEYS[3], string.format('%.3f', now + tonumber(ARGV[8]) + grace), ARGV[5])
    return {'full', '0', string.format('%.3f', now)}
  end
end
local wait = 0
if interval > 0 then
  if at == nil or now > at then
    local nxt = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
    at = math.max(nxt, now)
    redis.call('SET', KEYS[1], string.format('%.3f', at + interval), 'PX',
               math.floor(at + interval - now) + grace)
  end
  wait = at - now
  if wait > tonumber(ARGV[7]) then
    redis.call('ZADD', KEYS[3], string.format('%.3f', at + grace), ARGV[5])
    return {'later', string.format('%.3f', wait), string.format('%.3f', at)}
  end
end
if most > 0 then
  redis.call('ZADD', KEYS[2], string.format('%.3f', now + tonumber(ARGV[4])), ARGV[3])
  redis.call('SADD', KEYS[4], KEYS[2])
end
redis.call('ZREM', KEYS[3], ARGV[5])
return {'run', string.format('%.3f', wait), string.format('%.3f', at or now)})";

// KEYS: for each slot its set, the set of its task's slot sets and its task's held-back ids;
// ARGV: the member of each. Returns, for each, 1 when tasks of its task are held back.
constexpr std::string_view kReleaseSlots = R"(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local out = {}
for i = 1, #ARGV do
  local k = KEYS[3 * i - 2]
  redis.call('ZREM', k, ARGV[i])
  if redis.call('ZCARD', k) == 0 then redis.call('SREM', KEYS[3 * i - 1], k) end
  local held = KEYS[3 * i]
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  table.insert(out, redis.call('ZCARD', held) > 0 and 1 or 0)
end
return out)";

// ARGV: how long one caller has a queue's wakes of a task (ms), then for each queue and task
// the queue, the task, its most running and '1' when that is per key. Returns, for each, how
// many held-back tasks to wake.
constexpr std::string_view kWakeable = R"(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local out = {}
for i = 2, #ARGV, 4 do
  local queue, task = ARGV[i], ARGV[i + 1]
  local most, keyed = tonumber(ARGV[i + 2]), ARGV[i + 3] == '1'
  local held = 'conveyor-held-' .. task
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  local waiting = redis.call('ZCARD', held)
  local n = 0
  local token = 'conveyor-wake-' .. string.len(task) .. ':' .. task .. ':' .. queue
  if waiting > 0 and redis.call('SET', token, '1', 'PX', ARGV[1], 'NX') then
    if keyed then
      n = 1
    else
      local k = 'conveyor-slots-' .. string.len(task) .. ':' .. task .. ':'
      redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
      n = math.max(0, math.min(waiting, most - redis.call('ZCARD', k)))
    end
  end
  table.insert(out, n)
end
return out)";

// KEYS: slot sets; ARGV: the lease (ms), then the member of each. Returns how many had lapsed.
constexpr std::string_view kRenewSlots = R"(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local score = string.format('%.3f', now + tonumber(ARGV[1]))
local lapsed = 0
for i, k in ipairs(KEYS) do
  local s = redis.call('ZSCORE', k, ARGV[i + 1])
  if s and tonumber(s) > now then
    redis.call('ZADD', k, 'XX', score, ARGV[i + 1])
  else
    lapsed = lapsed + 1
  end
end
return lapsed)";

// ARGV: task names. For each, the ids held back (waiting) and the slots held (running).
constexpr std::string_view kLimitStats = R"(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local out = {}
for _, task in ipairs(ARGV) do
  local held = 'conveyor-held-' .. task
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  local running = 0
  local sets = 'conveyor-slotkeys-' .. task
  for _, k in ipairs(redis.call('SMEMBERS', sets)) do
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
    local n = redis.call('ZCARD', k)
    if n == 0 then redis.call('SREM', sets, k) end
    running = running + n
  end
  table.insert(out, redis.call('ZCARD', held))
  table.insert(out, running)
end
return out)";

}  // namespace

std::string RedisResults::held_key(std::string_view task) {
    return fmt::format("conveyor-held-{}", task);
}

std::string RedisResults::slot_sets_key(std::string_view task) {
    return fmt::format("conveyor-slotkeys-{}", task);
}

RedisResults::Slot RedisResults::slot_of(std::string_view task, std::string_view key,
                                         std::string member) {
    return Slot{slots_key(task, key), std::move(member), slot_sets_key(task), held_key(task)};
}

std::string RedisResults::slots_key(std::string_view task, std::string_view key) {
    return fmt::format("conveyor-slots-{}:{}:{}", task.size(), task, key);
}

Result<void> RedisResults::set_limit(const TaskLimit& limit) {
    auto c = checkout();
    CONVEYOR_TRY(c);
    std::string value;
    if (limit.limited())
        value = Json{{"rate", limit.rate},
                     {"max_concurrency", limit.max_concurrency},
                     {"key", limit.key}}
                    .dump();
    auto r = limit.limited()
                 ? (*c)->command({"HSET", kLimitsKey, limit.task, value}, "storing a limit")
                 : (*c)->command({"HDEL", kLimitsKey, limit.task}, "removing a limit");
    CONVEYOR_TRY(r);
    checkin(std::move(*c));
    return {};
}

Result<std::vector<LimitStats>> RedisResults::limits(bool counts) {
    auto c = checkout();
    CONVEYOR_TRY(c);
    auto r = (*c)->command({"HGETALL", kLimitsKey}, "reading the limits");
    CONVEYOR_TRY(r);
    checkin(std::move(*c));
    std::vector<LimitStats> out;
    const redisReply* all = r->get();
    if (!all || all->type != REDIS_REPLY_ARRAY) return out;
    for (std::size_t i = 0; i + 1 < all->elements; i += 2) {
        // Written by set_limit; anything else in the hash is left out.
        auto v = Json::parse(text(all->element[i + 1]), nullptr, false);
        if (!v.is_object()) continue;
        TaskLimit l{.task = std::string(text(all->element[i]))};
        if (auto x = v.find("rate"); x != v.end() && x->is_number()) l.rate = x->get<double>();
        if (auto x = v.find("max_concurrency"); x != v.end() && x->is_number_integer())
            l.max_concurrency = int(std::clamp<std::int64_t>(x->get<std::int64_t>(), 0, 1000000));
        if (auto x = v.find("key"); x != v.end() && x->is_string()) l.key = x->get<std::string>();
        if (!check_limit(l) || !l.limited()) continue;
        out.push_back(LimitStats{.limit = std::move(l)});
    }
    std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.limit.task < b.limit.task; });
    if (out.empty() || !counts) return out;
    std::vector<std::string_view> tasks;
    for (auto& x : out) tasks.push_back(x.limit.task);
    auto n = eval_keys(kLimitStats, {}, tasks, "counting what limits hold");
    CONVEYOR_TRY(n);
    for (std::size_t i = 0; i < out.size() && 2 * i + 1 < n->size(); ++i) {
        out[i].waiting = std::strtoll((*n)[2 * i].c_str(), nullptr, 10);
        out[i].running = std::strtoll((*n)[2 * i + 1].c_str(), nullptr, 10);
    }
    return out;
}

namespace {

/// kAdmit's SHA-1, as EVALSHA takes it.
const std::string& admit_digest() {
    static const std::string digest = [] {
        unsigned char d[SHA_DIGEST_LENGTH];
        SHA1(reinterpret_cast<const unsigned char*>(kAdmit.data()), kAdmit.size(), d);
        std::string hex;
        for (unsigned char b : d) hex += fmt::format("{:02x}", b);
        return hex;
    }();
    return digest;
}

/// kAdmit's answer: {kind, wait (ms), start (ms since the epoch)}.
std::optional<RedisResults::Admission> admission_of(const redisReply* x) {
    if (!x || x->type != REDIS_REPLY_ARRAY || x->elements != 3) return std::nullopt;
    using Kind = RedisResults::Admission::Kind;
    RedisResults::Admission a;
    std::string_view kind = text(x->element[0]);
    a.kind = kind == "run" ? Kind::run : kind == "later" ? Kind::later : Kind::full;
    a.wait_ms = std::strtod(std::string(text(x->element[1])).c_str(), nullptr);
    // Written to the microsecond: rounded back to it, so starts 1/rate apart stay that far.
    a.start = TimePoint(round<microseconds>(duration<double, std::milli>(
        std::strtod(std::string(text(x->element[2])).c_str(), nullptr))));
    return a;
}

}  // namespace

Result<std::vector<std::optional<RedisResults::Admission>>> RedisResults::admit_many(
    std::span<const Ask> asks, milliseconds lease, milliseconds hold, milliseconds back) {
    std::vector<std::optional<Admission>> out(asks.size());
    if (asks.empty()) return out;
    auto c = checkout();
    CONVEYOR_TRY(c);
    std::string lease_ms = std::to_string(std::max<std::int64_t>(lease.count(), 1));
    std::string hold_ms = std::to_string(hold.count()), back_ms = std::to_string(back.count());
    // By its digest (Redis keeps the scripts it ran), not its text: 40 bytes a delivery, not
    // 1,500, and nothing for Redis to hash.
    auto send = [&](const Ask& a, bool by_digest) {
        const TaskLimit& limit = a.limit;
        std::string rate = rate_key(limit.task, a.key), slots = slots_key(limit.task, a.key),
                    held = held_key(limit.task), sets = slot_sets_key(limit.task);
        std::string interval = limit.rate > 0 ? fmt::format("{:.6f}", 1000.0 / limit.rate) : "0";
        std::string most = std::to_string(std::max(limit.max_concurrency, 0));
        std::string_view argv[] = {by_digest ? "EVALSHA" : "EVAL",
                                   by_digest ? std::string_view(admit_digest()) : kAdmit,
                                   "4",
                                   rate,
                                   slots,
                                   held,
                                   sets,
                                   interval,
                                   most,
                                   a.slot,
                                   lease_ms,
                                   a.id,
                                   a.reserved ? "1" : "0",
                                   hold_ms,
                                   back_ms};
        return (*c)->append_argv(argv);
    };
    // Every reply is read, so that the connection stays in step; one Redis answers with an
    // error has no admission.
    std::vector<std::size_t> unknown;  // NOSCRIPT: Redis restarted, or its scripts were flushed
    auto receive = [&](std::size_t i, bool by_digest) -> Result<void> {
        auto r = (*c)->read("admitting a limited task");
        if (!r && !(*c)->healthy) return std::unexpected(r.error());
        if (!r && by_digest && r.error().message.find("NOSCRIPT") != std::string::npos) {
            unknown.push_back(i);  // not run: asked again by its text, after the others
        } else if (r) {
            out[i] = admission_of(r->get());
        }
        return {};
    };
    for (auto& a : asks) CONVEYOR_TRY(send(a, true));
    for (std::size_t i = 0; i < asks.size(); ++i) CONVEYOR_TRY(receive(i, true));
    if (!unknown.empty()) {
        for (auto i : unknown) CONVEYOR_TRY(send(asks[i], false));
        for (auto i : std::vector(unknown)) CONVEYOR_TRY(receive(i, false));
    }
    checkin(std::move(*c));
    return out;
}

Result<std::vector<bool>> RedisResults::release_slots(std::span<const Slot> slots) {
    std::vector<bool> out;
    if (slots.empty()) return out;
    std::vector<std::string_view> keys, args;
    for (auto& s : slots) {
        keys.push_back(s.key);
        keys.push_back(s.sets);
        keys.push_back(s.held);
        args.push_back(s.member);
    }
    auto r = eval_keys(kReleaseSlots, keys, args, "releasing concurrency slots");
    CONVEYOR_TRY(r);
    for (std::size_t i = 0; i < slots.size(); ++i) out.push_back(i < r->size() && (*r)[i] == "1");
    return out;
}

Result<std::vector<std::int64_t>> RedisResults::wakeable(std::span<const WaitingIn> where,
                                                         milliseconds every) {
    std::vector<std::int64_t> out;
    if (where.empty()) return out;
    std::vector<std::string> most;
    for (auto& w : where) most.push_back(std::to_string(std::max(w.limit.max_concurrency, 0)));
    std::string ms = std::to_string(std::max<std::int64_t>(every.count(), 1));
    std::vector<std::string_view> args = {ms};
    for (std::size_t i = 0; i < where.size(); ++i) {
        args.push_back(where[i].queue);
        args.push_back(where[i].limit.task);
        args.push_back(most[i]);
        args.push_back(where[i].limit.key.empty() ? "0" : "1");
    }
    auto r = eval_keys(kWakeable, {}, args, "counting the tasks to wake");
    CONVEYOR_TRY(r);
    for (std::size_t i = 0; i < where.size(); ++i)
        out.push_back(i < r->size() ? std::strtoll((*r)[i].c_str(), nullptr, 10) : 0);
    return out;
}

Result<std::int64_t> RedisResults::renew_slots(std::span<const Slot> slots, milliseconds lease) {
    if (slots.empty()) return 0;
    std::string ms = std::to_string(std::max<std::int64_t>(lease.count(), 1));
    std::vector<std::string_view> keys, args = {ms};
    for (auto& s : slots) {
        keys.push_back(s.key);
        args.push_back(s.member);
    }
    auto r = eval_keys(kRenewSlots, keys, args, "renewing concurrency slots");
    CONVEYOR_TRY(r);
    return r->empty() ? 0 : std::strtoll(r->front().c_str(), nullptr, 10);
}

Result<std::string> RedisResults::take_unique(std::string_view key, std::string_view id,
                                              std::optional<TimePoint> hold_until,
                                              milliseconds lease) {
    std::string hold = std::to_string(hold_until ? detail::to_epoch_ms(*hold_until) : 0);
    std::string ms = std::to_string(std::max<std::int64_t>(lease.count(), 1));
    auto holder = eval(kTakeUnique, key, {id, hold, ms}, "taking a unique key");
    CONVEYOR_TRY(holder);
    if (holder->empty())
        return fail(Errc::unavailable, "Redis result backend: no holder for a unique key");
    return holder;
}

Result<void> RedisResults::keep_unique(std::string_view key, std::string_view id,
                                       TimePoint lapse_at) {
    std::string at = std::to_string(detail::to_epoch_ms(lapse_at));
    CONVEYOR_TRY(eval(kKeepUnique, key, {id, at}, "keeping a unique key"));
    return {};
}

Result<void> RedisResults::release_unique(std::string_view key, std::string_view id) {
    std::string now = std::to_string(detail::to_epoch_ms(SystemClock::now()));
    CONVEYOR_TRY(eval(kReleaseUnique, key, {id, now}, "releasing a unique key"));
    return {};
}

Result<void> RedisResults::drop_unique(std::string_view key, std::string_view id) {
    CONVEYOR_TRY(eval(kDropUnique, key, {id}, "dropping a unique key"));
    return {};
}

Result<void> RedisResults::begin_chord(std::string_view group_id, std::size_t size) {
    auto c = checkout();
    CONVEYOR_TRY(c);
    std::string key = fmt::format("celery-taskset-meta-{}.s", group_id);
    std::string ttl = std::to_string(opts_.expires.count());
    std::string n = std::to_string(size);
    for (auto ok : {(*c)->append({"MULTI"}), (*c)->append({"SETEX", key, ttl, n}),
                    (*c)->append({"PUBLISH", key, n}), (*c)->append({"EXEC"})})
        if (!ok) return ok;
    for (int i = 0; i < 4; ++i) CONVEYOR_TRY((*c)->read("starting a chord"));
    checkin(std::move(*c));
    return {};
}

Result<ChordParts> RedisResults::chord_part_done(std::string_view group_id, int index,
                                                 const TaskResult& part) {
    auto c = checkout();
    CONVEYOR_TRY(c);
    Conn& conn = **c;
    std::string base = fmt::format("celery-taskset-meta-{}", group_id);
    std::string jkey = base + ".j", tkey = base + ".t", skey = base + ".s";
    std::string ttl = std::to_string(opts_.expires.count());
    std::string member = Json::array({1, part.id, to_string(part.state), part.result})
                             .dump(-1, ' ', true, Json::error_handler_t::replace);
    std::string score = std::to_string(index);
    for (auto ok : {conn.append({"MULTI"}), conn.append({"ZADD", jkey, score, member}),
                    conn.append({"ZCOUNT", jkey, "-inf", "+inf"}), conn.append({"GET", tkey}),
                    conn.append({"GET", skey}), conn.append({"EXPIRE", jkey, ttl}),
                    conn.append({"EXPIRE", tkey, ttl}), conn.append({"EXPIRE", skey, ttl}),
                    conn.append({"EXEC"})})
        CONVEYOR_TRY(ok);
    for (int i = 0; i < 8; ++i)  // MULTI's OK and seven QUEUED
        CONVEYOR_TRY(conn.read("counting a chord part"));
    auto exec = conn.read("counting a chord part");
    CONVEYOR_TRY(exec);
    const redisReply* x = exec->get();
    if (!x || x->type != REDIS_REPLY_ARRAY || x->elements < 4)
        return fail(Errc::unavailable, "Redis result backend: unexpected reply to a chord update");
    auto as_int = [](const redisReply* r) -> long long {
        if (!r) return 0;
        if (r->type == REDIS_REPLY_INTEGER) return r->integer;
        if (r->type == REDIS_REPLY_STRING) return std::atoll(std::string(r->str, r->len).c_str());
        return 0;
    };
    long long count = as_int(x->element[1]);
    long long extra = as_int(x->element[2]);
    bool sized = x->element[3] && x->element[3]->type == REDIS_REPLY_STRING;
    long long size = as_int(x->element[3]) + extra;
    ChordParts out;
    if (!sized || count != size) {
        checkin(std::move(*c));
        return out;
    }
    auto all = conn.command({"ZRANGE", jkey, "0", "-1"}, "reading a chord's parts");
    CONVEYOR_TRY(all);
    for (std::size_t i = 0; i < (*all)->elements; ++i) {
        Json m = Json::parse(text((*all)->element[i]), nullptr, false);
        if (!m.is_array() || m.size() != 4) continue;
        TaskResult r;
        r.id = m[1].is_string() ? m[1].get<std::string>() : "";
        auto st = m[2].is_string() ? parse_task_state(m[2].get<std::string>()) : std::nullopt;
        r.state = st ? *st : TaskState::failure;
        r.result = m[3];
        out.parts.push_back(std::move(r));
    }
    out.complete = true;
    for (auto ok : {conn.append({"MULTI"}), conn.append({"DEL", jkey}), conn.append({"DEL", tkey}),
                    conn.append({"DEL", skey}), conn.append({"EXEC"})})
        CONVEYOR_TRY(ok);
    for (int i = 0; i < 5; ++i) CONVEYOR_TRY(conn.read("finishing a chord"));
    checkin(std::move(*c));
    return out;
}

}  // namespace conveyor::results
