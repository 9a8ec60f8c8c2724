#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "worker/handlers.hpp"

extern char** environ;

namespace conveyor::detail {

namespace {

struct Fd {
    int fd = -1;
    ~Fd() { close(); }
    void close() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
};

std::string tail(const std::string& s, std::size_t n) {
    std::string t = s.size() > n ? s.substr(s.size() - n) : s;
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
    return t;
}

// Writing to a command that exited without reading its stdin raises SIGPIPE. The calling thread
// blocks it (see SigpipeBlock), so it stays pending and is consumed here instead of killing the
// worker process.
void drain_sigpipe() {
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
        int sig = 0;
        sigwait(&pipe_set, &sig);
    }
}

struct SigpipeBlock {
    sigset_t old;
    SigpipeBlock() {
        sigset_t pipe_set;
        sigemptyset(&pipe_set);
        sigaddset(&pipe_set, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    }
    ~SigpipeBlock() {
        drain_sigpipe();
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }
};

}  // namespace

Json run_exec(const std::vector<std::string>& argv, TaskContext& ctx) {
    if (argv.empty()) throw Reject("exec handler has an empty command");
    SigpipeBlock no_sigpipe;
    int in_pipe[2], out_pipe[2], err_pipe[2];
    if (pipe2(in_pipe, O_CLOEXEC) != 0) throw TaskError("OSError", "pipe failed");
    Fd in_r{in_pipe[0]}, in_w{in_pipe[1]};
    if (pipe2(out_pipe, O_CLOEXEC) != 0) throw TaskError("OSError", "pipe failed");
    Fd out_r{out_pipe[0]}, out_w{out_pipe[1]};
    if (pipe2(err_pipe, O_CLOEXEC) != 0) throw TaskError("OSError", "pipe failed");
    Fd err_r{err_pipe[0]}, err_w{err_pipe[1]};

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in_r.fd, 0);
    posix_spawn_file_actions_adddup2(&fa, out_w.fd, 1);
    posix_spawn_file_actions_adddup2(&fa, err_w.fd, 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setpgroup(&attr, 0);
    sigset_t defaults;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGINT);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(
        &attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

    std::vector<std::string> env_store;
    for (char** e = environ; *e; ++e) {
        if (std::strncmp(*e, "CONVEYOR_TASK_", 14) != 0 &&
            std::strncmp(*e, "CONVEYOR_ATTEMPT=", 17) != 0)
            env_store.emplace_back(*e);
    }
    env_store.push_back("CONVEYOR_TASK_ID=" + ctx.id());
    env_store.push_back("CONVEYOR_TASK_NAME=" + ctx.name());
    env_store.push_back("CONVEYOR_TASK_QUEUE=" + ctx.queue());
    env_store.push_back(fmt::format("CONVEYOR_ATTEMPT={}", ctx.attempt()));
    std::vector<char*> envp;
    for (auto& s : env_store) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args_store = argv;
    std::vector<char*> args;
    for (auto& s : args_store) args.push_back(s.data());
    args.push_back(nullptr);

    pid_t pid = -1;
    int rc = posix_spawnp(&pid, args[0], &fa, &attr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) throw Reject(fmt::format("cannot start '{}': {}", argv[0], std::strerror(rc)));
    in_r.close();
    out_w.close();
    err_w.close();

    std::string input =
        task_payload(ctx.task(), ctx.queue()).dump(-1, ' ', false, Json::error_handler_t::replace);
    input.push_back('\n');
    std::size_t written = 0;
    fcntl(in_w.fd, F_SETFL, O_NONBLOCK);
    std::string out, err;
    bool killed = false;
    const char* kill_reason = "";
    for (;;) {
        pollfd fds[3];
        int n = 0;
        int idx_in = -1, idx_out = -1, idx_err = -1;
        if (in_w.fd >= 0) {
            idx_in = n;
            fds[n++] = {in_w.fd, POLLOUT, 0};
        }
        if (out_r.fd >= 0) {
            idx_out = n;
            fds[n++] = {out_r.fd, POLLIN, 0};
        }
        if (err_r.fd >= 0) {
            idx_err = n;
            fds[n++] = {err_r.fd, POLLIN, 0};
        }
        if (n == 0) break;
        if (!killed) {
            bool late = ctx.deadline() && std::chrono::steady_clock::now() >= *ctx.deadline();
            if (late || ctx.stop_requested()) {
                kill(-pid, SIGKILL);
                killed = true;
                kill_reason = late ? "time limit" : "stop";
            }
        }
        int pr = poll(fds, nfds_t(n), 50);
        if (pr < 0 && errno != EINTR) break;
        if (pr <= 0) continue;
        char buf[65536];
        if (idx_in >= 0 && (fds[idx_in].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t w = write(in_w.fd, input.data() + written, input.size() - written);
            if (w > 0) written += std::size_t(w);
            if (w < 0 && errno == EPIPE) drain_sigpipe();  // the command does not read stdin
            if (w < 0 && errno != EAGAIN) written = input.size();
            if (written >= input.size()) in_w.close();
        }
        for (auto [idx, fd, sink] :
             {std::tuple{idx_out, &out_r, &out}, std::tuple{idx_err, &err_r, &err}}) {
            if (idx < 0 || !(fds[idx].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t r = read(fd->fd, buf, sizeof buf);
            if (r > 0) {
                if (sink->size() < (64u << 20)) sink->append(buf, std::size_t(r));
            } else if (r == 0 || errno != EAGAIN) {
                fd->close();
            }
        }
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (killed && std::string_view(kill_reason) == "time limit") {
        throw TaskError("TimeLimitExceeded", fmt::format("'{}' killed at the time limit", argv[0]),
                        true, "celery.exceptions");
    }
    if (killed)
        throw TaskError("WorkerShutdown", "killed by worker shutdown", true, "celery.exceptions");
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
        Json parsed = Json::parse(out, nullptr, false);
        if (!parsed.is_discarded()) return parsed;
        return text_value(out);
    }
    std::string why = WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                        : fmt::format("killed by signal {}", WTERMSIG(status));
    std::string detail = tail(err, 2000);
    throw TaskError("ProcessError",
                    detail.empty() ? fmt::format("'{}' failed with {}", argv[0], why)
                                   : fmt::format("'{}' failed with {}: {}", argv[0], why, detail));
}

}  // namespace conveyor::detail
