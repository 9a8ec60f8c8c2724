// A task made into a message to publish.
#include "client/outgoing.hpp"

#include <fmt/format.h>

#include <utility>

#include "core/codec.hpp"
#include "core/json_bounds.hpp"
#include "core/node.hpp"
#include "core/try.hpp"

namespace conveyor::detail {

Result<OutgoingMessage> make_outgoing(TaskMessage t, const Destination& to, TaskForm form) {
    if (t.name.empty()) return fail(Errc::invalid_argument, "task name is empty");
    // `{}` in C++ makes a JSON null: no arguments.
    if (t.args.is_null()) t.args = Json::array();
    if (t.kwargs.is_null()) t.kwargs = Json::object();
    if (!t.args.is_array()) return fail(Errc::invalid_argument, "args must be a JSON array");
    if (!t.kwargs.is_object()) return fail(Errc::invalid_argument, "kwargs must be a JSON object");
    for (auto [value, what] : {std::pair{&t.args, "args"}, std::pair{&t.kwargs, "kwargs"}})
        if (json_depth(*value) > kMaxJsonDepth)
            return fail(Errc::invalid_argument,
                        fmt::format("{} nest deeper than {} levels (workers refuse such tasks)",
                                    what, kMaxJsonDepth));
    if (t.priority < 0 || t.priority > 255)
        return fail(Errc::invalid_argument, "priority must be 0..255");
    if (t.id.empty()) t.id = make_task_id();
    if (t.origin.empty()) {
        static const std::string origin = node_name();
        t.origin = origin;
    }
    OutgoingMessage m{.envelope = Envelope{.headers = nullptr}};  // made below, if at all
    m.task_id = t.id;
    m.queue = to.queue;
    m.exchange = to.exchange;
    m.routing_key = to.routing_key;
    m.ordering_key = to.ordering_key;
    m.not_before = t.eta;
    if (to.raw) {
        auto env = codec::encode_raw(t, m.exchange.empty() ? m.queue : m.exchange);
        CONVEYOR_TRY(env);
        m.envelope = std::move(*env);
    } else if ((form == TaskForm::decoded && codec::as_decoded(t)) || form == TaskForm::task) {
        m.task = std::make_shared<const TaskMessage>(std::move(t));
    } else {
        m.envelope = codec::encode(t);
    }
    return m;
}

}  // namespace conveyor::detail
