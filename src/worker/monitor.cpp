#include "worker/monitor.hpp"

#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <set>

#include "conveyor/log.hpp"
#include "core/codec.hpp"
#include "core/time.hpp"

namespace conveyor::detail {

namespace {

using namespace std::chrono;

constexpr double kHeartbeatSeconds = 2.0;
constexpr std::size_t kRevokedKept = 50000;  // as Celery's LimitedSet

double now_epoch() { return duration<double>(system_clock::now().time_since_epoch()).count(); }
double monotonic() { return duration<double>(steady_clock::now().time_since_epoch()).count(); }

/// Python's time.timezone // 3600: hours *west* of UTC, floored.
int utcoffset() {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    return int(std::floor(-double(tm.tm_gmtoff) / 3600.0));
}

Json loadavg() {
    double l[3] = {0, 0, 0};
    if (getloadavg(l, 3) != 3) return Json::array({0.0, 0.0, 0.0});
    return Json::array(
        {std::round(l[0] * 100) / 100, std::round(l[1] * 100) / 100, std::round(l[2] * 100) / 100});
}

}  // namespace

Monitor::Monitor(std::unique_ptr<ControlChannel> channel, MonitorOptions options)
    : channel_(std::move(channel)), opts_(std::move(options)), task_events_(opts_.task_events) {
    std::sort(opts_.registered.begin(), opts_.registered.end());
}

Monitor::~Monitor() { stop(); }

void Monitor::start(bool publish_now) {
    std::vector<Json> online;
    {
        std::lock_guard lk(mu_);
        emit(worker_event("worker-online"));
        if (publish_now) online.swap(events_);
    }
    // Before the worker takes tasks: its pidbox exists and monitors know it (on failure the
    // thread keeps trying).
    if (!channel_->publish_events(online)) {
        std::lock_guard lk(mu_);
        events_.insert(events_.begin(), online.begin(), online.end());
    }
    thread_ = std::thread([this] { loop(); });
}

void Monitor::stop() {
    if (!thread_.joinable()) return;
    {
        std::lock_guard lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
}

Json Monitor::worker_event(const char* type) const {
    std::size_t active = 0;
    for (auto& [_, r] : rows_) active += r.active ? 1 : 0;
    return Json{{"type", type},         {"freq", kHeartbeatSeconds},
                {"active", active},     {"processed", processed_},
                {"loadavg", loadavg()}, {"sw_ident", "conveyor"},
                {"sw_ver", "0.1.0"},    {"sw_sys", "Linux"}};
}

void Monitor::emit(Json e) {
    bool task_event = e.value("type", "").starts_with("task-");
    if (task_event && !task_events_) return;
    e["hostname"] = opts_.node;
    e["utcoffset"] = utcoffset();
    e["pid"] = getpid();
    e["clock"] = ++clock_;
    e["timestamp"] = now_epoch();
    events_.push_back(std::move(e));
}

Json Monitor::Row::info(const std::string& id, const std::string& node) const {
    return Json{{"id", id},
                {"name", task->name},
                {"args", task->args},
                {"kwargs", task->kwargs},
                {"type", task->name},
                {"hostname", node},
                {"time_start", time_start ? Json(*time_start) : Json()},
                {"acknowledged", false},  // acks come after the outcome
                {"delivery_info",
                 {{"exchange", ""},
                  {"routing_key", queue},
                  {"priority", priority},
                  {"redelivered", redelivered}}},
                {"worker_pid", time_start ? Json(getpid()) : Json()}};
}

void Monitor::received(std::shared_ptr<const TaskMessage> task, const Delivery& d) {
    const TaskMessage& t = *task;
    std::lock_guard lk(mu_);
    rows_[t.id] = Row{std::move(task), d.queue, t.priority, d.deliveries > 1};
    if (!task_events_) return;
    Json e = {{"type", "task-received"},
              {"uuid", t.id},
              {"name", t.name},
              {"args", codec::args_repr(t.args)},
              {"kwargs", codec::kwargs_repr(t.kwargs)},
              {"root_id", t.root_id.empty() ? Json() : Json(t.root_id)},
              {"parent_id", t.parent_id.empty() ? Json() : Json(t.parent_id)},
              {"retries", t.retries},
              {"queue", d.queue},
              {"eta", t.eta ? Json(format_iso8601(*t.eta)) : Json()},
              {"expires", t.expires ? Json(format_iso8601(*t.expires)) : Json()}};
    emit(std::move(e));
}

void Monitor::started(const std::string& id) {
    std::lock_guard lk(mu_);
    if (auto it = rows_.find(id); it != rows_.end()) {
        it->second.active = true;
        it->second.time_start = now_epoch();
    }
    if (task_events_) emit(Json{{"type", "task-started"}, {"uuid", id}});
}

void Monitor::finish(const std::string& id) {
    auto it = rows_.find(id);
    if (it == rows_.end()) return;
    total_[it->second.task->name]++;
    processed_++;
    rows_.erase(it);
}

void Monitor::succeeded(const std::string& id, const Json& result, double runtime) {
    std::lock_guard lk(mu_);
    finish(id);
    if (!task_events_) return;
    emit(Json{{"type", "task-succeeded"},
              {"uuid", id},
              {"result", codec::value_repr(result)},
              {"runtime", runtime}});
}

void Monitor::failed(const std::string& id, const std::string& exception,
                     const std::string& traceback) {
    std::lock_guard lk(mu_);
    finish(id);
    emit(Json{
        {"type", "task-failed"}, {"uuid", id}, {"exception", exception}, {"traceback", traceback}});
}

void Monitor::retried(const std::string& id, const std::string& exception,
                      const std::string& traceback) {
    std::lock_guard lk(mu_);
    finish(id);
    emit(Json{{"type", "task-retried"},
              {"uuid", id},
              {"exception", exception},
              {"traceback", traceback}});
}

void Monitor::revoked(const std::string& id, bool expired, bool terminated) {
    std::lock_guard lk(mu_);
    finish(id);
    emit(Json{{"type", "task-revoked"},
              {"uuid", id},
              {"terminated", terminated},
              {"signum", terminated ? Json(15) : Json()},
              {"expired", expired}});
}

void Monitor::released(const std::string& id) {
    std::lock_guard lk(mu_);
    rows_.erase(id);
}

bool Monitor::is_revoked(const std::string& id) const {
    std::lock_guard lk(mu_);
    return revoked_.contains(id);
}

std::vector<std::string> Monitor::take_terminations() {
    std::lock_guard lk(mu_);
    return std::exchange(terminate_, {});
}

void Monitor::revoke(const Json& ids, bool terminate) {
    auto add = [&](const std::string& id) {
        if (revoked_.insert(id).second) revoked_order_.emplace_back(id, monotonic());
        while (revoked_order_.size() > kRevokedKept) {
            revoked_.erase(revoked_order_.front().first);
            revoked_order_.pop_front();
        }
        if (terminate && rows_.contains(id) && rows_[id].active) terminate_.push_back(id);
    };
    if (ids.is_string()) add(ids.get<std::string>());
    if (ids.is_array())
        for (auto& i : ids)
            if (i.is_string()) add(i.get<std::string>());
}

namespace {

/// An argument of a remote-control request; null when absent or when the arguments are not an
/// object. Requests come from anyone on the vhost: every field is checked before use.
const Json& arg(const Json& arguments, const char* key) {
    static const Json null;
    if (!arguments.is_object()) return null;
    auto it = arguments.find(key);
    return it == arguments.end() ? null : *it;
}

}  // namespace

std::optional<Json> Monitor::handle(const ControlRequest& r) {
    std::lock_guard lk(mu_);
    clock_ = std::max(clock_, r.clock) + 1;
    const Json& a = r.arguments;
    const std::string& m = r.method;
    if (m == "ping") return Json{{"ok", "pong"}};
    if (m == "active" || m == "reserved") {
        Json out = Json::array();
        for (auto& [id, row] : rows_)
            if (row.active == (m == "active")) out.push_back(row.info(id, opts_.node));
        return out;
    }
    if (m == "scheduled") return Json::array();  // delayed tasks wait in the broker
    if (m == "revoked") {
        Json out = Json::array();
        for (auto& [id, _] : revoked_order_) out.push_back(id);
        return out;
    }
    if (m == "registered") {
        Json out = Json::array();
        for (auto& n : opts_.registered)
            if (!n.starts_with("celery.")) out.push_back(n);
        return out;
    }
    if (m == "query_task") {
        Json out = Json::object();
        if (const Json& ids = arg(a, "ids"); ids.is_array())
            for (auto& id : ids)
                if (id.is_string())
                    if (auto it = rows_.find(id.get<std::string>()); it != rows_.end())
                        out[it->first] = Json::array({it->second.active ? "active" : "reserved",
                                                      it->second.info(it->first, opts_.node)});
        return out;
    }
    if (m == "stats") {
        rusage ru{};
        getrusage(RUSAGE_SELF, &ru);
        auto secs = [](const timeval& tv) { return double(tv.tv_sec) + tv.tv_usec / 1e6; };
        return Json{{"total", total_},
                    {"pid", getpid()},
                    {"clock", std::to_string(clock_)},
                    {"uptime", duration_cast<seconds>(steady_clock::now() - started_at_).count()},
                    {"pool",
                     {{"max-concurrency", opts_.concurrency},
                      {"processes", Json::array({getpid()})},
                      {"implementation", "conveyor:threads"}}},
                    {"broker", {{"transport", "amqp"}}},
                    {"prefetch_count", opts_.prefetch},
                    {"rusage",
                     {{"utime", secs(ru.ru_utime)},
                      {"stime", secs(ru.ru_stime)},
                      {"maxrss", ru.ru_maxrss}}}};
    }
    if (m == "clock") return Json{{"clock", clock_}};
    if (m == "revoke" || m == "terminate") {
        const Json& ids = arg(a, "task_id");
        // Celery's terminate is a boolean; anything else (a string "yes") is taken as Python's
        // truth of it would be, never as a reason to fail.
        const Json& t = arg(a, "terminate");
        bool terminate =
            m == "terminate" || (t.is_boolean()  ? t.get<bool>()
                                 : t.is_number() ? t != 0
                                 : t.is_string() ? !t.get_ref<const std::string&>().empty()
                                                 : false);
        revoke(ids, terminate);
        std::string list;
        if (ids.is_string()) list = ids.get<std::string>();
        if (ids.is_array())
            for (auto& i : ids)
                if (i.is_string()) list += (list.empty() ? "" : ", ") + i.get<std::string>();
        return Json{{"ok", fmt::format("tasks {} flagged as revoked", list)}};
    }
    if (m == "hello") {
        if (const Json& from = arg(a, "from_node"); from.is_string() && from == opts_.node)
            return std::nullopt;
        if (const Json& theirs = arg(a, "revoked"); theirs.is_object())
            for (auto& [id, _] : theirs.items()) revoke(Json(id), false);
        Json mine = Json::object();
        for (auto& [id, ts] : revoked_order_) mine[id] = Json::array({ts, id});
        return Json{{"revoked", mine}, {"clock", clock_}};
    }
    if (m == "heartbeat") {
        Json e = worker_event("worker-heartbeat");
        e["freq"] = 5;
        emit(std::move(e));
        return std::nullopt;
    }
    if (m == "enable_events" || m == "disable_events") {
        task_events_ = m == "enable_events";
        return Json{{"ok", task_events_ ? "task events enabled" : "task events disabled"}};
    }
    if (m == "active_queues") {
        Json out = Json::array();
        for (auto& q : opts_.queues)
            out.push_back({{"name", q},
                           {"exchange", {{"name", ""}, {"type", "direct"}}},
                           {"routing_key", q},
                           {"durable", true},
                           {"exclusive", false},
                           {"auto_delete", false},
                           {"no_ack", false}});
        return out;
    }
    if (m == "add_consumer" || m == "cancel_consumer") {
        const Json& q = arg(a, "queue");
        if (!q.is_string() || q.get_ref<const std::string&>().empty())
            return Json{{"error", fmt::format("{} needs a queue name", m)}};
        std::string queue = q.get<std::string>();
        bool add = m == "add_consumer";
        auto it = std::find(opts_.queues.begin(), opts_.queues.end(), queue);
        if (add && it != opts_.queues.end())
            return Json{{"ok", fmt::format("already consuming from '{}'", queue)}};
        if (!add && it == opts_.queues.end())
            return Json{{"ok", fmt::format("not consuming from '{}'", queue)}};
        if (!opts_.on_consumer_change)
            return Json{{"error", fmt::format("{} is not supported by this worker", m)}};
        opts_.on_consumer_change(queue, add);
        if (add) {
            opts_.queues.push_back(queue);
            return Json{{"ok", fmt::format("add consumer {}", queue)}};
        }
        opts_.queues.erase(it);
        return Json{{"ok", fmt::format("no longer consuming from '{}'", queue)}};
    }
    if (m == "rate_limit" && opts_.on_rate_limit) {
        const Json& task = arg(a, "task_name");
        const Json& rate = arg(a, "rate_limit");
        if (!task.is_string()) return Json{{"error", "rate_limit needs a task_name"}};
        std::string text = rate.is_string()   ? rate.get<std::string>()
                           : rate.is_number() ? rate.dump()
                                              : std::string();
        return opts_.on_rate_limit(task.get<std::string>(), text);
    }
    if (m == "conf") return opts_.conf;
    if (m == "report") return Json{{"ok", fmt::format("conveyor {} on {}", "0.1.0", opts_.node)}};
    // Celery's other commands, which Conveyor workers do not carry out: said so, as Celery says
    // a command fails (an unknown one is a KeyError there too).
    static const std::set<std::string, std::less<>> not_here = {
        "rate_limit", "time_limit", "pool_grow", "pool_shrink", "pool_restart", "autoscale",
        "election",   "objgraph",   "memsample", "memdump",     "dump_tasks"};
    if (not_here.contains(m))
        return Json{{"error", fmt::format("'{}' is not supported by Conveyor workers", m)}};
    if (m == "shutdown") {
        if (opts_.on_shutdown) opts_.on_shutdown();
        return Json{{"ok", "shutting down"}};
    }
    return Json{{"error", fmt::format("KeyError('{}')", m)}};
}

void Monitor::loop() {
    auto next_heartbeat = steady_clock::now() + duration<double>(kHeartbeatSeconds);
    auto retry_at = steady_clock::time_point{};
    bool complained = false;
    for (;;) {
        std::vector<Json> batch;
        bool stopping;
        {
            std::lock_guard lk(mu_);
            if (steady_clock::now() >= next_heartbeat) {
                emit(worker_event("worker-heartbeat"));
                next_heartbeat = steady_clock::now() + duration<double>(kHeartbeatSeconds);
            }
            stopping = stop_;
            if (stopping) emit(worker_event("worker-offline"));
            batch.swap(events_);
        }
        if (steady_clock::now() >= retry_at) {
            auto report = [&](const Error& e) {
                if (!complained)
                    detail::log(LogLevel::warning, "worker.monitoring_unavailable",
                                fmt::format("monitoring/remote control unavailable ({}); retrying",
                                            e.message));
                complained = true;
                retry_at = steady_clock::now() + seconds(1);
            };
            if (auto ok = channel_->publish_events(batch); !ok) {
                report(ok.error());
            } else if (!stopping) {
                auto req = channel_->next_request(milliseconds(100));
                if (!req) {
                    report(req.error());
                } else {
                    complained = false;
                    if (*req) {
                        std::optional<Json> value;
                        try {
                            value = handle(**req);
                        } catch (const std::exception& e) {
                            // Whatever a request holds, the worker carries on.
                            detail::log(LogLevel::warning, "control.ignored",
                                        fmt::format("ignored a malformed remote-control request "
                                                    "'{}': {}",
                                                    (*req)->method.substr(0, 64), e.what()));
                        }
                        std::int64_t clock;
                        {
                            std::lock_guard lk(mu_);
                            clock = ++clock_;
                        }
                        if (value && !(*req)->reply_routing_key.empty())
                            (void)channel_->reply(**req, *value, clock);
                    }
                }
            }
        }
        if (stopping) return;
        if (steady_clock::now() < retry_at) {
            std::unique_lock lk(mu_);
            cv_.wait_for(lk, milliseconds(100), [&] { return stop_; });
        }
    }
}

}  // namespace conveyor::detail
