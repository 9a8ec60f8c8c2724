#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>

#include "core/json_bounds.hpp"
#include "core/time.hpp"
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

/// Exit codes with a meaning for the retry policy (sysexits.h).
constexpr int kExitDoNotRetry = 65;  // EX_DATAERR: the input is wrong; retrying cannot help
constexpr int kExitRetryLater = 75;  // EX_TEMPFAIL: try again later

/// The file `name` runs: itself when it has a slash, else the first executable of that name on
/// PATH (searched here, before the fork: the child may only make system calls). Empty when
/// there is none.
std::string resolve_command(const std::string& name) {
    if (name.find('/') != std::string::npos) return name;
    const char* env = std::getenv("PATH");
    std::string_view dirs = env && *env ? env : "/usr/local/bin:/usr/bin:/bin";
    while (true) {
        auto colon = dirs.find(':');
        std::string dir(dirs.substr(0, colon));
        std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
        struct stat st {};
        if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
            ::access(candidate.c_str(), X_OK) == 0)
            return candidate;
        if (colon == std::string_view::npos) return {};
        dirs.remove_prefix(colon + 1);
    }
}

/// Sent by the kernel to a command's guard when the worker thread that started it dies.
constexpr int kParentDied = SIGUSR1;

/// Starts `path` with a guard between it and the worker: the guard leads a new process group
/// and asks the kernel (PR_SET_PDEATHSIG) to tell it when the worker dies, even by SIGKILL; it
/// then kills the group, so a command never outlives its worker (whose task goes to another
/// worker). The guard exits with the command's status. Only async-signal-safe calls run after
/// fork(), and the guard takes its signals synchronously (rt_sigtimedwait, no handler), so
/// nothing of the worker's runtime runs in it. Returns the guard's pid (the group's id), or -1
/// with errno.
pid_t start_guarded(const char* path, char* const* argv, char* const* envp, int in, int out,
                    int err, int exec_errno_fd) {
    pid_t worker = ::getpid();
    pid_t guard = ::fork();
    if (guard != 0) return guard;

    // The guard. It keeps only the task's pipes (as 0, 1, 2) and the exec-error pipe (3): a
    // copy of another task's pipe, inherited from this multi-threaded worker, would keep that
    // task's stdin from ever reaching its end.
    int keep[4] = {in, out, err, exec_errno_fd};
    for (int& fd : keep) fd = ::fcntl(fd, F_DUPFD, 4);
    for (int i = 0; i < 4; ++i) ::dup2(keep[i], i);
    if (::close_range(4, ~0U, 0) != 0)
        for (int fd = 4; fd < 65536; ++fd) ::close(fd);
    ::fcntl(3, F_SETFD, FD_CLOEXEC);
    ::setpgid(0, 0);
    // Every signal blocked: the worker's death and the command's end are waited for below.
    sigset_t all;
    sigfillset(&all);
    ::sigprocmask(SIG_SETMASK, &all, nullptr);
    ::prctl(PR_SET_PDEATHSIG, kParentDied);
    if (::getppid() != worker) ::kill(0, SIGKILL);  // the worker died before prctl took effect
    pid_t command = ::fork();
    if (command == 0) {
        // The command: the task's pipes (0, 1, 2), default signals, then the program.
        struct sigaction dfl {};
        dfl.sa_handler = SIG_DFL;
        sigemptyset(&dfl.sa_mask);
        for (int sig : {SIGPIPE, SIGTERM, SIGINT, SIGHUP, kParentDied})
            ::sigaction(sig, &dfl, nullptr);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::execve(path, argv, envp);
        int e = errno;
        (void)!::write(3, &e, sizeof e);
        ::_exit(127);
    }
    if (command < 0) {
        int e = errno;
        (void)!::write(3, &e, sizeof e);
        ::_exit(127);
    }
    // Only the command keeps the task's pipes: the worker sees them close when it ends.
    for (int fd = 0; fd < 4; ++fd) ::close(fd);
    sigset_t awaited;
    sigemptyset(&awaited);
    sigaddset(&awaited, kParentDied);
    sigaddset(&awaited, SIGCHLD);
    int status = 0;
    for (;;) {
        siginfo_t info;
        long sig = ::syscall(SYS_rt_sigtimedwait, &awaited, &info, nullptr, _NSIG / 8);
        if (sig == kParentDied) ::kill(0, SIGKILL);  // the group: guard, command and its children
        pid_t done = ::waitpid(command, &status, WNOHANG);
        if (done == command) break;
        if (done < 0 && errno != EINTR) ::_exit(127);
    }
    if (WIFEXITED(status)) ::_exit(WEXITSTATUS(status));
    // Killed: end the same way, so the worker reports the command's signal.
    int sig = WTERMSIG(status);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(sig, &dfl, nullptr);
    sigset_t just;
    sigemptyset(&just);
    sigaddset(&just, sig);
    ::sigprocmask(SIG_UNBLOCK, &just, nullptr);
    ::kill(::getpid(), sig);
    ::_exit(128 + sig);
}

}  // namespace

