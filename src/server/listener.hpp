#pragma once
// An HTTP listener on a thread of its own (cpp-httplib), for /metrics, health checks and the
// dashboard. Binds 127.0.0.1 unless an address says otherwise.

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "conveyor/error.hpp"
#include "conveyor/task.hpp"
#include "core/url.hpp"

namespace httplib {
class Server;
struct Response;
}  // namespace httplib

namespace conveyor::detail {

/// Sets `status` and `body` as compact JSON (invalid UTF-8 replaced).
void reply_json(httplib::Response& res, int status, const Json& body);

class HttpListener {
  public:
    HttpListener();
    ~HttpListener();
    HttpListener(const HttpListener&) = delete;
    HttpListener& operator=(const HttpListener&) = delete;

    /// Routes go here before start().
    httplib::Server& server() { return *server_; }
    /// Answers unknown paths and other errors without a body with {"error": "..."}.
    void json_errors();
    /// Binds (Errc::invalid_argument naming the address when it cannot) and serves on a thread
    /// with `threads` request threads. Returns the port bound.
    [[nodiscard]] Result<int> start(const ListenAddress& address, int threads = 2);
    void stop();
    int port() const { return port_; }
    /// "http://HOST:PORT".
    std::string url() const;

  private:
    std::unique_ptr<httplib::Server> server_;
    std::thread thread_;
    std::string host_;
    int port_ = 0;
};

}  // namespace conveyor::detail
