// `conveyor enqueue` and `conveyor result`: producing tasks and reading their outcome.

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>

#include "cli/commands.hpp"
#include "conveyor/client.hpp"
#include "core/time.hpp"

namespace conveyor::cli {

namespace {

/// `conveyor enqueue` flags.
struct EnqueueFlags {
    std::string task, args = "[]", kwargs = "{}", queue, eta, id;
    std::optional<double> countdown, expires;
    std::optional<int> priority, max_retries;
    std::string exchange, routing_key, key;
    bool raw = false;
    std::string body_file, content_type;
    std::optional<double> wait;
    std::string unique_key;
    std::optional<double> unique_for;
};

int run_enqueue(const Global& g, EnqueueFlags& f) {
    Session s = open_session(g);
    Json args = parse_json_flag(f.args, "--args", true);
    Json kwargs = parse_json_flag(f.kwargs, "--kwargs", false);
    if (!f.body_file.empty()) {
        std::string bytes;
        if (f.body_file == "-") {
            bytes.assign(std::istreambuf_iterator<char>(std::cin), {});
        } else {
            std::ifstream in(f.body_file, std::ios::binary);
            if (!in)
                die(fmt::format("--body-file '{}' cannot be read: {}", f.body_file,
                                std::strerror(errno)),
                    2);
            bytes.assign(std::istreambuf_iterator<char>(in), {});
        }
        args = Json::array({std::move(bytes)});
        f.raw = true;
    }
    EnqueueOptions o;
    o.content_type = f.content_type;
    o.queue = f.queue;
    o.id = f.id;
    o.priority = f.priority;
    o.max_retries = f.max_retries;
    o.exchange = f.exchange;
    o.routing_key = f.routing_key;
    o.ordering_key = f.key;
    o.raw = f.raw;
    o.unique_key = f.unique_key;
    auto now = SystemClock::now();
    // A time the clock cannot hold is refused, not wrapped around into the past.
    auto in_future = [&](std::optional<double> seconds, const char* flag) {
        if (!seconds || !(*seconds >= 0))  // NaN fails too
            die(fmt::format("{} must be a number of seconds from 0", flag), 2);
        double room = std::chrono::duration<double>(detail::kLatestTime - now).count();
        if (*seconds >= room)
            die(fmt::format("{} {} ends after 2262-01-01T00:00:00Z, the latest time Conveyor "
                            "can represent",
                            flag, *seconds),
                2);
        return *detail::seconds_to_ms(*seconds);
    };
    if (f.countdown) o.countdown = in_future(f.countdown, "--countdown");
    if (!f.eta.empty()) {
        auto t = detail::parse_iso8601(f.eta);
        if (!t)
            die(fmt::format("--eta '{}' is not an ISO-8601 time such as 2030-01-01T12:00:00Z",
                            f.eta),
                2);
        if (auto ok = detail::check_time(*t, fmt::format("--eta '{}'", f.eta)); !ok)
            die(ok.error().message, 2);
        o.eta = *t;
    }
    if (f.expires) o.expires = now + in_future(f.expires, "--expires");
    if (f.unique_for) o.unique_for = in_future(f.unique_for, "--unique-for");
    Client client(s.broker, s.cfg);
    auto id = client.enqueue(f.task, std::move(args), std::move(kwargs), o);
    if (!id) die(fmt::format("enqueue failed: {}", id.error().message));
    fmt::print("{}\n", *id);
    if (f.wait) {
        std::fflush(stdout);
        return print_result(client, *id, f.wait);
    }
    return 0;
}

}  // namespace

Command add_enqueue(CLI::App& app, const Global& g) {
    auto f = std::make_shared<EnqueueFlags>();
    auto* enqueue = app.add_subcommand("enqueue", "Enqueue a task and print its id");
    enqueue->add_option("TASK", f->task, "Task name")->required();
    auto* e_args_opt = enqueue->add_option("--args", f->args, "Positional arguments, a JSON array");
    auto* e_kwargs_opt =
        enqueue->add_option("--kwargs", f->kwargs, "Keyword arguments, a JSON object");
    enqueue->add_option("--queue", f->queue, "Queue (default: the task's, else celery)");
    auto* cd = enqueue->add_option("--countdown", f->countdown, "Run after this many seconds");
    auto* eta = enqueue->add_option("--eta", f->eta, "Run at this ISO-8601 time");
    cd->excludes(eta);
    enqueue->add_option("--priority", f->priority, "0..255, higher first")
        ->check(CLI::Range(0, 255));
    enqueue->add_option("--id", f->id, "Task id (default: a new time-ordered UUID, version 7)");
    enqueue->add_option("--max-retries", f->max_retries, "Retry budget for this task")
        ->check(CLI::Range(0, 1000000));
    enqueue->add_option("--expires", f->expires, "Discard if not started within this many seconds");
    auto* exo = enqueue->add_option("--exchange", f->exchange,
                                    "Publish to this exchange (amqp; fan-out) instead of a queue");
    enqueue->add_option("--routing-key", f->routing_key, "Routing key with --exchange")->needs(exo);
    enqueue->add_flag("--raw", f->raw,
                      "Publish the one argument as the plain body (as php-amqplib would)");
    enqueue
        ->add_option("--body-file", f->body_file,
                     "Publish this file's bytes (- for stdin) as the plain body, exactly")
        ->excludes(e_args_opt)
        ->excludes(e_kwargs_opt);
    enqueue->add_option("--content-type", f->content_type,
                        "Content type of a plain body (default: text/plain for UTF-8 text, "
                        "application/octet-stream for other bytes, application/json otherwise)");
    enqueue->add_option("--key", f->key,
                        "Ordering key: tasks with one key run in order (ordered queues)");
    auto* unique = enqueue->add_option(
        "--unique-key", f->unique_key,
        "While a task enqueued with this key waits or runs, enqueue nothing and print its id "
        "(sqlite)");
    enqueue
        ->add_option("--unique-for", f->unique_for,
                     "Hold the unique key this many seconds from now, even once the task ended")
        ->needs(unique)
        ->check(seconds_within(0.0, 31536000.0 * 10));
    enqueue
        ->add_option("--wait", f->wait,
                     "Then wait up to this many seconds for the result and print it as JSON")
        ->check(seconds_within(0.0, 1e7));

    return {enqueue, [&g, f] { return run_enqueue(g, *f); }};
}

Command add_result(CLI::App& app, const Global& g) {
    auto* result = app.add_subcommand("result", "Print a task's state and result as JSON");
    auto id = std::make_shared<std::string>();
    auto wait = std::make_shared<std::optional<double>>();
    result->add_option("ID", *id, "Task id")->required();
    result->add_option("--wait", *wait, "Wait up to this many seconds for the outcome")
        ->check(seconds_within(0.0, 1e7));

    return {result, [&g, id, wait] {
                Session s = open_session(g);
                Client client(s.broker, s.cfg);
                return print_result(client, *id, *wait);
            }};
}

}  // namespace conveyor::cli
