#include "broker/amqp/amqp_management.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <cctype>
#include <functional>
#include <map>

#include "broker/amqp/amqp_names.hpp"
#include "broker/amqp/delay.hpp"
#include "core/json_bounds.hpp"
#include "core/try.hpp"
#include "core/url.hpp"

namespace conveyor::amqp {

namespace {

std::string encode_path_segment(std::string_view s) {
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
            out += char(c);
        else
            out += fmt::format("%{:02X}", c);
    }
    return out;
}

std::int64_t count(const Json& q, const char* key) {
    auto it = q.find(key);
    return it != q.end() && it->is_number_integer()
               ? std::max<std::int64_t>(0, it->get<std::int64_t>())
               : 0;
}

}  // namespace

Result<std::vector<ManagedQueue>> management_queues(const ConnectionOptions& o) {
    httplib::Client c(o.management);
    c.set_basic_auth(o.user, o.password);
    c.set_connection_timeout(5, 0);
    c.set_read_timeout(5, 0);
    std::string path = fmt::format(
        "/api/queues/{}?columns=name,messages_ready,messages_unacknowledged,exclusive,"
        "auto_delete,arguments",
        encode_path_segment(o.vhost));
    auto r = c.Get(path.c_str());
    if (!r)
        return fail(Errc::unavailable,
                    fmt::format("the management API at {}: {}", detail::redact_url(o.management),
                                httplib::to_string(r.error())));
    if (r->status != 200)
        return fail(r->status == 401 ? Errc::invalid_argument : Errc::unavailable,
                    fmt::format("the management API at {} answered HTTP {}",
                                detail::redact_url(o.management), r->status));
    auto j = detail::parse_untrusted(r->body, "the management API's answer");
    CONVEYOR_TRY(j);
    if (!j->is_array()) return fail(Errc::malformed, "the management API's answer is not a list");
    std::vector<ManagedQueue> out;
    for (auto& q : *j) {
        if (!q.is_object() || !q.contains("name") || !q["name"].is_string()) continue;
        ManagedQueue m;
        m.name = q["name"].get<std::string>();
        m.ready = count(q, "messages_ready");
        m.unacked = count(q, "messages_unacknowledged");
        auto flag = [&](const char* k) {
            auto it = q.find(k);
            return it != q.end() && it->is_boolean() && it->get<bool>();
        };
        m.exclusive = flag("exclusive");
        m.auto_delete = flag("auto_delete");
        if (auto a = q.find("arguments"); a != q.end() && a->is_object())
            if (auto to = a->find("x-dead-letter-routing-key"); to != a->end() && to->is_string())
                m.dead_letter_to = to->get<std::string>();
        out.push_back(std::move(m));
    }
    return out;
}

std::vector<QueueStats> fold_queues(const std::vector<ManagedQueue>& queues,
                                    const std::function<bool(const std::string&)>& partitioned) {
    std::map<std::string, QueueStats> by_name;
    QueueStats delayed;
    delayed.queue = "(delayed, all queues)";
    delayed.in_flight = -1;
    bool any_delay = false;
    auto row = [&](const std::string& name) -> QueueStats& {
        auto& s = by_name[name];
        if (s.queue.empty()) {
            s.queue = name;
            s.delayed = -1;  // in the shared delay levels
        }
        return s;
    };
    for (auto& q : queues) {
        const std::string& n = q.name;
        if (n == kUnroutableQueue) {
            delayed.dead += q.ready + q.unacked;
            any_delay = true;
            continue;
        }
        if (n.starts_with("conveyor.delay.")) {
            delayed.delayed += q.ready + q.unacked;
            any_delay = true;
            continue;
        }
        if (q.exclusive || q.auto_delete || n.starts_with("amq.") || n.ends_with(".pidbox") ||
            n.starts_with("celeryev."))
            continue;
        // Tasks waiting for a concurrency slot (wait_queue): limited, in the queue they go
        // back to.
        if (n.starts_with("conveyor.wait.")) {
            if (!q.dead_letter_to.empty()) row(q.dead_letter_to).limited += q.ready + q.unacked;
            continue;
        }
        if (n.size() > 5 && n.ends_with(".dead")) {
            row(n.substr(0, n.size() - 5)).dead += q.ready + q.unacked;
            continue;
        }
        // An ordered queue's partitions: NAME.pN.
        if (auto dot = n.rfind(".p");
            dot != std::string::npos && dot + 2 < n.size() &&
            n.find_first_not_of("0123456789", dot + 2) == std::string::npos &&
            partitioned(n.substr(0, dot))) {
            auto& s = row(n.substr(0, dot));
            s.ready += q.ready;
            s.in_flight += q.unacked;
            continue;
        }
        auto& s = row(n);
        s.ready += q.ready;
        s.in_flight += q.unacked;
    }
    std::vector<QueueStats> out;
    for (auto& [_, s] : by_name) out.push_back(s);
    if (any_delay) out.push_back(delayed);
    return out;
}

}  // namespace conveyor::amqp
