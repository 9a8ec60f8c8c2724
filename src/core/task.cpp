#include "conveyor/task.hpp"

#include "core/time.hpp"

namespace conveyor {

const char* to_string(TaskState state) noexcept {
    switch (state) {
        case TaskState::pending:
            return "PENDING";
        case TaskState::started:
            return "STARTED";
        case TaskState::retry:
            return "RETRY";
        case TaskState::success:
            return "SUCCESS";
        case TaskState::failure:
            return "FAILURE";
        case TaskState::revoked:
            return "REVOKED";
    }
    return "PENDING";
}

std::optional<TaskState> parse_task_state(std::string_view text) noexcept {
    for (auto s : {TaskState::pending, TaskState::started, TaskState::retry, TaskState::success,
                   TaskState::failure, TaskState::revoked}) {
        if (text == to_string(s)) return s;
    }
    return std::nullopt;
}

Json to_json(const TaskResult& r) {
    Json j = {
        {"id", r.id}, {"state", to_string(r.state)}, {"result", r.result}, {"retries", r.retries}};
    j["traceback"] = r.traceback.empty() ? Json() : Json(r.traceback);
    j["date_done"] = r.done_at ? Json(detail::format_iso8601(*r.done_at)) : Json();
    j["children"] = r.children;
    return j;
}

}  // namespace conveyor
