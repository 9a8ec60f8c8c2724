#include "server/listener.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <chrono>

namespace conveyor::detail {

void reply_json(httplib::Response& res, int status, const Json& body) {
    res.status = status;
    res.set_content(body.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n",
                    "application/json");
}

void HttpListener::json_errors() {
    server_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return;
        reply_json(res, res.status,
                   Json{{"error", res.status == 404 ? fmt::format("no such path: {}", req.path)
                                                    : fmt::format("HTTP {}", res.status)}});
    });
}

HttpListener::HttpListener() : server_(std::make_unique<httplib::Server>()) {}

HttpListener::~HttpListener() { stop(); }

Result<int> HttpListener::start(const ListenAddress& address, int threads) {
    server_->new_task_queue = [threads] { return new httplib::ThreadPool(std::size_t(threads)); };
    // SO_REUSEADDR only: cpp-httplib's default adds SO_REUSEPORT, which lets a second process
    // bind the same port and take half the requests, where it should be told the port is taken.
    server_->set_socket_options([](socket_t sock) {
        int yes = 1;
        setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    server_->set_read_timeout(5, 0);
    server_->set_write_timeout(5, 0);
    server_->set_keep_alive_max_count(100);
    int port = address.port == 0
                   ? server_->bind_to_any_port(address.host)
                   : (server_->bind_to_port(address.host, address.port) ? address.port : -1);
    if (port <= 0)
        return fail(Errc::invalid_argument,
                    fmt::format("cannot listen on {}:{} (in use, or not an address of this host)",
                                address.host, address.port));
    host_ = address.host;
    port_ = port;
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    // stop() only stops a server that runs: wait until it does (a few microseconds).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!server_->is_running() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    return port;
}

void HttpListener::stop() {
    if (!thread_.joinable()) return;
    server_->stop();
    thread_.join();
}

std::string HttpListener::url() const {
    bool v6 = host_.find(':') != std::string::npos;
    return fmt::format("http://{}{}{}:{}", v6 ? "[" : "", host_, v6 ? "]" : "", port_);
}

}  // namespace conveyor::detail
