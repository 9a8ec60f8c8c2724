#pragma once
// `conveyor dashboard`: a web UI and the JSON API behind it (/api/v1/...) over a broker and its
// configuration. Binds 127.0.0.1 unless told otherwise; authentication by a bearer token or
// basic-auth credentials (never from the command line); mutations are POSTs with CSRF
// protection, refused altogether when read-only.

#include <memory>
#include <string>

#include "conveyor/broker.hpp"
#include "conveyor/config.hpp"
#include "core/url.hpp"

namespace conveyor::server {

struct DashboardOptions {
    detail::ListenAddress listen{"127.0.0.1", 9800};
    bool read_only = false;
    std::string token;  ///< API and browser sign-in token; empty: none
    std::string user;   ///< basic-auth user; empty: none
    std::string password;
    /// Where the task history lives when the broker keeps none (RabbitMQ): a local sqlite file
    /// fed by the workers' Celery events (task events on: `conveyor worker -E`, `celery
    /// worker -E`). Empty: no history there.
    std::string history_file = "conveyor-history.db";
};

class Dashboard {
  public:
    Dashboard(std::shared_ptr<Broker> broker, Config config, DashboardOptions options);
    ~Dashboard();
    Dashboard(const Dashboard&) = delete;
    Dashboard& operator=(const Dashboard&) = delete;

    /// Binds and serves on a thread of its own. Errc::invalid_argument when the address cannot
    /// be bound, or is not a loopback address and no authentication is set.
    [[nodiscard]] Result<int> start();
    void stop();
    /// "http://HOST:PORT" once started.
    std::string url() const;

    struct Impl;

  private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace conveyor::server
