#pragma once
// The commands of `conveyor`, one group per file: each registers its flags on the app and
// returns how to run it.

#include "cli/common.hpp"

namespace conveyor::cli {

Command add_worker(CLI::App& app, const Global& g);     // run_commands.cpp
Command add_scheduler(CLI::App& app, const Global& g);  // run_commands.cpp
Command add_enqueue(CLI::App& app, const Global& g);    // task_commands.cpp
Command add_result(CLI::App& app, const Global& g);     // task_commands.cpp
Command add_schedule(CLI::App& app, const Global& g);   // schedule_commands.cpp
Command add_topology(CLI::App& app, const Global& g);   // admin_commands.cpp
Command add_queues(CLI::App& app, const Global& g);     // admin_commands.cpp
Command add_dlq(CLI::App& app, const Global& g);        // admin_commands.cpp
Command add_limits(CLI::App& app, const Global& g);     // admin_commands.cpp
Command add_demo(CLI::App& app, const Global& g);       // demo.cpp
Command add_dashboard(CLI::App& app, const Global& g);  // dashboard_command.cpp

}  // namespace conveyor::cli
