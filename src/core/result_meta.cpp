#include "core/result_meta.hpp"

#include <fmt/format.h>

#include "core/time.hpp"

namespace conveyor::result_meta {

std::string encode(const TaskResult& r, Style style) {
    Json j;
    if (style == Style::rpc) j["task_id"] = r.id;
    j["status"] = to_string(r.state);
    j["result"] = r.result;
    j["traceback"] = r.traceback.empty() ? Json() : Json(r.traceback);
    // Celery's result tuples: ((id, parent), None) for each child.
    j["children"] = Json::array();
    for (auto& id : r.children)
        j["children"].push_back(Json::array({Json::array({id, nullptr}), nullptr}));
    if (style == Style::redis) {
        j["date_done"] =
            r.ready() && r.done_at ? Json(detail::format_iso8601_naive(*r.done_at)) : Json();
        j["retries"] = r.retries;  // as with Celery's result_extended
        j["task_id"] = r.id;
    }
    return j.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
}

Result<TaskResult> decode(std::string_view body) {
    Json j = Json::parse(body, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        return fail(Errc::malformed, "a result body is not a JSON object");
    auto status = j.find("status");
    if (status == j.end() || !status->is_string())
        return fail(Errc::malformed, "a result body has no status");
    TaskResult r;
    if (auto id = j.find("task_id"); id != j.end() && id->is_string())
        r.id = id->get<std::string>();
    auto s = status->get<std::string>();
    if (auto st = parse_task_state(s))
        r.state = *st;
    else if (s == "REJECTED")
        r.state = TaskState::failure;
    else if (s == "IGNORED")
        r.state = TaskState::success;
    else
        r.state = TaskState::pending;
    if (auto v = j.find("result"); v != j.end()) r.result = *v;
    // ((id, parent), None) for a task, ((id, parent), [members]) for a group: the id either way.
    if (auto c = j.find("children"); c != j.end() && c->is_array())
        for (auto& child : *c)
            if (child.is_array() && !child.empty() && child[0].is_array() && !child[0].empty() &&
                child[0][0].is_string())
                r.children.push_back(child[0][0].get<std::string>());
    if (auto tb = j.find("traceback"); tb != j.end() && tb->is_string())
        r.traceback = tb->get<std::string>();
    if (auto n = j.find("retries"); n != j.end() && n->is_number_integer())
        r.retries = n->get<int>();
    if (auto d = j.find("date_done"); d != j.end() && d->is_string())
        r.done_at = detail::parse_iso8601(d->get<std::string>());
    return r;
}

}  // namespace conveyor::result_meta
