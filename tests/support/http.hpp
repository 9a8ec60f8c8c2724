#pragma once
// HTTP for tests: GET a path of a listener, find where a process said it listens, read one
// sample of a Prometheus exposition.

#include <httplib.h>

#include <chrono>
#include <cmath>
#include <regex>
#include <sstream>
#include <string>

#include "support/process.hpp"

namespace testsupport {

struct HttpReply {
    int status = 0;  ///< 0: no answer
    std::string content_type;
    std::string body;
    httplib::Headers headers;
    std::string header(const std::string& name) const {
        auto it = headers.find(name);
        return it == headers.end() ? std::string() : it->second;
    }
};

/// Any request: `method` GET or POST, extra headers, a body (POST).
inline HttpReply http_call(const std::string& base, const std::string& method,
                           const std::string& path, const httplib::Headers& headers = {},
                           const std::string& body = {},
                           const std::string& content_type = "application/json") {
    httplib::Client c(base);
    c.set_connection_timeout(5, 0);
    c.set_read_timeout(10, 0);
    auto r = method == "POST" ? c.Post(path.c_str(), headers, body, content_type.c_str())
                              : c.Get(path.c_str(), headers);
    if (!r) return {};
    return {r->status, r->get_header_value("Content-Type"), r->body, r->headers};
}

/// GET `base` + `path` ("http://127.0.0.1:PORT", "/metrics"), with other methods by `method`.
inline HttpReply http_request(const std::string& base, const std::string& path,
                              const std::string& method = "GET") {
    httplib::Client c(base);
    c.set_connection_timeout(5, 0);
    c.set_read_timeout(10, 0);
    auto r = method == "POST" ? c.Post(path.c_str()) : c.Get(path.c_str());
    if (!r) return {};
    return {r->status, r->get_header_value("Content-Type"), r->body, r->headers};
}

/// GETs `base` + `path` until it answers `status` or `timeout` has passed; the last answer
/// either way.
inline HttpReply await_status(const std::string& base, const std::string& path, int status,
                              std::chrono::milliseconds timeout) {
    HttpReply r;
    eventually(
        [&] {
            r = http_request(base, path);
            return r.status == status;
        },
        timeout);
    return r;
}

/// The "http://HOST:PORT" a process logged it serves on (the listener's "serving ... on URL"
/// line); empty when it did not within `timeout`.
inline std::string served_url(const std::string& log, std::chrono::milliseconds timeout) {
    std::string url;
    static const std::regex re(R"((?:serving [^\n]* on|dashboard on) (http://[0-9.]+:[0-9]+))");
    eventually(
        [&] {
            std::smatch m;
            std::string text = read_file(log);
            if (!std::regex_search(text, m, re)) return false;
            url = m[1];
            return true;
        },
        timeout);
    return url;
}

/// The value of the sample written exactly as `series` (`name{label="v",...}` or `name`);
/// NaN when there is none.
inline double sample(const std::string& exposition, const std::string& series) {
    std::istringstream in(exposition);
    for (std::string line; std::getline(in, line);) {
        if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
            line[series.size()] == ' ')
            return std::stod(line.substr(series.size() + 1));
    }
    return std::nan("");
}

}  // namespace testsupport
