// `conveyor schedule list|add|remove|pause|resume`.

#include <fmt/format.h>

#include <chrono>
#include <memory>

#include "cli/commands.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/scheduler.hpp"
#include "core/json_bounds.hpp"
#include "core/time.hpp"

namespace conveyor::cli {

namespace {

/// `conveyor schedule` flags and which subcommand was given.
struct ScheduleFlags {
    ScheduleSpec spec;
    std::string args = "[]", kwargs = "{}";
    std::optional<double> every;
    std::string name;
    CLI::App *slist = nullptr, *sadd = nullptr, *sremove = nullptr, *spause = nullptr,
             *sresume = nullptr;
};

std::string when_of(const ScheduleSpec& s) {
    if (s.every) return fmt::format("every {}s", *s.every);
    return s.timezone == "UTC" ? s.cron : fmt::format("{} ({})", s.cron, s.timezone);
}

int run_schedule(const Global& g, ScheduleFlags& f) {
    Session s = open_session(g);
    auto store = s.broker->schedule_store();
    if (!store) die(store.error().message, 2);
    auto known = [&](const std::string& name) {
        auto all = Scheduler::status(**store, s.cfg.schedules);
        if (!all) die(all.error().message);
        for (auto& st : *all)
            if (st.spec.name == name) return std::optional<ScheduleStatus>(st);
        return std::optional<ScheduleStatus>();
    };
    if (f.slist->parsed()) {
        auto all = Scheduler::status(**store, s.cfg.schedules);
        if (!all) die(all.error().message);
        auto when = [](const std::optional<TimePoint>& t) {
            return t ? detail::format_iso8601(std::chrono::floor<std::chrono::seconds>(*t))
                     : std::string("-");
        };
        if (g.json) {
            Json arr = Json::array();
            for (auto& st : *all) {
                Json j = st.spec.to_json();
                j["source"] = st.source;
                j["last_run"] = st.last_run ? Json(when(st.last_run)) : Json();
                j["next_fire"] = st.next_fire ? Json(when(st.next_fire)) : Json();
                arr.push_back(std::move(j));
            }
            fmt::print("{}\n", detail::dump_lossy(arr));
        } else {
            std::vector<std::vector<std::string>> rows;
            for (auto& st : *all)
                rows.push_back({st.spec.name, st.spec.task, when_of(st.spec),
                                st.spec.paused ? "paused" : "active", when(st.last_run),
                                st.spec.paused ? "-" : when(st.next_fire), st.source});
            print_table({"SCHEDULE", "TASK", "WHEN", "STATE", "LAST RUN", "NEXT", "FROM"}, rows);
        }
        return 0;
    }
    if (f.sadd->parsed()) {
        f.spec.args = parse_json_flag(f.args, "--args", true);
        f.spec.kwargs = parse_json_flag(f.kwargs, "--kwargs", false);
        f.spec.every = f.every;
        if (auto ok = f.spec.validate(); !ok) die(ok.error().message, 2);
        for (auto& c : s.cfg.schedules)
            if (c.name == f.spec.name)
                die(fmt::format("schedule '{}' is in the configuration; change it there",
                                f.spec.name),
                    2);
        if (auto ok = (*store)->add(f.spec.to_json()); !ok) die(ok.error().message);
        auto st = known(f.spec.name);
        fmt::print(
            "schedule '{}' added; next fire {}\n", f.spec.name,
            st && st->next_fire
                ? detail::format_iso8601(std::chrono::floor<std::chrono::seconds>(*st->next_fire))
                : "-");
        return 0;
    }
    if (!known(f.name)) die(fmt::format("no schedule named '{}'", f.name), 2);
    if (f.sremove->parsed()) {
        for (auto& c : s.cfg.schedules)
            if (c.name == f.name)
                die(fmt::format("schedule '{}' is in the configuration; remove it there, or "
                                "pause it",
                                f.name),
                    2);
        if (auto ok = (*store)->remove(f.name); !ok) die(ok.error().message);
        fmt::print("schedule '{}' removed\n", f.name);
        return 0;
    }
    bool pause = f.spause->parsed();
    if (auto ok = (*store)->set_paused(f.name, pause); !ok) die(ok.error().message);
    fmt::print("schedule '{}' {}\n", f.name, pause ? "paused" : "resumed");
    return 0;
}

}  // namespace

Command add_schedule(CLI::App& app, const Global& g) {
    auto f = std::make_shared<ScheduleFlags>();
    auto* schedule = app.add_subcommand("schedule", "Schedules: list, add, remove, pause, resume");
    schedule->require_subcommand(1);
    f->slist = schedule->add_subcommand("list", "Schedules with their last and next fires");
    auto* sadd = f->sadd = schedule->add_subcommand("add", "Add (or replace) a schedule");
    sadd->add_option("NAME", f->spec.name, "Schedule name")->required();
    sadd->add_option("TASK", f->spec.task, "Task to fire")->required();
    auto* sa_cron = sadd->add_option("--cron", f->spec.cron, "Cron expression (5 or 6 fields)");
    auto* sa_ev = sadd->add_option("--every", f->every, "Or: every this many seconds");
    sa_cron->excludes(sa_ev);
    sadd->add_option("--timezone", f->spec.timezone, "IANA time zone of the cron expression");
    sadd->add_option("--args", f->args, "Positional arguments, a JSON array");
    sadd->add_option("--kwargs", f->kwargs, "Keyword arguments, a JSON object");
    sadd->add_option("--queue", f->spec.queue, "Queue (default: the task's)");
    sadd->add_option("--catch-up", f->spec.catch_up, "Missed fires: skip, once or all");
    sadd->add_option("--overlap", f->spec.overlap, "allow, or skip while the last run runs");
    auto* sremove = f->sremove =
        schedule->add_subcommand("remove", "Remove a schedule added from the CLI");
    sremove->add_option("NAME", f->name, "Schedule name")->required();
    auto* spause = f->spause = schedule->add_subcommand("pause", "Stop firing a schedule");
    spause->add_option("NAME", f->name, "Schedule name")->required();
    auto* sresume = f->sresume = schedule->add_subcommand("resume", "Fire a paused schedule again");
    sresume->add_option("NAME", f->name, "Schedule name")->required();

    return {schedule, [&g, f] { return run_schedule(g, *f); }};
}

}  // namespace conveyor::cli
