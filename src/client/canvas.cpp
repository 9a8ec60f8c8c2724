#include "client/canvas.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "client/outgoing.hpp"
#include "core/codec.hpp"
#include "core/time.hpp"
#include "core/try.hpp"

namespace conveyor::canvas {

namespace {

const Json& field(const Json& o, const char* key) {
    static const Json null;
    if (!o.is_object()) return null;
    auto it = o.find(key);
    return it == o.end() ? null : *it;
}

std::string string_of(const Json& o, const char* key) {
    const Json& v = field(o, key);
    return v.is_string() ? v.get<std::string>() : std::string();
}

bool non_empty_array(const Json& v) { return v.is_array() && !v.empty(); }

Json exception(const std::string& type, const std::string& message) {
    return Json{{"exc_type", type},
                {"exc_message", Json::array({message})},
                {"exc_module", "celery.exceptions"}};
}

/// One plain task of a workflow.
Result<void> apply_task(const Json& sig, const std::optional<Json>& prepend,
                        const TaskMessage* parent, const Context& ctx, const Json& chain_rest,
                        std::vector<OutgoingMessage>& out) {
    const Json& opts = field(sig, "options");
    TaskMessage t;
    t.name = string_of(sig, "task");
    if (t.name.empty()) return fail(Errc::malformed, "a workflow signature has no task name");
    t.args = field(sig, "args").is_array() ? field(sig, "args") : Json::array();
    t.kwargs = field(sig, "kwargs").is_object() ? field(sig, "kwargs") : Json::object();
    bool immutable = field(sig, "immutable").is_boolean() && field(sig, "immutable").get<bool>();
    if (prepend && !immutable) t.args.insert(t.args.begin(), *prepend);
    t.id = string_of(opts, "task_id");
    if (t.id.empty()) t.id = make_task_id();
    t.reply_to = string_of(opts, "reply_to");
    if (t.reply_to.empty()) t.reply_to = ctx.reply_to;
    t.group = string_of(opts, "group_id");
    if (const Json& gi = field(opts, "group_index"); gi.is_number_integer())
        t.group_index = int(std::clamp<std::int64_t>(gi.get<std::int64_t>(), 0, 1000000));
    if (const Json& p = field(opts, "priority"); p.is_number_integer())
        t.priority = int(std::clamp<std::int64_t>(p.get<std::int64_t>(), 0, 255));
    if (parent) {
        t.parent_id = parent->id;
        t.root_id = parent->root_id.empty() ? parent->id : parent->root_id;
    } else {
        t.root_id = t.id;
    }
    Json embed = Json::object();
    embed["callbacks"] = non_empty_array(field(opts, "link")) ? field(opts, "link") : Json();
    embed["errbacks"] =
        non_empty_array(field(opts, "link_error")) ? field(opts, "link_error") : Json();
    embed["chain"] = chain_rest.is_array() ? chain_rest : Json();
    embed["chord"] = field(opts, "chord").is_object() ? field(opts, "chord") : Json();
    t.embed = std::move(embed);
    detail::Destination to;
    to.queue = string_of(opts, "queue");
    if (to.queue.empty() && ctx.queue_for) to.queue = ctx.queue_for(t.name);
    if (to.queue.empty()) to.queue = ctx.fallback_queue;
    if (field(opts, "countdown").is_number()) {
        auto ms = detail::seconds_to_ms(field(opts, "countdown").get<double>());
        if (!ms) return fail(Errc::malformed, "a workflow signature's countdown is not a number");
        t.eta = detail::add_clamped(SystemClock::now(), *ms);
    } else if (field(opts, "eta").is_string()) {
        t.eta = detail::parse_iso8601(field(opts, "eta").get<std::string>());
    }
    auto m = detail::make_outgoing(std::move(t), to);
    CONVEYOR_TRY(m);
    out.push_back(std::move(*m));
    return {};
}

/// A signature's member tasks (chain, group: kwargs.tasks; a group may carry a list).
Json member_tasks(const Json& sig) {
    const Json& kw = field(sig, "kwargs");
    const Json& tasks = field(kw, "tasks");
    if (tasks.is_array()) return tasks;
    if (tasks.is_object() && field(tasks, "kwargs").is_object())  // a group given as signature
        return member_tasks(tasks);
    return Json::array();
}

/// Copies a signature and sets some of its options.
Result<Json> with_options(Json sig, const Json& extra) {
    if (!sig.is_object())
        return fail(Errc::malformed, fmt::format("a workflow member is not a signature (an "
                                                 "object) but {}",
                                                 sig.type_name()));
    if (!sig["options"].is_object()) sig["options"] = Json::object();
    for (auto& [k, v] : extra.items()) sig["options"][k] = v;
    return sig;
}

}  // namespace

Json signature(const std::string& task, Json args, Json kwargs, Json options, bool immutable) {
    return Json{{"task", task},
                {"args", std::move(args)},
                {"kwargs", std::move(kwargs)},
                {"options", std::move(options)},
                {"subtask_type", nullptr},
                {"immutable", immutable}};
}

Result<void> apply(ResultStore& store, const Json& sig, const std::optional<Json>& prepend,
                   const TaskMessage* parent, const Context& ctx,
                   std::vector<OutgoingMessage>& out) {
    if (!sig.is_object())
        return fail(Errc::malformed,
                    fmt::format("a workflow signature is not an object but {}", sig.type_name()));
    std::string type = string_of(sig, "subtask_type");
    if (type.empty()) return apply_task(sig, prepend, parent, ctx, Json(), out);
    if (type == "chain") {
        Json tasks = member_tasks(sig);
        if (tasks.empty()) return {};
        // The rest travels reversed: the next link is the last element.
        Json rest = Json::array();
        for (std::size_t i = tasks.size(); i-- > 1;) rest.push_back(tasks[i]);
        const Json& first = tasks[0];
        if (!string_of(first, "subtask_type").empty()) {
            if (!rest.empty())
                return fail(Errc::malformed,
                            "a chain that starts with a nested workflow is not supported");
            return apply(store, first, prepend, parent, ctx, out);
        }
        return apply_task(first, prepend, parent, ctx, rest, out);
    }
    if (type == "group") {
        std::string gid = string_of(field(sig, "options"), "task_id");
        if (gid.empty()) gid = make_task_id();
        for (auto& member : member_tasks(sig)) {
            auto m = with_options(member, {{"group_id", gid}});
            CONVEYOR_TRY(m);
            CONVEYOR_TRY(apply(store, *m, prepend, parent, ctx, out));
        }
        return {};
    }
    if (type == "chord") {
        const Json& kw = field(sig, "kwargs");
        Json header = field(kw, "header");
        Json members = header.is_array() ? header : member_tasks(header);
        const Json& body = field(kw, "body");
        std::string gid = string_of(field(header, "options"), "task_id");
        if (gid.empty()) gid = make_task_id();
        CONVEYOR_TRY(store.begin_chord(gid, members.size()));
        for (std::size_t i = 0; i < members.size(); ++i) {
            Json extra = {{"group_id", gid}, {"group_index", int(i)}, {"chord", body}};
            auto m = with_options(members[i], extra);
            CONVEYOR_TRY(m);
            CONVEYOR_TRY(apply(store, *m, prepend, parent, ctx, out));
        }
        return {};
    }
    return fail(Errc::malformed, fmt::format("unknown workflow signature type '{}'", type));
}

bool has_followers(const TaskMessage& t) {
    return non_empty_array(field(t.embed, "callbacks")) ||
           non_empty_array(field(t.embed, "errbacks")) ||
           non_empty_array(field(t.embed, "chain")) || field(t.embed, "chord").is_object();
}

namespace {

/// A header task finished: the chord body runs when it was the last part.
Result<void> chord_part(ResultStore& store, const TaskMessage& t, const TaskResult& part,
                        const Context& ctx, std::vector<OutgoingMessage>& out,
                        std::vector<TaskResult>& results) {
    const Json& body = field(t.embed, "chord");
    if (!body.is_object() || t.group.empty()) return {};
    auto done = store.chord_part_done(t.group, t.group_index.value_or(0), part);
    CONVEYOR_TRY(done);
    if (!done->complete) return {};
    Json values = Json::array();
    for (auto& p : done->parts) {
        if (p.state != TaskState::success) {
            // Celery's ChordError: the body fails without running.
            TaskResult r;
            r.id = string_of(field(body, "options"), "task_id");
            r.state = TaskState::failure;
            std::string what =
                p.result.is_object()
                    ? (string_of(p.result, "exc_type").empty() ? std::string("error")
                                                               : string_of(p.result, "exc_type")) +
                          "(" + codec::value_repr(field(p.result, "exc_message")) + ")"
                    : codec::value_repr(p.result);
            r.result = exception("ChordError", fmt::format("Dependency {} raised {}", p.id, what));
            r.done_at = SystemClock::now();
            if (!r.id.empty()) results.push_back(std::move(r));
            return {};
        }
        values.push_back(p.result);
    }
    return apply(store, body, values, &t, ctx, out);
}

}  // namespace

Result<void> on_success(ResultStore& store, const TaskMessage& t, const Json& result,
                        const Context& ctx, std::vector<OutgoingMessage>& out,
                        std::vector<TaskResult>& results, std::vector<std::string>* children) {
    const std::size_t before = out.size();
    if (const Json& cbs = field(t.embed, "callbacks"); cbs.is_array())
        for (auto& cb : cbs) CONVEYOR_TRY(apply(store, cb, result, &t, ctx, out));
    if (const Json& chain = field(t.embed, "chain"); non_empty_array(chain)) {
        Json rest = chain;
        Json next = rest.back();
        rest.erase(rest.size() - 1);
        if (!next.is_object())
            return fail(Errc::malformed,
                        fmt::format("a chain link is not a signature (an object) but {}",
                                    next.type_name()));
        if (string_of(next, "subtask_type").empty()) {
            CONVEYOR_TRY(apply_task(next, result, &t, ctx, rest, out));
        } else {
            // A nested workflow as a link: it gets the rest of the chain as its callback is
            // not expressible here, so it must be the last link.
            if (!rest.empty())
                return fail(Errc::malformed,
                            "a nested workflow in the middle of a chain is not supported");
            CONVEYOR_TRY(apply(store, next, result, &t, ctx, out));
        }
    }
    if (children)
        for (std::size_t i = before; i < out.size(); ++i) children->push_back(out[i].task_id);
    TaskResult part;
    part.id = t.id;
    part.state = TaskState::success;
    part.result = result;
    return chord_part(store, t, part, ctx, out, results);
}

Result<void> on_failure(ResultStore& store, const TaskMessage& t, const TaskResult& failure,
                        const Context& ctx, std::vector<OutgoingMessage>& out,
                        std::vector<TaskResult>& results) {
    if (const Json& ebs = field(t.embed, "errbacks"); ebs.is_array())
        for (auto& eb : ebs) {
            // One-argument errbacks: called with the failed task's id. (Celery runs the
            // three-argument kind inside the Python worker; they cannot run elsewhere.)
            if (!eb.is_object())
                return fail(Errc::malformed,
                            fmt::format("an errback is not a signature (an object) but {}",
                                        eb.type_name()));
            Json sig = eb;
            sig["immutable"] = true;
            Json args = field(eb, "args").is_array() ? field(eb, "args") : Json::array();
            args.insert(args.begin(), t.id);
            sig["args"] = args;
            CONVEYOR_TRY(apply(store, sig, std::nullopt, &t, ctx, out));
        }
    if (const Json& chain = field(t.embed, "chain"); chain.is_array())
        for (auto& link : chain) {
            std::string id = string_of(field(link, "options"), "task_id");
            if (id.empty()) continue;
            TaskResult r = failure;
            r.id = id;
            results.push_back(std::move(r));
        }
    TaskResult part = failure;
    part.id = t.id;
    return chord_part(store, t, part, ctx, out, results);
}

}  // namespace conveyor::canvas
