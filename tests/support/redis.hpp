#pragma once
// Test helpers: a private redis-server (scripts/redis-server.sh: loopback, a free port).

#include <cstdlib>
#include <string>

#include "support/process.hpp"
#include "support/rabbitmq.hpp"

namespace testsupport {

class RedisServer {
  public:
    RedisServer() { start(); }
    ~RedisServer() { stop(); }
    RedisServer(const RedisServer&) = delete;
    RedisServer& operator=(const RedisServer&) = delete;

    bool start() {
        auto [rc, out] = script("start");
        if (rc != 0) return false;
        url_ = out.substr(0, out.find('\n'));
        return true;
    }
    void stop() { script("stop"); }
    const std::string& url() const { return url_; }
    std::string dir() const { return dir_.file("redis"); }

  private:
    std::pair<int, std::string> script(const std::string& cmd) {
        return run({CONVEYOR_SOURCE_DIR "/scripts/redis-server.sh", cmd, dir_.file("redis")}, {},
                   {}, std::chrono::seconds(30));
    }
    TempDir dir_;
    std::string url_;
};

/// The suite's shared redis-server: the ctest fixture's (CONVEYOR_TEST_SERVERS_DIR/redis-server),
/// or one this process starts for itself when run by hand.
inline const std::string& shared_redis_url() {
    static std::string url = [] {
        if (const char* d = std::getenv("CONVEYOR_TEST_SERVERS_DIR"); d && *d)
            return first_line(std::string(d) + "/redis-server/url");
        static RedisServer* own = new RedisServer();  // lives until exit
        std::atexit([] { own->stop(); });
        return own->url();
    }();
    return url;
}

}  // namespace testsupport
