// The dashboard's JSON API, /api/v1: the overview, queues, dead letters (list, replay, purge),
// a task's result, schedules (list, pause, resume). Bad input is a 4xx JSON error.
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <limits>
#include <map>

#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/scheduler.hpp"
#include "core/codec.hpp"
#include "core/json_bounds.hpp"
#include "core/time.hpp"
#include "server/dashboard_impl.hpp"

namespace conveyor::server {

namespace {

Json count_or_null(std::int64_t n) { return n < 0 ? Json() : Json(n); }

Json queue_json(const QueueStats& s, bool configured) {
    return Json{{"queue", s.queue},
                {"ready", s.ready},
                {"delayed", count_or_null(s.delayed)},
                {"in_flight", count_or_null(s.in_flight)},
                {"dead", s.dead},
                {"limited", s.limited},
                {"paused", s.paused},
                {"configured", configured}};
}

std::string iso(TimePoint t) {
    return detail::format_iso8601(std::chrono::floor<std::chrono::milliseconds>(t));
}

/// A message's headers as shown: {} where it has none (null).
Json headers_json(const Envelope& e) { return e.headers.is_null() ? Json::object() : e.headers; }

Json dead_json(const DeadLetter& d, const Config& cfg) {
    Json j = {{"id", d.message_id},
              {"queue", d.queue},
              {"reason", d.reason},
              {"dead_at", iso(d.dead_at)}};
    const QueueConfig* q = cfg.find_queue(d.queue);
    Result<TaskMessage> t = q && q->format == QueueFormat::raw
                                ? codec::decode_raw(d.envelope, q->task, d.message_id)
                                : codec::decode(d.envelope);
    if (t) {
        j["task"] = t->name;
        j["args"] = t->args;
        j["kwargs"] = t->kwargs;
        j["retries"] = t->retries;
        if (t->body) j["body"] = *t->body;
    } else {
        j["task"] = nullptr;
        j["body"] = d.envelope.body.substr(0, 4096);
        j["decode_error"] = t.error().message;
    }
    j["headers"] = headers_json(d.envelope);
    return j;
}

/// A task's message as JSON: task, args, kwargs, retries, headers; an undecodable body as text.
void message_json(Json& j, const Envelope& e, const std::string& queue, const std::string& id,
                  const Config& cfg) {
    const QueueConfig* q = cfg.find_queue(queue);
    Result<TaskMessage> t =
        q && q->format == QueueFormat::raw ? codec::decode_raw(e, q->task, id) : codec::decode(e);
    if (t) {
        if (j.value("name", "").empty()) j["name"] = t->name;
        j["args"] = t->args;
        j["kwargs"] = t->kwargs;
        if (t->eta) j["eta"] = iso(*t->eta);
    } else if (e.headers.is_object() && e.headers.contains("argsrepr")) {
        // From Celery events (RabbitMQ's history): the arguments as the worker showed them.
        j["args"] = e.headers.value("argsrepr", "");
        j["kwargs"] = e.headers.value("kwargsrepr", "");
    } else {
        j["body"] = e.body.substr(0, 4096);
        j["decode_error"] = t.error().message;
    }
    j["headers"] = headers_json(e);
}

Json time_or_null(const std::optional<TimePoint>& t) { return t ? Json(iso(*t)) : Json(); }

Json record_json(const TaskRecord& r, const Config& cfg) {
    Json j = {{"id", r.id},
              {"name", r.name},
              {"queue", r.queue},
              {"state", to_string(r.state)},
              {"retries", r.retries},
              {"deliveries", r.deliveries},
              {"enqueued", time_or_null(r.enqueued)},
              {"due", time_or_null(r.due)},
              {"started", time_or_null(r.started)},
              {"finished", time_or_null(r.finished)},
              {"worker", r.worker.empty() ? Json() : Json(r.worker)},
              {"error", r.error.empty() ? Json() : Json(r.error)},
              {"reason", r.reason.empty() ? Json() : Json(r.reason)},
              {"cursor", r.cursor}};
    Json attempts = Json::array();
    for (auto& a : r.attempts)
        attempts.push_back({{"started", iso(a.started)},
                            {"finished", iso(a.finished)},
                            {"worker", a.worker},
                            {"error", a.error}});
    j["attempts"] = std::move(attempts);
    message_json(j, r.envelope, r.queue, r.id, cfg);
    return j;
}

/// The filter of a task list from the request's parameters (state, name, queue, q, since,
/// until); nullopt (and a 400 sent) when one is not valid.
std::optional<TaskQuery> task_filter(const httplib::Request& req, httplib::Response& res) {
    TaskQuery q;
    if (req.has_param("state")) {
        auto st = history_state_from_string(req.get_param_value("state"));
        if (!st) {
            reply_error(res, 400,
                        "'state' must be waiting, running, delayed, succeeded, dead or revoked");
            return std::nullopt;
        }
        q.state = *st;
    }
    q.name = req.get_param_value("name");
    q.queue = req.get_param_value("queue");
    q.search = req.get_param_value("q");
    if (q.search.size() > 200) {
        reply_error(res, 400, "'q' is longer than 200 bytes");
        return std::nullopt;
    }
    for (auto [key, field] : {std::pair{"since", &q.since}, std::pair{"until", &q.until}}) {
        if (!req.has_param(key)) continue;
        auto t = detail::parse_iso8601(req.get_param_value(key));
        if (!t) {
            reply_error(res, 400,
                        fmt::format("'{}' must be a time like 2026-12-03T10:00:00Z", key));
            return std::nullopt;
        }
        *field = *t;
    }
    return q;
}

/// A query parameter as an integer in [lo, hi]; `def` when absent; nullopt (and a 400 sent)
/// when it is not one.
std::optional<std::int64_t> int_param(const httplib::Request& req, httplib::Response& res,
                                      const char* name, std::int64_t def, std::int64_t lo,
                                      std::int64_t hi) {
    if (!req.has_param(name)) return def;
    std::string v = req.get_param_value(name);
    std::int64_t n = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (v.empty() || ec != std::errc() || end != v.data() + v.size() || n < lo || n > hi) {
        reply_error(res, 400, fmt::format("'{}' must be an integer from {} to {}", name, lo, hi));
        return std::nullopt;
    }
    return n;
}

/// A request body as a JSON object (empty body: {}); nullopt (and a 400 sent) otherwise.
std::optional<Json> body_object(const httplib::Request& req, httplib::Response& res) {
    if (req.body.empty()) return Json::object();
    auto j = detail::parse_untrusted(req.body, "the body");
    if (!j || !j->is_object()) {
        reply_error(res, 400, j ? "the body must be a JSON object" : j.error().message);
        return std::nullopt;
    }
    return *j;
}

/// Errors of the broker: not found -> 404, bad input -> 400, the rest -> 503.
void reply_failure(httplib::Response& res, const Error& e) {
    int status = e.code == Errc::not_found ? 404 : e.code == Errc::invalid_argument ? 400 : 503;
    reply_error(res, status, e.message);
}

}  // namespace

std::optional<std::pair<std::unique_ptr<ScheduleStore>, ScheduleStatus>>
Dashboard::Impl::find_schedule(const std::string& name, httplib::Response& res) {
    auto store = broker->schedule_store();
    if (!store) {
        reply_failure(res, store.error());
        return std::nullopt;
    }
    auto all = Scheduler::status(**store, config.schedules);
    if (!all) {
        reply_failure(res, all.error());
        return std::nullopt;
    }
    for (auto& st : *all)
        if (st.spec.name == name) return std::pair{std::move(*store), std::move(st)};
    reply_error(res, 404, fmt::format("no schedule named '{}'", name));
    return std::nullopt;
}

void Dashboard::Impl::install_api(httplib::Server& srv) {
    // All queues: the configured ones and those the broker knows.
    auto queues = [this]() -> Result<std::vector<Json>> {
        auto st = broker->stats();
        if (!st) return std::unexpected(st.error());
        std::map<std::string, std::pair<QueueStats, bool>> all;
        for (auto& q : config.queues) all[q.name] = {QueueStats{q.name, 0, 0, 0, 0}, true};
        for (auto& s : *st) {
            bool configured = all.contains(s.queue);
            all[s.queue] = {s, configured};
        }
        std::vector<Json> out;
        for (auto& [_, v] : all) out.push_back(queue_json(v.first, v.second));
        return out;
    };
    srv.Get("/api/v1/overview", [this, queues](const httplib::Request&, httplib::Response& res) {
        auto qs = queues();
        if (!qs) return reply_failure(res, qs.error());
        Json totals = {{"ready", 0}, {"delayed", 0}, {"in_flight", 0}, {"dead", 0}};
        for (auto& q : *qs)
            for (auto* k : {"ready", "delayed", "in_flight", "dead"})
                if (q[k].is_number())
                    totals[k] = totals[k].get<std::int64_t>() + q[k].get<std::int64_t>();
        reply_json(res, 200,
                   Json{{"broker", broker->url()},
                        {"read_only", opts.read_only},
                        {"history", history_source.empty() ? Json() : Json(history_source)},
                        {"queues", *qs},
                        {"totals", totals},
                        {"time", iso(SystemClock::now())}});
    });
    srv.Get("/api/v1/queues", [queues](const httplib::Request&, httplib::Response& res) {
        auto qs = queues();
        if (!qs) return reply_failure(res, qs.error());
        reply_json(res, 200, Json(*qs));
    });
    // Tasks' limits across the fleet, with what waits on them and runs under them.
    srv.Get("/api/v1/limits", [this](const httplib::Request&, httplib::Response& res) {
        auto all = broker->limits();
        if (!all) return reply_failure(res, all.error());
        Json arr = Json::array();
        for (auto& x : *all) arr.push_back(limit_json(x));
        reply_json(res, 200, arr);
    });
    srv.Get(R"(/api/v1/queues/([^/]+)/dead)",
            [this](const httplib::Request& req, httplib::Response& res) {
                auto limit = int_param(req, res, "limit", 100, 1, 10000);
                if (!limit) return;
                auto dead = broker->dead_letters(req.matches[1].str(), std::size_t(*limit));
                if (!dead) return reply_failure(res, dead.error());
                Json arr = Json::array();
                for (auto& d : *dead) arr.push_back(dead_json(d, config));
                reply_json(res, 200, arr);
            });
    srv.Post(R"(/api/v1/queues/([^/]+)/dead/replay)", [this](const httplib::Request& req,
                                                             httplib::Response& res) {
        auto body = body_object(req, res);
        if (!body) return;
        std::vector<std::string> ids;
        if (auto it = body->find("ids"); it != body->end()) {
            if (!it->is_array() || it->empty() || it->size() > 10000 ||
                !std::all_of(it->begin(), it->end(), [](const Json& v) { return v.is_string(); }))
                return reply_error(res, 400, "'ids' must be a non-empty array of task ids");
            for (auto& v : *it) ids.push_back(v.get<std::string>());
        }
        auto n = broker->replay_dead(req.matches[1].str(), ids);
        if (!n) return reply_failure(res, n.error());
        reply_json(res, 200, Json{{"replayed", *n}});
    });
    srv.Post(R"(/api/v1/queues/([^/]+)/dead/purge)",
             [this](const httplib::Request& req, httplib::Response& res) {
                 auto n = broker->purge_dead(req.matches[1].str());
                 if (!n) return reply_failure(res, n.error());
                 reply_json(res, 200, Json{{"purged", *n}});
             });
    srv.Get("/api/v1/tasks", [this](const httplib::Request& req, httplib::Response& res) {
        if (!history) return reply_error(res, 501, history_error);
        auto filter = task_filter(req, res);
        if (!filter) return;
        TaskQuery q = std::move(*filter);
        auto before = int_param(req, res, "before", 0, 0, std::numeric_limits<std::int64_t>::max());
        if (!before) return;
        auto limit = int_param(req, res, "limit", 50, 1, 1000);
        if (!limit) return;
        q.before = *before;
        q.limit = std::size_t(*limit);
        auto page = history->tasks(q);
        if (!page) return reply_failure(res, page.error());
        Json tasks = Json::array();
        for (auto& r : page->tasks) tasks.push_back(record_json(r, config));
        reply_json(
            res, 200,
            Json{{"tasks", std::move(tasks)}, {"next", page->next ? Json(page->next) : Json()}});
    });
    srv.Get(R"(/api/v1/tasks/([^/]+))",
            [this](const httplib::Request& req, httplib::Response& res) {
                std::string id = req.matches[1].str();
                // The result store and the history answer apart: on RabbitMQ with rpc results
                // only the sender can read a result, while the history still knows the task.
                auto r = broker->result(id);
                Json j;
                if (r) {
                    j = to_json(*r);
                } else {
                    j = {{"id", id},
                         {"state", nullptr},
                         {"result", nullptr},
                         {"result_error", r.error().message}};
                }
                j["history"] = nullptr;
                if (history) {
                    auto rec = history->task(id);
                    if (rec)
                        j["history"] = record_json(*rec, config);
                    else if (rec.error().code != Errc::not_found)
                        return reply_failure(res, rec.error());
                }
                if (!r && j["history"].is_null()) return reply_failure(res, r.error());
                reply_json(res, 200, j);
            });
    // Bulk: every task matching the filter (the list's parameters), at most 100,000 at once.
    srv.Post(R"(/api/v1/tasks/bulk/(retry|revoke|delete))",
             [this](const httplib::Request& req, httplib::Response& res) {
                 if (!history) return reply_error(res, 501, history_error);
                 auto filter = task_filter(req, res);
                 if (!filter) return;
                 std::string what = req.matches[1].str();
                 TaskQuery q = std::move(*filter);
                 q.limit = 1000;
                 std::int64_t done = 0, skipped = 0;
                 for (int pages = 0; pages < 100; ++pages) {
                     auto page = history->tasks(q);
                     if (!page) return reply_failure(res, page.error());
                     for (auto& t : page->tasks) {
                         auto ok = what == "retry"    ? history->retry(t.id)
                                   : what == "revoke" ? history->revoke(t.id)
                                                      : history->remove(t.id);
                         if (ok) {
                             done++;
                         } else if (ok.error().code == Errc::conflict) {
                             skipped++;  // running, or already so
                         } else {
                             return reply_failure(res, ok.error());
                         }
                     }
                     if (!page->next) break;
                     q.before = page->next;
                 }
                 reply_json(res, 200, Json{{"done", done}, {"skipped", skipped}, {"action", what}});
             });
    srv.Post(R"(/api/v1/tasks/([^/]+)/(retry|revoke|delete))", [this](const httplib::Request& req,
                                                                      httplib::Response& res) {
        if (!history) return reply_error(res, 501, history_error);
        std::string id = req.matches[1].str(), what = req.matches[2].str();
        auto ok = what == "retry"    ? history->retry(id)
                  : what == "revoke" ? history->revoke(id)
                                     : history->remove(id);
        if (!ok)
            return ok.error().code == Errc::conflict ? reply_error(res, 409, ok.error().message)
                                                     : reply_failure(res, ok.error());
        reply_json(res, 200, Json{{"id", id}, {"done", what}});
    });
    srv.Get("/api/v1/workers", [this](const httplib::Request&, httplib::Response& res) {
        if (!history) return reply_error(res, 501, history_error);
        auto all = history->workers();
        if (!all) return reply_failure(res, all.error());
        Json arr = Json::array();
        for (auto& w : *all) {
            Json running = Json::array();
            for (auto& t : w.running)
                running.push_back({{"id", t.id},
                                   {"name", t.name},
                                   {"queue", t.queue},
                                   {"since", time_or_null(t.since)}});
            arr.push_back({{"node", w.node},
                           {"online", w.online},
                           {"last_heartbeat", iso(w.seen)},
                           {"info", w.info},
                           {"running", std::move(running)}});
        }
        reply_json(res, 200, arr);
    });
    srv.Get("/api/v1/minutes", [this](const httplib::Request& req, httplib::Response& res) {
        if (!history) return reply_error(res, 501, history_error);
        auto span = int_param(req, res, "minutes", 60, 1, std::int64_t(7) * 24 * 60);
        if (!span) return;
        auto since = SystemClock::now() - std::chrono::minutes(*span);
        auto m = history->minutes(since, req.get_param_value("queue"), req.get_param_value("name"));
        if (!m) return reply_failure(res, m.error());
        Json arr = Json::array();
        for (auto& x : *m)
            arr.push_back({{"minute", iso(x.minute)},
                           {"succeeded", x.succeeded},
                           {"failed", x.failed},
                           {"retried", x.retried},
                           {"dead", x.dead},
                           {"run_seconds", x.run_seconds},
                           {"wait_seconds_avg",
                            x.waited > 0 ? Json(x.wait_seconds / double(x.waited)) : Json()}});
        reply_json(res, 200, arr);
    });
    srv.Post(R"(/api/v1/queues/([^/]+)/(pause|resume))",
             [this](const httplib::Request& req, httplib::Response& res) {
                 std::string queue = req.matches[1].str();
                 bool pause = req.matches[2].str() == "pause";
                 if (auto ok = broker->pause_queue(queue, pause); !ok)
                     return reply_failure(res, ok.error());
                 reply_json(res, 200, Json{{"queue", queue}, {"paused", pause}});
             });
    srv.Get("/api/v1/schedules", [this](const httplib::Request&, httplib::Response& res) {
        auto store = broker->schedule_store();
        if (!store) return reply_failure(res, store.error());
        auto all = Scheduler::status(**store, config.schedules);
        if (!all) return reply_failure(res, all.error());
        Json arr = Json::array();
        for (auto& st : *all) {
            Json j = st.spec.to_json();
            j["source"] = st.source;
            j["last_run"] = st.last_run ? Json(iso(*st.last_run)) : Json();
            j["next_fire"] = st.next_fire && !st.spec.paused ? Json(iso(*st.next_fire)) : Json();
            arr.push_back(std::move(j));
        }
        reply_json(res, 200, arr);
    });
    srv.Post(R"(/api/v1/schedules/([^/]+)/fire)",
             [this](const httplib::Request& req, httplib::Response& res) {
                 std::string name = req.matches[1].str();
                 auto found = find_schedule(name, res);
                 if (!found) return;
                 // One extra run now, as `conveyor enqueue` would send it; the schedule's own fires
                 // go on as before.
                 const ScheduleSpec& spec = found->second.spec;
                 EnqueueOptions o;
                 o.queue = spec.queue;
                 o.priority = spec.priority;
                 Client client(broker, config);
                 auto id = client.enqueue(spec.task, spec.args, spec.kwargs, o);
                 if (!id) return reply_failure(res, id.error());
                 reply_json(res, 200, Json{{"schedule", name}, {"id", *id}});
             });
    srv.Post(R"(/api/v1/schedules/([^/]+)/(pause|resume))",
             [this](const httplib::Request& req, httplib::Response& res) {
                 std::string name = req.matches[1].str();
                 auto found = find_schedule(name, res);
                 if (!found) return;
                 bool pause = req.matches[2].str() == "pause";
                 if (auto ok = found->first->set_paused(name, pause); !ok)
                     return reply_failure(res, ok.error());
                 reply_json(res, 200, Json{{"schedule", name}, {"paused", pause}});
             });
}

}  // namespace conveyor::server
