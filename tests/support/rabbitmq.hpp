#pragma once
// Test helpers: private RabbitMQ nodes started through scripts/rabbitmq-node.sh (own node name,
// data directory, port mapper and free loopback ports).

#include <cstdlib>
#include <string>

#include "support/process.hpp"

namespace testsupport {

/// A node of its own, for tests that stop, kill or restart the broker.
class RabbitNode {
  public:
    RabbitNode() { start(); }
    /// With the management plugin (management_url()) when `management`.
    explicit RabbitNode(bool management) : management_(management) { start(); }
    ~RabbitNode() { stop(); }
    RabbitNode(const RabbitNode&) = delete;
    RabbitNode& operator=(const RabbitNode&) = delete;

    /// Starts (or restarts, same ports and data) the node; returns false when it did not come up.
    bool start() {
        auto [rc, out] = script("start");
        if (rc != 0) return false;
        if (management_) management_url_ = line_of(dir() + "/management_url");
        url_ = out.substr(0, out.find('\n'));
        return true;
    }
    void stop() { script("stop"); }
    /// SIGKILL, as a crash would.
    void kill() { script("kill"); }
    const std::string& url() const { return url_; }
    /// "http://127.0.0.1:PORT" of its management plugin (empty without one).
    const std::string& management_url() const { return management_url_; }
    /// The node's state directory (url, tls_url, tls/ca.pem, ...).
    std::string dir() const { return dir_.file("node"); }

  private:
    std::pair<int, std::string> script(const std::string& cmd) {
        std::vector<std::string> env;
        if (management_) env.push_back("RABBITMQ_NODE_MANAGEMENT=1");
        return run({CONVEYOR_SOURCE_DIR "/scripts/rabbitmq-node.sh", cmd, dir_.file("node")}, env,
                   {}, std::chrono::seconds(120));
    }
    static std::string line_of(const std::string& path) {
        std::string u = read_file(path);
        if (auto nl = u.find('\n'); nl != std::string::npos) u.resize(nl);
        return u;
    }
    bool management_ = false;
    TempDir dir_;
    std::string url_, management_url_;
};

/// The state directory of the suite's shared node: the one the ctest fixture started
/// (CONVEYOR_TEST_SERVERS_DIR/rabbitmq-node), or one this process starts for itself when run by
/// hand.
inline const std::string& shared_rabbitmq_dir() {
    static std::string dir = [] {
        if (const char* d = std::getenv("CONVEYOR_TEST_SERVERS_DIR"); d && *d)
            return std::string(d) + "/rabbitmq-node";
        static RabbitNode* own = new RabbitNode();  // lives until exit
        std::atexit([] { own->stop(); });
        return own->dir();
    }();
    return dir;
}

inline std::string first_line(const std::string& path) {
    std::string u = read_file(path);
    if (auto nl = u.find('\n'); nl != std::string::npos) u.resize(nl);
    return u;
}

/// The shared node's amqp:// URL.
inline const std::string& shared_rabbitmq_url() {
    static std::string url = first_line(shared_rabbitmq_dir() + "/url");
    return url;
}

/// The shared node's amqps:// URL (TLS listener, the node's own CA as `cacert`).
inline const std::string& shared_rabbitmq_tls_url() {
    static std::string url = first_line(shared_rabbitmq_dir() + "/tls_url");
    return url;
}

/// A name no other test uses, so tests can share one node.
inline std::string unique_name(const std::string& prefix) {
    static int n = 0;
    return prefix + "-" + std::to_string(getpid()) + "-" + std::to_string(++n);
}

}  // namespace testsupport
