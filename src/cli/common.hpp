#pragma once
// What every `conveyor` command shares: the global options, failures in one sentence, the
// configuration and the broker, flag parsing, printing, and stop signals.

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conveyor/broker.hpp"
#include "conveyor/client.hpp"
#include "conveyor/config.hpp"
#include "conveyor/log.hpp"

namespace conveyor {
class Scheduler;
class Worker;
}  // namespace conveyor

namespace conveyor::cli {

/// Options before the command.
struct Global {
    std::string broker;
    std::string config_path;
    bool json = false;
};

/// A command: its flags are registered on the app; `run` carries it out once parsed and
/// returns the exit status.
struct Command {
    CLI::App* app = nullptr;
    std::function<int()> run;
};

/// Log sinks for the library: one line per record on stderr, as text or JSON.
void write_text_log(const LogRecord& record);
void write_json_log(const LogRecord& record);

/// Prints "conveyor: SENTENCE." on stderr and exits with `code` (2: usage or configuration,
/// 1: runtime).
[[noreturn]] void die(const std::string& sentence, int code = 1);

/// The configuration file (--config, else ./conveyor.toml when present, else defaults).
Config load(const Global& g);
/// --broker, else CONVEYOR_BROKER, else the file's `broker`, else sqlite://conveyor.db.
std::string broker_url(const Global& g, const Config& cfg);
/// Opens the broker with the configuration's topology. A long-running command (`wait`) started
/// while the broker cannot be reached for now waits for it with backoff, one line per attempt,
/// until it opens or a stop signal comes; others fail at once.
/// Opens the broker; with `wait`, waits for one that cannot be reached yet (a line per
/// attempt), answering /healthz and /readyz on `http` (when set) with 503 and why meanwhile,
/// so that an orchestrator's probes see a process that waits, not one that is gone.
std::shared_ptr<Broker> open_broker(const std::string& url, const Config& cfg, bool wait = false,
                                    const std::string& http = {});

/// The configuration and its broker, for the short commands.
struct Session {
    Config cfg;
    std::shared_ptr<Broker> broker;
};
Session open_session(const Global& g);

/// A JSON flag: depth-bounded, an array or an object as asked; else one sentence, exit 2.
Json parse_json_flag(const std::string& text, const char* flag, bool want_array);
/// A number of seconds within [lo, hi]; NaN and infinities are refused (CLI11's Range lets
/// NaN through, and a NaN duration is undefined).
CLI::Validator seconds_within(double lo, double hi);
/// "a,b,,c" -> {"a", "b", "c"}.
std::vector<std::string> split_list(const std::string& s);

/// Columns: the first left-aligned, the others right-aligned.
void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows);
/// Prints a task's result as JSON (after waiting up to `wait` seconds when given); exit 3
/// when it is not ready in time.
int print_result(Client& client, const std::string& id, std::optional<double> wait);

/// SIGTERM and SIGINT stop the worker or scheduler given (a second signal exits at once);
/// SIGPIPE is ignored. Null: signals only end waiting for the broker.
void stop_on_signals(Worker* worker, Scheduler* scheduler);
/// Whether a stop signal came.
bool stop_signalled() noexcept;

}  // namespace conveyor::cli
