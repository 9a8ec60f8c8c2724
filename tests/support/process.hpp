#pragma once
// Test helpers: temporary directories and child processes with deadlines.

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace testsupport {

/// A fresh directory, removed at the end of the test.
class TempDir {
  public:
    TempDir() {
        std::string tmpl =
            (std::filesystem::temp_directory_path() / "conveyor-test-XXXXXX").string();
        path_ = mkdtemp(tmpl.data());
    }
    ~TempDir() { std::filesystem::remove_all(path_); }
    std::string file(const std::string& name) const { return (path_ / name).string(); }
    const std::filesystem::path& path() const { return path_; }

  private:
    std::filesystem::path path_;
};

inline std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline void write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
}

/// A child process; killed (SIGKILL) in the destructor if still running.
class Process {
  public:
    Process(std::vector<std::string> argv, const std::string& output_file,
            std::vector<std::string> extra_env = {}, const std::string& cwd = {}) {
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, output_file.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                         0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&fa, cwd.c_str());
        std::vector<std::string> env;
        for (char** e = environ; *e; ++e) env.emplace_back(*e);
        for (auto& e : extra_env) env.push_back(e);
        std::vector<char*> envp, args;
        for (auto& e : env) envp.push_back(e.data());
        envp.push_back(nullptr);
        for (auto& a : argv) args.push_back(a.data());
        args.push_back(nullptr);
        if (posix_spawnp(&pid_, args[0], &fa, nullptr, args.data(), envp.data()) != 0) pid_ = -1;
        posix_spawn_file_actions_destroy(&fa);
    }
    Process(const Process&) = delete;
    ~Process() {
        if (pid_ > 0 && !status_) {
            kill(pid_, SIGKILL);
            int st;
            waitpid(pid_, &st, 0);
        }
    }
    pid_t pid() const { return pid_; }
    void signal(int sig) { kill(pid_, sig); }
    /// Exit status (or 128+signal), or nullopt if still running at the deadline.
    std::optional<int> wait(std::chrono::milliseconds timeout) {
        auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!status_) {
            int st = 0;
            pid_t r = waitpid(pid_, &st, WNOHANG);
            if (r == pid_) {
                status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                break;
            }
            if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        return status_;
    }

  private:
    pid_t pid_ = -1;
    std::optional<int> status_;
};

/// Polls `cond` until it holds or the deadline passes.
inline bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (cond()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return cond();
}

/// Runs a command to completion, returning (exit code, stdout+stderr).
inline std::pair<int, std::string> run(
    std::vector<std::string> argv, std::vector<std::string> env = {}, const std::string& cwd = {},
    std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    char tmpl[] = "/tmp/conveyor-out-XXXXXX";
    int fd = mkstemp(tmpl);
    close(fd);
    int code;
    {
        Process p(std::move(argv), tmpl, std::move(env), cwd);
        auto st = p.wait(timeout);
        code = st ? *st : -1;
    }
    std::string out = read_file(tmpl);
    unlink(tmpl);
    return {code, out};
}

/// Lines of `path` that start with `prefix`: whole lines only (a last line without its newline
/// is still being written by another process, and read again next time).
inline std::vector<std::string> lines_with(const std::string& path, const std::string& prefix) {
    std::vector<std::string> out;
    std::string text = read_file(path);
    text.resize(text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1);
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(prefix, 0) == 0) out.push_back(line);
    return out;
}

}  // namespace testsupport
