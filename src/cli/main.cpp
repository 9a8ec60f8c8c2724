// The `conveyor` command: global options, then one command (see cli/commands.hpp).

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "cli/commands.hpp"
#include "conveyor/log.hpp"
#include "conveyor/version.hpp"

using namespace conveyor;
using namespace conveyor::cli;

int main(int argc, char** argv) {
    CLI::App app{"Conveyor: distributed task scheduling and dispatch"};
    app.set_version_flag("--version", std::string("conveyor ") + conveyor::version());
    app.require_subcommand(1);
    Global g;
    app.add_option("--broker", g.broker,
                   "Broker URL (sqlite://PATH, amqp://USER:PASS@HOST:PORT/VHOST, memory://); "
                   "env CONVEYOR_BROKER");
    app.add_option("--config", g.config_path, "Config file (default ./conveyor.toml when present)");
    app.add_flag("--json", g.json, "JSON output instead of tables");
    std::string log_level = "info", log_format = "text";
    app.add_option("--log-level", log_level, "Lowest level logged: debug, info, warning, error")
        ->check(CLI::IsMember({"debug", "info", "warning", "error"}));
    app.add_option("--log-format", log_format, "Log lines as text or json (one object per line)")
        ->check(CLI::IsMember({"text", "json"}));

    // In the order `conveyor --help` lists them.
    std::vector<Command> commands = {
        add_worker(app, g),   add_enqueue(app, g), add_topology(app, g),  add_result(app, g),
        add_queues(app, g),   add_dlq(app, g),     add_limits(app, g),    add_scheduler(app, g),
        add_schedule(app, g), add_demo(app, g),    add_dashboard(app, g),
    };

    // Name an unknown command plainly (CLI11 would only say that one is required).
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--broker" || a == "--config" || a == "--log-level" || a == "--log-format") {
            ++i;
            continue;
        }
        if (a.starts_with("-")) continue;
        bool known = false;
        for (auto* sub : app.get_subcommands({})) known |= sub->get_name() == a;
        if (!known) die(fmt::format("unknown command '{}' (see 'conveyor --help')", a), 2);
        break;
    }
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::string msg = e.what();
        die(fmt::format("{} (see 'conveyor --help')", msg), 2);
    }

    set_log_sink(log_format == "json" ? LogSink(write_json_log) : LogSink(write_text_log),
                 log_level == "debug"     ? LogLevel::debug
                 : log_level == "warning" ? LogLevel::warning
                 : log_level == "error"   ? LogLevel::error
                                          : LogLevel::info);
    for (auto& c : commands)
        if (c.app->parsed()) return c.run();
    return 0;
}
