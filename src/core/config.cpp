#include "conveyor/config.hpp"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "conveyor/limits.hpp"
#include "core/codec.hpp"
#include "core/try.hpp"
#include "core/url.hpp"

namespace conveyor {

namespace {

struct Ctx {
    std::string_view source;
};

std::string where(const Ctx& c, const toml::node* n) {
    if (n && n->source().begin.line) return fmt::format("{}:{}", c.source, n->source().begin.line);
    return std::string(c.source);
}

std::unexpected<Error> bad(const Ctx& c, const toml::node* n, std::string what) {
    return fail(Errc::invalid_argument, fmt::format("{}: {}", where(c, n), what));
}

Result<std::string> get_string(const Ctx& c, const toml::table& t, std::string_view key,
                               std::string def = {}) {
    auto* n = t.get(key);
    if (!n) return def;
    if (auto s = n->value<std::string>()) return *s;
    return bad(c, n, fmt::format("'{}' must be a string", key));
}

Result<std::optional<double>> get_number(const Ctx& c, const toml::table& t, std::string_view key) {
    auto* n = t.get(key);
    if (!n) return std::optional<double>{};
    if (n->is_integer()) return std::optional<double>{double(n->as_integer()->get())};
    if (n->is_floating_point()) return std::optional<double>{n->as_floating_point()->get()};
    return bad(c, n, fmt::format("'{}' must be a number", key));
}

/// A number within [lo, hi] (NaN and infinities refused), or nullopt when the key is absent.
Result<std::optional<double>> get_bounded(const Ctx& c, const toml::table& t, std::string_view key,
                                          double lo, double hi) {
    auto v = get_number(c, t, key);
    if (!v || !*v) return v;
    if (!(**v >= lo && **v <= hi))
        return bad(c, t.get(key),
                   fmt::format("'{}' must be a number from {} to {}, not {}", key, lo, hi, **v));
    return v;
}

Result<std::optional<long long>> get_int(const Ctx& c, const toml::table& t, std::string_view key) {
    auto* n = t.get(key);
    if (!n) return std::optional<long long>{};
    if (n->is_integer()) return std::optional<long long>{n->as_integer()->get()};
    return bad(c, n, fmt::format("'{}' must be an integer", key));
}

/// A boolean key into `out` (left as it is when absent).
Result<void> get_bool(const Ctx& c, const toml::table& t, std::string_view key, bool& out) {
    auto* n = t.get(key);
    if (!n) return {};
    auto b = n->value<bool>();
    if (!b || !n->is_boolean()) return bad(c, n, fmt::format("'{}' must be true or false", key));
    out = *b;
    return {};
}

Result<void> check_keys(const Ctx& c, const toml::table& t, std::string_view table,
                        std::initializer_list<std::string_view> allowed) {
    for (auto& [k, v] : t) {
        if (std::find(allowed.begin(), allowed.end(), k.str()) == allowed.end())
            return bad(c, &v, fmt::format("unknown key '{}' in {}", k.str(), table));
    }
    return {};
}

/// Retry delays are at most a year.
constexpr double kMaxBackoff = 365.0 * 86400.0;

Result<void> parse_retry(const Ctx& c, const toml::table& t, RetryPolicy& p) {
    auto mr = get_int(c, t, "max_retries");
    CONVEYOR_TRY(mr);
    if (*mr) {
        if (**mr < 0 || **mr > codec::kMaxRetries)
            return bad(c, t.get("max_retries"),
                       fmt::format("'max_retries' must be from 0 to {}, not {}", codec::kMaxRetries,
                                   **mr));
        p.max_retries = int(**mr);
    }
    auto base = get_bounded(c, t, "retry_backoff", 0, kMaxBackoff);
    CONVEYOR_TRY(base);
    if (*base) p.backoff_base = **base;
    auto cap = get_bounded(c, t, "retry_backoff_max", 0, kMaxBackoff);
    CONVEYOR_TRY(cap);
    if (*cap) p.backoff_max = **cap;
    if (auto* j = t.get("retry_jitter")) {
        auto b = j->value<bool>();
        if (!b) return bad(c, j, "'retry_jitter' must be true or false");
        p.jitter = *b;
    }
    return {};
}

Result<std::vector<std::string>> string_list(const Ctx& c, const toml::node* n,
                                             std::string_view key) {
    std::vector<std::string> out;
    auto* arr = n->as_array();
    if (!arr) return bad(c, n, fmt::format("'{}' must be an array of strings", key));
    for (auto& e : *arr) {
        auto s = e.value<std::string>();
        if (!s) return bad(c, &e, fmt::format("'{}' must be an array of strings", key));
        out.push_back(*s);
    }
    return out;
}

Json to_json(const toml::node& n) {
    if (auto* t = n.as_table()) {
        Json o = Json::object();
        for (auto& [k, v] : *t) o[std::string(k.str())] = to_json(v);
        return o;
    }
    if (auto* a = n.as_array()) {
        Json arr = Json::array();
        for (auto& v : *a) arr.push_back(to_json(v));
        return arr;
    }
    if (auto v = n.value<std::int64_t>(); v && n.is_integer()) return *v;
    if (auto v = n.value<double>(); v && n.is_floating_point()) return *v;
    if (auto v = n.value<bool>()) return *v;
    if (auto v = n.value<std::string>()) return *v;
    return nullptr;
}

/// A task's `rate_limit` ("N/s", "N/m", "N/h" or a number a second), `max_concurrency` and
/// `limit_key` (or its other name, `rate_limit_key`).
Result<void> parse_task_limits(const Ctx& c, const toml::table& t, TaskConfig& task) {
    if (auto* n = t.get("rate_limit")) {
        Result<double> rate = 0.0;
        if (auto s = n->value<std::string>())
            rate = parse_rate(*s);
        else if (n->is_integer() || n->is_floating_point())
            rate = parse_rate(fmt::format("{}", n->value<double>().value_or(0)));
        else
            return bad(c, n,
                       fmt::format("task '{}': 'rate_limit' must be a string such as "
                                   "\"100/s\"",
                                   task.name));
        if (!rate) return bad(c, n, fmt::format("task '{}': {}", task.name, rate.error().message));
        task.rate_limit = *rate;
    }
    auto most = get_int(c, t, "max_concurrency");
    CONVEYOR_TRY(most);
    if (*most) {
        if (**most < 0 || **most > 1000000)
            return bad(
                c, t.get("max_concurrency"),
                fmt::format("task '{}': 'max_concurrency' must be from 0 to 1000000", task.name));
        task.max_concurrency = int(**most);
    }
    if (t.get("limit_key") && t.get("rate_limit_key"))
        return bad(c, t.get("rate_limit_key"),
                   fmt::format("task '{}' sets both 'limit_key' and 'rate_limit_key' (one key "
                               "serves both limits); keep one",
                               task.name));
    const char* key_name = t.get("rate_limit_key") ? "rate_limit_key" : "limit_key";
    auto key = get_string(c, t, key_name);
    CONVEYOR_TRY(key);
    if (!key->empty()) {
        if (auto ok = parse_limit_key(*key); !ok)
            return bad(c, t.get(key_name),
                       fmt::format("task '{}': {}", task.name, ok.error().message));
        if (!task.rate_limit && !task.max_concurrency)
            return bad(c, t.get(key_name),
                       fmt::format("task '{}': '{}' keys a limit; set 'rate_limit' or "
                                   "'max_concurrency' too",
                                   task.name, key_name));
        task.limit_key = *key;
    }
    return {};
}

Result<Json> get_arguments(const Ctx& c, const toml::table& t) {
    auto* n = t.get("arguments");
    if (!n) return Json::object();
    if (!n->is_table()) return bad(c, n, "'arguments' must be a table of x- arguments");
    return to_json(*n);
}

template <class Fn>
Result<void> each_table(const Ctx& c, const toml::table& root, std::string_view key, Fn&& fn) {
    auto* n = root.get(key);
    if (!n) return {};
    auto* arr = n->as_array();
    if (!arr) return bad(c, n, fmt::format("'{}' must be an array of tables ([[{}]])", key, key));
    for (auto& e : *arr) {
        auto* t = e.as_table();
        if (!t) return bad(c, &e, fmt::format("each [[{}]] must be a table", key));
        CONVEYOR_TRY(fn(*t, e));
    }
    return {};
}

}  // namespace

Topology Config::topology() const {
    Topology t;
    t.exchanges = exchanges;
    t.bindings = bindings;
    for (auto& q : queues) {
        QueueSpec s = q.declare;
        s.name = q.name;
        t.queues.push_back(std::move(s));
    }
    return t;
}

const TaskConfig* Config::find_task(std::string_view name) const noexcept {
    for (auto& t : tasks)
        if (t.name == name) return &t;
    return nullptr;
}

const QueueConfig* Config::find_queue(std::string_view name) const noexcept {
    for (auto& q : queues)
        if (q.name == name) return &q;
    return nullptr;
}

std::string Config::queue_for(std::string_view task) const {
    if (auto* t = find_task(task); t && !t->queue.empty()) return t->queue;
    return default_queue;
}

bool Config::publishes_raw(std::string_view exchange, std::string_view queue) const {
    auto raw_queue = [&](std::string_view name) {
        const QueueConfig* q = find_queue(name);
        return q && q->format == QueueFormat::raw;
    };
    if (exchange.empty()) return raw_queue(queue);
    for (auto& x : exchanges)
        if (x.name == exchange && x.format == "raw") return true;
    bool any = false;
    for (auto& b : bindings) {
        if (b.exchange != exchange) continue;
        if (b.queue.empty() || !raw_queue(b.queue)) return false;
        any = true;
    }
    return any;
}

RetryPolicy Config::retry_for(std::string_view task) const {
    if (auto* t = find_task(task)) return t->retry;
    return default_retry;
}

namespace {

Result<Config> parse_config_text(std::string_view text, std::string_view source) {
    Ctx c{source};
    toml::table root;
    try {
        root = toml::parse(text, source);
    } catch (const toml::parse_error& e) {
        return fail(Errc::invalid_argument,
                    fmt::format("{}:{}: {}", source, e.source().begin.line, e.description()));
    }
    Config cfg;
    CONVEYOR_TRY(check_keys(c, root, "the top level",
                            {"broker", "default_queue", "queue", "exchange", "binding", "task",
                             "worker", "retry", "schedule"}));
    auto broker = get_string(c, root, "broker");
    CONVEYOR_TRY(broker);
    cfg.broker = *broker;
    auto dq = get_string(c, root, "default_queue", std::string(kDefaultQueue));
    CONVEYOR_TRY(dq);
    cfg.default_queue = *dq;

    if (auto* r = root.get("retry")) {
        auto* t = r->as_table();
        if (!t) return bad(c, r, "'retry' must be a table");
        CONVEYOR_TRY(
            check_keys(c, *t, "[retry]",
                       {"max_retries", "retry_backoff", "retry_backoff_max", "retry_jitter"}));
        CONVEYOR_TRY(parse_retry(c, *t, cfg.default_retry));
    }

    if (auto* qn = root.get("queue")) {
        auto* arr = qn->as_array();
        if (!arr) return bad(c, qn, "'queue' must be an array of tables ([[queue]])");
        for (auto& e : *arr) {
            auto* t = e.as_table();
            if (!t) return bad(c, &e, "each [[queue]] must be a table");
            CONVEYOR_TRY(check_keys(c, *t, "[[queue]]",
                                    {"name", "format", "task", "type", "max_priority", "max_length",
                                     "overflow", "partitions", "arguments", "durable",
                                     "auto_delete", "exclusive", "passive", "fair_key"}));
            QueueConfig q;
            auto name = get_string(c, *t, "name");
            CONVEYOR_TRY(name);
            if (name->empty()) return bad(c, &e, "[[queue]] needs a 'name'");
            q.name = *name;
            auto fmtname = get_string(c, *t, "format", "celery");
            CONVEYOR_TRY(fmtname);
            if (*fmtname == "celery") {
                q.format = QueueFormat::celery;
            } else if (*fmtname == "raw") {
                q.format = QueueFormat::raw;
            } else {
                return bad(c, t->get("format"),
                           fmt::format("queue '{}' has format '{}'; use \"celery\" or \"raw\"",
                                       q.name, *fmtname));
            }
            auto task = get_string(c, *t, "task");
            CONVEYOR_TRY(task);
            q.task = *task;
            if (q.format == QueueFormat::raw && q.task.empty())
                return bad(
                    c, &e,
                    fmt::format("raw queue '{}' needs a 'task' to run its messages", q.name));
            auto type = get_string(c, *t, "type", "classic");
            CONVEYOR_TRY(type);
            if (*type != "classic" && *type != "quorum")
                return bad(c, t->get("type"),
                           fmt::format("queue '{}' has type '{}'; use \"classic\" or \"quorum\"",
                                       q.name, *type));
            q.declare.type = *type;
            auto prio = get_int(c, *t, "max_priority");
            CONVEYOR_TRY(prio);
            if (*prio) {
                if (**prio < 1 || **prio > 255)
                    return bad(c, t->get("max_priority"), "'max_priority' must be 1..255");
                if (*type == "quorum")
                    return bad(c, t->get("max_priority"),
                               fmt::format("queue '{}': quorum queues have no priorities; drop "
                                           "'max_priority' or use type = \"classic\"",
                                           q.name));
                q.declare.max_priority = int(**prio);
            }
            auto maxlen = get_int(c, *t, "max_length");
            CONVEYOR_TRY(maxlen);
            if (*maxlen) {
                if (**maxlen < 1)
                    return bad(c, t->get("max_length"), "'max_length' must be positive");
                q.declare.max_length = **maxlen;
            }
            auto overflow = get_string(c, *t, "overflow");
            CONVEYOR_TRY(overflow);
            if (!overflow->empty() && *overflow != "drop-head" && *overflow != "reject-publish" &&
                *overflow != "reject-publish-dlx")
                return bad(c, t->get("overflow"),
                           "'overflow' must be drop-head, reject-publish or reject-publish-dlx");
            q.declare.overflow = *overflow;
            auto parts = get_int(c, *t, "partitions");
            CONVEYOR_TRY(parts);
            if (*parts) {
                if (**parts < 1 || **parts > 1024)
                    return bad(c, t->get("partitions"), "'partitions' must be 1..1024");
                q.declare.partitions = int(**parts);
            }
            auto fair = get_string(c, *t, "fair_key");
            CONVEYOR_TRY(fair);
            if (!fair->empty()) {
                if (auto ok = parse_limit_key(*fair); !ok)
                    return bad(c, t->get("fair_key"),
                               fmt::format("queue '{}': fair {}", q.name, ok.error().message));
                q.declare.fair_key = *fair;
            }
            auto args = get_arguments(c, *t);
            CONVEYOR_TRY(args);
            q.declare.arguments = std::move(*args);
            q.declare.name = q.name;
            for (auto [key, field] : {std::pair{"durable", &q.declare.durable},
                                      std::pair{"auto_delete", &q.declare.auto_delete},
                                      std::pair{"exclusive", &q.declare.exclusive},
                                      std::pair{"passive", &q.declare.passive}})
                CONVEYOR_TRY(get_bool(c, *t, key, *field));
            if (q.declare.type == "quorum" &&
                (!q.declare.durable || q.declare.auto_delete || q.declare.exclusive))
                return bad(c, &e,
                           fmt::format("queue '{}': quorum queues are durable, never auto_delete "
                                       "or exclusive",
                                       q.name));
            if (q.declare.partitions > 0 && q.declare.passive)
                return bad(c, &e,
                           fmt::format("queue '{}': an ordered queue (partitions) is Conveyor's "
                                       "own; it cannot be passive",
                                       q.name));
            if (cfg.find_queue(q.name))
                return bad(c, &e, fmt::format("queue '{}' is defined twice", q.name));
            cfg.queues.push_back(std::move(q));
        }
    }

    auto exchanges = each_table(
        c, root, "exchange", [&](const toml::table& t, const toml::node& e) -> Result<void> {
            CONVEYOR_TRY(check_keys(c, t, "[[exchange]]",
                                    {"name", "type", "durable", "auto_delete", "internal",
                                     "passive", "format", "arguments"}));
            ExchangeSpec x;
            auto name = get_string(c, t, "name");
            CONVEYOR_TRY(name);
            if (name->empty()) return bad(c, &e, "[[exchange]] needs a 'name'");
            x.name = *name;
            auto type = get_string(c, t, "type", "direct");
            CONVEYOR_TRY(type);
            static constexpr std::string_view kTypes[] = {"direct", "fanout", "topic", "headers",
                                                          "x-consistent-hash"};
            if (std::find(std::begin(kTypes), std::end(kTypes), *type) == std::end(kTypes))
                return bad(c, t.get("type"),
                           fmt::format("exchange '{}' has type '{}'; use direct, fanout, topic, "
                                       "headers or x-consistent-hash",
                                       x.name, *type));
            x.type = *type;
            for (auto [key, field] :
                 {std::pair{"durable", &x.durable}, std::pair{"auto_delete", &x.auto_delete},
                  std::pair{"internal", &x.internal}, std::pair{"passive", &x.passive}})
                CONVEYOR_TRY(get_bool(c, t, key, *field));
            auto format = get_string(c, t, "format", "celery");
            CONVEYOR_TRY(format);
            if (*format != "celery" && *format != "raw")
                return bad(c, t.get("format"),
                           fmt::format("exchange '{}' has format '{}'; use \"celery\" or \"raw\"",
                                       x.name, *format));
            x.format = *format;
            auto args = get_arguments(c, t);
            CONVEYOR_TRY(args);
            x.arguments = std::move(*args);
            for (auto& other : cfg.exchanges)
                if (other.name == x.name)
                    return bad(c, &e, fmt::format("exchange '{}' is defined twice", x.name));
            cfg.exchanges.push_back(std::move(x));
            return {};
        });
    CONVEYOR_TRY(exchanges);

    auto bindings = each_table(
        c, root, "binding", [&](const toml::table& t, const toml::node& e) -> Result<void> {
            CONVEYOR_TRY(
                check_keys(c, t, "[[binding]]",
                           {"exchange", "queue", "to_exchange", "routing_key", "arguments"}));
            BindingSpec b;
            auto ex = get_string(c, t, "exchange");
            CONVEYOR_TRY(ex);
            auto q = get_string(c, t, "queue");
            CONVEYOR_TRY(q);
            auto to = get_string(c, t, "to_exchange");
            CONVEYOR_TRY(to);
            auto key = get_string(c, t, "routing_key");
            CONVEYOR_TRY(key);
            if (ex->empty()) return bad(c, &e, "[[binding]] needs an 'exchange'");
            if (q->empty() == to->empty())
                return bad(c, &e, "[[binding]] needs exactly one of 'queue' and 'to_exchange'");
            b.exchange = *ex;
            b.queue = *q;
            b.to_exchange = *to;
            b.routing_key = *key;
            auto args = get_arguments(c, t);
            CONVEYOR_TRY(args);
            b.arguments = std::move(*args);
            cfg.bindings.push_back(std::move(b));
            return {};
        });
    CONVEYOR_TRY(bindings);

    if (auto* tn = root.get("task")) {
        auto* arr = tn->as_array();
        if (!arr) return bad(c, tn, "'task' must be an array of tables ([[task]])");
        for (auto& e : *arr) {
            auto* t = e.as_table();
            if (!t) return bad(c, &e, "each [[task]] must be a table");
            CONVEYOR_TRY(check_keys(
                c, *t, "[[task]]",
                {"name", "queue", "exec", "http", "timeout", "max_retries", "retry_backoff",
                 "retry_backoff_max", "retry_jitter", "track_started", "input", "rate_limit",
                 "max_concurrency", "limit_key", "rate_limit_key"}));
            TaskConfig task;
            task.retry = cfg.default_retry;
            auto name = get_string(c, *t, "name");
            CONVEYOR_TRY(name);
            if (name->empty()) return bad(c, &e, "[[task]] needs a 'name'");
            task.name = *name;
            auto queue = get_string(c, *t, "queue");
            CONVEYOR_TRY(queue);
            task.queue = *queue;
            if (auto* ex = t->get("exec")) {
                if (auto s = ex->value<std::string>()) {
                    task.exec = {"/bin/sh", "-c", *s};
                } else {
                    auto list = string_list(c, ex, "exec");
                    CONVEYOR_TRY(list);
                    if (list->empty()) return bad(c, ex, "'exec' must not be empty");
                    task.exec = std::move(*list);
                }
            }
            auto http = get_string(c, *t, "http");
            CONVEYOR_TRY(http);
            task.http = *http;
            if (!task.http.empty() && !task.exec.empty())
                return bad(
                    c, &e,
                    fmt::format("task '{}' sets both 'exec' and 'http'; choose one", task.name));
            if (!task.http.empty() && task.http.rfind("http://", 0) != 0 &&
                task.http.rfind("https://", 0) != 0)
                return bad(
                    c, t->get("http"),
                    fmt::format("task '{}': 'http' must be an http:// or https:// URL", task.name));
            auto timeout = get_bounded(c, *t, "timeout", 0.001, codec::kMaxTimeLimit);
            CONVEYOR_TRY(timeout);
            task.timeout = *timeout;
            CONVEYOR_TRY(parse_retry(c, *t, task.retry));
            CONVEYOR_TRY(get_bool(c, *t, "track_started", task.track_started));
            auto input = get_string(c, *t, "input");
            CONVEYOR_TRY(input);
            if (!input->empty() && *input != "task" && *input != "body")
                return bad(c, t->get("input"),
                           fmt::format("task '{}': 'input' must be \"task\" or \"body\", not '{}'",
                                       task.name, *input));
            task.input_body = *input == "body";
            CONVEYOR_TRY(parse_task_limits(c, *t, task));
            if (cfg.find_task(task.name))
                return bad(c, &e, fmt::format("task '{}' is defined twice", task.name));
            cfg.tasks.push_back(std::move(task));
        }
    }

    auto schedules = each_table(
        c, root, "schedule", [&](const toml::table& t, const toml::node& e) -> Result<void> {
            CONVEYOR_TRY(check_keys(
                c, t, "[[schedule]]",
                {"name", "task", "cron", "every", "timezone", "args", "kwargs", "queue", "priority",
                 "catch_up", "catch_up_limit", "catch_up_window", "overlap", "paused"}));
            auto spec = ScheduleSpec::from_json(to_json(t));
            if (!spec) return bad(c, &e, spec.error().message);
            for (auto& other : cfg.schedules)
                if (other.name == spec->name)
                    return bad(c, &e, fmt::format("schedule '{}' is defined twice", spec->name));
            cfg.schedules.push_back(std::move(*spec));
            return {};
        });
    CONVEYOR_TRY(schedules);

    if (auto* wn = root.get("worker")) {
        auto* t = wn->as_table();
        if (!t) return bad(c, wn, "'worker' must be a table");
        CONVEYOR_TRY(check_keys(c, *t, "[worker]",
                                {"queues", "concurrency", "prefetch", "lease", "shutdown_grace",
                                 "delivery_limit", "track_started", "http"}));
        if (auto* q = t->get("queues")) {
            auto list = string_list(c, q, "queues");
            CONVEYOR_TRY(list);
            cfg.worker.queues = std::move(*list);
        }
        auto conc = get_int(c, *t, "concurrency");
        CONVEYOR_TRY(conc);
        if (*conc) {
            if (**conc < 1 || **conc > 1024)
                return bad(c, t->get("concurrency"), "'concurrency' must be 1..1024");
            cfg.worker.concurrency = int(**conc);
        }
        auto pf = get_int(c, *t, "prefetch");
        CONVEYOR_TRY(pf);
        if (*pf) {
            if (**pf < 0 || **pf > 100000)
                return bad(c, t->get("prefetch"),
                           fmt::format("'prefetch' must be from 0 (concurrency * 4) to 100000, "
                                       "not {}",
                                       **pf));
            cfg.worker.prefetch = int(**pf);
        }
        auto lease = get_bounded(c, *t, "lease", 0.2, 86400);
        CONVEYOR_TRY(lease);
        if (*lease) cfg.worker.lease = **lease;
        auto grace = get_bounded(c, *t, "shutdown_grace", 0, 86400);
        CONVEYOR_TRY(grace);
        if (*grace) cfg.worker.shutdown_grace = **grace;
        auto limit = get_int(c, *t, "delivery_limit");
        CONVEYOR_TRY(limit);
        if (*limit) {
            if (**limit < 0 || **limit > 1000)
                return bad(c, t->get("delivery_limit"),
                           fmt::format("'delivery_limit' must be from 0 (no limit) to 1000, not {}",
                                       **limit));
            cfg.worker.delivery_limit = int(**limit);
        }
        CONVEYOR_TRY(get_bool(c, *t, "track_started", cfg.worker.track_started));
        auto http = get_string(c, *t, "http");
        CONVEYOR_TRY(http);
        if (!http->empty()) {
            if (auto a = detail::parse_listen_address(*http); !a)
                return bad(c, t->get("http"), a.error().message);
            cfg.worker.http = std::move(*http);
        }
    }
    for (auto& t : cfg.tasks) {
        if (!t.queue.empty() && !cfg.find_queue(t.queue)) {
            QueueConfig q;
            q.name = t.queue;
            cfg.queues.push_back(std::move(q));
        }
    }
    // A bound queue that has no [[queue]] table is declared with the defaults.
    for (auto& b : cfg.bindings) {
        if (!b.queue.empty() && !cfg.find_queue(b.queue)) {
            QueueConfig q;
            q.name = b.queue;
            cfg.queues.push_back(std::move(q));
        }
    }
    return cfg;
}

}  // namespace

Result<Config> parse_config(std::string_view text, std::string_view source) {
    auto cfg = parse_config_text(text, source);
    if (!cfg) {
        // One line, whatever the file holds: control characters the parser quotes from it
        // (a newline where a value was expected) are shown escaped.
        std::string line;
        for (unsigned char ch : cfg.error().message) {
            if (ch == '\n')
                line += "\\n";
            else if (ch < 0x20 || ch == 0x7f)
                line += fmt::format("\\x{:02x}", ch);
            else
                line += char(ch);
        }
        return fail(cfg.error().code, std::move(line));
    }
    return cfg;
}

Result<Config> load_config(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return fail(Errc::not_found, fmt::format("cannot read config file '{}'", path));
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_config(ss.str(), path);
}

}  // namespace conveyor
