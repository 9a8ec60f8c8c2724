// The Worker's public face: registering handlers, configuration, run/start/stop/wait.
#include "conveyor/worker.hpp"

#include "core/time.hpp"
#include "worker/handlers.hpp"
#include "worker/worker_impl.hpp"

namespace conveyor {

Json task_payload(const TaskMessage& t, const std::string& queue) {
    Json j = {{"id", t.id},           {"task", t.name}, {"args", t.args},      {"kwargs", t.kwargs},
              {"retries", t.retries}, {"queue", queue}, {"root_id", t.root_id}};
    j["parent_id"] = t.parent_id.empty() ? Json() : Json(t.parent_id);
    j["eta"] = t.eta ? Json(detail::format_iso8601(*t.eta)) : Json();
    if (t.body) j["content_type"] = t.content_type;
    return j;
}

Worker::Worker(std::shared_ptr<Broker> broker, WorkerOptions options)
    : impl_(std::make_unique<Impl>(std::move(broker), std::move(options))) {}
Worker::Worker(Worker&&) noexcept = default;
Worker& Worker::operator=(Worker&& other) noexcept {
    if (this != &other) {
        end();
        impl_ = std::move(other.impl_);
    }
    return *this;
}
Worker::~Worker() { end(); }

void Worker::end() noexcept {
    if (!impl_) return;
    impl_->stopping.store(true);
    (void)impl_->life.wait(std::nullopt, "the worker");
    impl_->life.join();
}

void Worker::handle(std::string task, TaskOptions options, Handler fn) {
    impl_->handlers[std::move(task)] = Registration{std::move(fn), options};
}

void Worker::handle(std::string task, Handler fn) {
    TaskOptions o;
    o.retry = impl_->opts.default_retry;
    handle(std::move(task), o, std::move(fn));
}

void Worker::handle_exec(std::string task, std::vector<std::string> argv, TaskOptions options) {
    handle(std::move(task), options,
           [argv = std::move(argv), input = options.input](TaskContext& ctx) {
               return detail::run_exec(argv, ctx, input);
           });
}

void Worker::handle_http(std::string task, std::string url, TaskOptions options) {
    handle(std::move(task), options,
           [url = std::move(url), input = options.input](TaskContext& ctx) {
               return detail::run_http(url, ctx, input);
           });
}

void Worker::configure(const Config& config) {
    impl_->opts.default_retry = config.default_retry;
    for (auto& q : config.queues) impl_->opts.queue_formats.push_back(q);
    for (auto& t : config.tasks) {
        TaskOptions o;
        o.retry = t.retry;
        o.track_started = t.track_started || config.worker.track_started;
        o.input = t.input_body ? HandlerInput::body : HandlerInput::task;
        o.rate_limit = t.rate_limit;
        o.max_concurrency = t.max_concurrency;
        o.limit_key = t.limit_key;
        if (t.timeout) o.timeout = milliseconds(static_cast<long long>(*t.timeout * 1000));
        if (!t.exec.empty())
            handle_exec(t.name, t.exec, o);
        else if (!t.http.empty())
            handle_http(t.name, t.http, o);
        else if (auto it = impl_->handlers.find(t.name); it != impl_->handlers.end())
            it->second.options = o;  // in-process handler registered in code; config sets policy
    }
}

Result<void> Worker::run() {
    Impl* impl = impl_.get();
    return impl->life.run("the worker", [impl] { return impl->run(); });
}
Result<void> Worker::start() {
    Impl* impl = impl_.get();
    return impl->life.start("the worker", [impl] { return impl->run(); });
}
void Worker::stop() noexcept { impl_->stopping.store(true); }
Result<void> Worker::wait(std::optional<std::chrono::milliseconds> timeout) {
    return impl_->life.wait(timeout, "the worker");
}
bool Worker::running() const noexcept { return impl_->life.running(); }

WorkerStats Worker::stats() const noexcept {
    return WorkerStats{impl_->succeeded.load(), impl_->retried.load(), impl_->dead.load(),
                       impl_->released.load(), impl_->running.load()};
}

std::string Worker::metrics() const { return impl_->metrics_text(); }
int Worker::http_port() const noexcept { return impl_->http_port.load(); }

}  // namespace conveyor