Json run_exec(const std::vector<std::string>& argv, TaskContext& ctx, HandlerInput input_kind) {
    if (argv.empty()) throw Reject("exec handler has an empty command");
    SigpipeBlock no_sigpipe;
    int in_pipe[2], out_pipe[2], err_pipe[2];
    if (pipe2(in_pipe, O_CLOEXEC) != 0) throw TaskError("OSError", "pipe failed");
    Fd in_r{in_pipe[0]}, in_w{in_pipe[1]};
    if (pipe2(out_pipe, O_CLOEXEC) != 0) throw TaskError("OSError", "pipe failed");
    Fd out_r{out_pipe[0]}, out_w{out_pipe[1]};
    if (pipe2(err_pipe, O_CLOEXEC) != 0) throw TaskError("OSError", "pipe failed");
    Fd err_r{err_pipe[0]}, err_w{err_pipe[1]};

    // The handler's input, made once (its content type goes into the environment).
    std::optional<HandlerBody> body;
    if (input_kind == HandlerInput::body) body = handler_body(ctx.task());
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
    if (body) env_store.push_back("CONVEYOR_CONTENT_TYPE=" + body->content_type);
    std::vector<char*> envp;
    envp.reserve(env_store.size() + 1);
    for (auto& s : env_store) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::vector<std::string> args_store = argv;
    std::vector<char*> args;
    args.reserve(args_store.size() + 1);
    for (auto& s : args_store) args.push_back(s.data());
    args.push_back(nullptr);
    std::string path = resolve_command(argv[0]);
    if (path.empty())
        throw Reject(fmt::format("cannot start '{}': {}", argv[0], std::strerror(ENOENT)));

    int exec_pipe[2];  // the command's execve errno, or EOF once it runs
    if (pipe2(exec_pipe, O_CLOEXEC) != 0) throw TaskError("OSError", "pipe failed");
    Fd exec_r{exec_pipe[0]}, exec_w{exec_pipe[1]};
    pid_t pid = start_guarded(path.c_str(), args.data(), envp.data(), in_r.fd, out_w.fd, err_w.fd,
                              exec_w.fd);
    if (pid < 0)
        throw TaskError("OSError", fmt::format("cannot start '{}': fork failed: {}", argv[0],
                                               std::strerror(errno)));
    exec_w.close();
    int exec_errno = 0;
    ssize_t got;
    while ((got = read(exec_r.fd, &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
    }
    if (got == ssize_t(sizeof exec_errno)) {
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        throw Reject(fmt::format("cannot start '{}': {}", argv[0], std::strerror(exec_errno)));
    }
    in_r.close();
    out_w.close();
    err_w.close();

    std::string input;
    if (body) {
        input = std::move(body->bytes);
    } else {
        input = dump_lossy(task_payload(ctx.task(), ctx.queue()));
        input.push_back('\n');
    }
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
        return output_value(out);
    }
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    std::string why = code >= 0 ? fmt::format("exit status {}", code)
                                : fmt::format("killed by signal {}", WTERMSIG(status));
    // The command may say what failed: a last line {"exc_type": ..., "exc_message": ...} on
    // stderr (or stdout), and whether to retry: exit 65 (EX_DATAERR) never, 75 (EX_TEMPFAIL)
    // after "retry_in" seconds when it says so; any other failure per the retry policy.
    auto typed = typed_failure(err);
    if (!typed) typed = typed_failure(out);
    bool retryable = code != kExitDoNotRetry;
    if (typed) {
        TaskError e(typed->type, typed->message, retryable, typed->module);
        if (code == kExitRetryLater && typed->retry_in) e.retry_after = typed->retry_in;
        throw e;
    }
    // What it printed: stderr's tail, and stdout's (PHP prints its errors there).
    std::string detail = tail(err, 2000);
    std::string said = tail(out, 2000);
    if (!said.empty()) detail += (detail.empty() ? "" : "\n") + said;
    std::string message = detail.empty()
                              ? fmt::format("'{}' failed with {}", argv[0], why)
                              : fmt::format("'{}' failed with {}: {}", argv[0], why, detail);
    throw TaskError("ProcessError", message, retryable);
}

}  // namespace conveyor::detail
