// Who may use the dashboard: a bearer token (API clients; browsers sign in with it once and
// get a session cookie), basic-auth credentials, or nobody when neither is set (loopback only).
// Browsers' POSTs need the CSRF cookie echoed in a header and this origin.
#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "server/dashboard_impl.hpp"

namespace conveyor::server {

namespace {

bool same(std::string_view a, std::string_view b) {
    return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string base64(std::string_view in) {
    std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(in.data()), int(in.size()));
    out.resize(std::size_t(n));
    return out;
}

/// Paths anyone may fetch: the sign-in page and what it needs.
bool open_path(const std::string& path) {
    return path == "/login" || path == "/assets/app.css" || path == "/assets/login.js";
}

}  // namespace

Dashboard::Impl::Access Dashboard::Impl::access(const httplib::Request& req) {
    std::string auth = req.get_header_value("Authorization");
    if (!opts.token.empty()) {
        if (auth.starts_with("Bearer ") && same(auth.substr(7), opts.token)) return Access::bearer;
        std::string sid = cookie(req, "conveyor_session");
        std::lock_guard lk(mu);
        if (!sid.empty() && sessions.contains(sid)) return Access::browser;
    }
    if (!opts.user.empty()) {
        if (same(auth, "Basic " + base64(opts.user + ":" + opts.password))) return Access::browser;
    }
    if (opts.token.empty() && opts.user.empty()) return Access::browser;
    return Access::denied;
}

bool Dashboard::Impl::csrf_ok(const httplib::Request& req) {
    std::string expected = cookie(req, "conveyor_csrf");
    if (expected.empty() || !same(req.get_header_value("X-Conveyor-CSRF"), expected)) return false;
    if (req.has_header("Origin")) {
        std::string origin = req.get_header_value("Origin");
        if (origin != "http://" + req.get_header_value("Host")) return false;
    }
    return true;
}

std::string Dashboard::Impl::new_session() {
    std::string sid = random_token();
    std::lock_guard lk(mu);
    if (sessions.size() > 10000) sessions.erase(sessions.begin());
    sessions.insert(sid);
    return sid;
}

void Dashboard::Impl::install_auth(httplib::Server& srv) {
    srv.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
        using R = httplib::Server::HandlerResponse;
        if (open_path(req.path)) return R::Unhandled;
        auto who = access(req);
        if (who == Access::denied) {
            if (!opts.token.empty() && req.method == "GET" && !req.path.starts_with("/api/")) {
                res.status = 303;  // a browser: to the sign-in page
                res.set_header("Location", "/login");
                return R::Handled;
            }
            if (!opts.user.empty())
                res.set_header("WWW-Authenticate", R"(Basic realm="conveyor", charset="UTF-8")");
            reply_error(res, 401, "authentication required");
            return R::Handled;
        }
        if (req.method != "GET" && req.method != "HEAD") {
            if (opts.read_only) {
                reply_error(res, 403, "this dashboard is read-only");
                return R::Handled;
            }
            if (who == Access::browser && !csrf_ok(req)) {
                reply_error(res, 403,
                            "missing or wrong CSRF token (send the conveyor_csrf cookie's value "
                            "in X-Conveyor-CSRF)");
                return R::Handled;
            }
        }
        return R::Unhandled;
    });
    srv.Get("/login", [this](const httplib::Request&, httplib::Response& res) {
        if (opts.token.empty()) {
            res.status = 303;
            res.set_header("Location", "/");
            return;
        }
        const Asset* page = find_asset("/login.html");
        res.set_content(std::string(page->body), std::string(page->content_type));
    });
    srv.Post("/login", [this](const httplib::Request& req, httplib::Response& res) {
        if (opts.token.empty() || !req.has_param("token") ||
            !same(req.get_param_value("token"), opts.token)) {
            res.status = 303;
            res.set_header("Location", "/login?failed=1");
            return;
        }
        res.status = 303;
        res.set_header("Set-Cookie", fmt::format("conveyor_session={}; Path=/; HttpOnly; "
                                                 "SameSite=Strict",
                                                 new_session()));
        res.set_header("Location", "/");
    });
}

}  // namespace conveyor::server
