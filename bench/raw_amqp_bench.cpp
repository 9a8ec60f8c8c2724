// The raw client's limit on the same broker: rabbitmq-c alone, doing what Conveyor does for a
// task: persistent publishes with pipelined confirms (window 2,048), then consuming them with
// manual acks (prefetch 1,000, one multiple-ack per 100). Prints "enqueue/s end-to-end/s
// enqueue-CPU-µs-per-task consume-CPU-µs-per-task".
//
// The message is the one Conveyor sends for a no-op task: Celery protocol v2, its headers
// (Celery's set less those that would be null), properties and 3-element JSON body, built by
// hand here. With `bare` it is a
// 120-byte body without headers or other properties instead: what RabbitMQ costs without the
// work of reading a task's headers.
// usage: bench_raw_amqp HOST PORT N [bare | latency RATE SECONDS]
//
// With `latency RATE SECONDS` instead of `bare`: the floor under Conveyor's enqueue-to-start
// latency. A consumer (its own connection and thread, manual acks, prefetch 1,000) reads each
// message as it comes while this thread publishes RATE messages a second for SECONDS as the
// latency benchmark's client does: every millisecond the messages due, persistent, and waits
// for their confirms; each body carries its send time. Prints "p50-µs p99-µs" from send to
// receipt. (N is unused then.)

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

void check(amqp_rpc_reply_t r, const char* what) {
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        fmt::print(stderr, "raw amqp: {} failed\n", what);
        std::exit(1);
    }
}

amqp_connection_state_t open(const char* host, int port) {
    auto c = amqp_new_connection();
    auto* s = amqp_tcp_socket_new(c);
    if (amqp_socket_open(s, host, port) != AMQP_STATUS_OK) {
        fmt::print(stderr, "raw amqp: cannot connect to {}:{}\n", host, port);
        std::exit(1);
    }
    check(amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest"), "login");
    amqp_channel_open(c, 1);
    check(amqp_get_rpc_reply(c), "channel");
    return c;
}

std::int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now().time_since_epoch())
        .count();
}

/// Waits (at most 10 s) for the confirms of every message published so far (`sent`); false
/// when one is refused (nack) or none comes.
bool await_confirms(amqp_connection_state_t pub, long sent, long& confirmed) {
    while (confirmed < sent) {
        amqp_frame_t f;
        timeval limit{10, 0};
        if (amqp_simple_wait_frame_noblock(pub, &f, &limit) != AMQP_STATUS_OK) return false;
        if (f.frame_type != AMQP_FRAME_METHOD) continue;
        if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) return false;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            auto* ack = static_cast<amqp_basic_ack_t*>(f.payload.method.decoded);
            confirmed = ack->multiple ? long(ack->delivery_tag)
                                      : std::max(confirmed, long(ack->delivery_tag));
        }
    }
    return true;
}

int measure_latency(const char* host, int port, const std::string& queue,
                    amqp_connection_state_t pub, const amqp_basic_properties_t& props, double rate,
                    double seconds) {
    std::vector<std::int64_t> lat;
    std::atomic<long> received{0};
    std::atomic<bool> ready{false};
    std::atomic<bool> done{false};
    std::atomic<bool> failed{false};
    auto con = open(host, port);
    amqp_basic_qos(con, 1, 0, 1000, 0);
    amqp_basic_consume(con, 1, amqp_cstring_bytes(queue.c_str()), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    check(amqp_get_rpc_reply(con), "consume");
    // (Joined on every way out: a failure ends the reader too.)
    std::jthread consumer([&] {
        ready = true;
        timeval tick{0, 100000};
        while (!done) {
            amqp_envelope_t env;
            amqp_maybe_release_buffers(con);
            auto r = amqp_consume_message(con, &env, &tick, 0);
            if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
                r.library_error == AMQP_STATUS_TIMEOUT)
                continue;
            if (r.reply_type != AMQP_RESPONSE_NORMAL) {
                failed = true;
                break;
            }
            auto at = now_us();
            std::string body(static_cast<const char*>(env.message.body.bytes),
                             env.message.body.len);
            lat.push_back(at - std::atoll(body.c_str() + 2));  // [[<sent>], ...
            amqp_basic_ack(con, 1, env.delivery_tag, 0);
            amqp_destroy_envelope(&env);
            ++received;
        }
    });
    struct Stop {
        std::atomic<bool>& done;
        std::jthread& reader;
        amqp_connection_state_t con;
        ~Stop() {
            done = true;
            if (reader.joinable()) reader.join();
            amqp_connection_close(con, AMQP_REPLY_SUCCESS);
            amqp_destroy_connection(con);
        }
    } stop{done, consumer, con};
    while (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const double per_ms = std::max(1.0, rate / 1000.0);
    double owed = 0;
    long sent = 0, confirmed = 0;
    auto start = Clock::now();
    while (Clock::now() - start < std::chrono::duration<double>(seconds)) {
        for (owed += per_ms; owed >= 1; owed -= 1) {
            std::string body = fmt::format(
                R"([[{}], {{}}, {{"callbacks": null, "errbacks": null, "chain": null, "chord": null}}])",
                now_us());
            if (amqp_basic_publish(pub, 1, amqp_empty_bytes, amqp_cstring_bytes(queue.c_str()), 1,
                                   0, &props,
                                   amqp_bytes_t{body.size(), body.data()}) != AMQP_STATUS_OK)
                return 1;
            ++sent;
        }
        if (!await_confirms(pub, sent, confirmed)) return 1;
        std::this_thread::sleep_until(
            start +
            std::chrono::milliseconds(
                long(std::chrono::duration<double, std::milli>(Clock::now() - start).count()) + 1));
    }
    auto deadline = Clock::now() + std::chrono::seconds(30);
    while (received < sent && !failed && Clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    done = true;
    consumer.join();
    amqp_queue_delete(pub, 1, amqp_cstring_bytes(queue.c_str()), 0, 0);
    if (failed || received < sent || lat.empty()) {
        fmt::print(stderr, "raw amqp: {} of {} messages received\n", received.load(), sent);
        return 1;
    }
    std::sort(lat.begin(), lat.end());
    fmt::print("{} {}\n", lat[lat.size() / 2], lat[lat.size() * 99 / 100]);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    bool latency_args = argc > 4 && std::string(argv[4]) == "latency";
    if (argc < 4 || (latency_args && (argc < 7 || std::atof(argv[5]) <= 0)) ||
        (!latency_args && std::atol(argv[3]) <= 0)) {
        fmt::print(stderr, "usage: bench_raw_amqp HOST PORT N [bare | latency RATE SECONDS]\n");
        return 2;
    }
    const char* host = argv[1];
    int port = std::atoi(argv[2]);
    long n = std::atol(argv[3]);
    bool bare = argc > 4 && std::string(argv[4]) == "bare";
    bool latency = latency_args;
    std::string queue = fmt::format("raw-bench-{}", getpid());

    auto pub = open(host, port);
    amqp_queue_declare(pub, 1, amqp_cstring_bytes(queue.c_str()), 0, 1, 0, 0, amqp_empty_table);
    check(amqp_get_rpc_reply(pub), "declare");
    amqp_confirm_select(pub, 1);
    check(amqp_get_rpc_reply(pub), "confirm.select");
    // A no-op task as Celery protocol v2 puts it on the wire.
    const char* id = "5f0b4a52-3b8e-4c47-9d6e-2f1c8a7e9b10";
    std::string body =
        R"([[0], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])";
    std::vector<amqp_table_entry_t> h;
    auto field = [&](const char* key, amqp_field_value_t v) {
        h.push_back(amqp_table_entry_t{amqp_cstring_bytes(key), v});
    };
    auto text = [](const char* s) {
        amqp_field_value_t v{};
        v.kind = AMQP_FIELD_KIND_UTF8;
        v.value.bytes = amqp_cstring_bytes(s);
        return v;
    };
    amqp_field_value_t zero{};
    zero.kind = AMQP_FIELD_KIND_I32;
    amqp_field_value_t yes{};
    yes.kind = AMQP_FIELD_KIND_BOOLEAN;
    yes.value.boolean = 1;
    field("lang", text("py"));
    field("task", text("noop"));
    field("id", text(id));
    field("retries", zero);
    field("root_id", text(id));
    field("argsrepr", text("(0,)"));
    field("kwargsrepr", text("{}"));
    field("origin", text("conveyor12345@bench-host"));
    field("ignore_result", yes);
    amqp_basic_properties_t p{};
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    p.delivery_mode = 2;
    p.content_type = amqp_cstring_bytes("application/json");
    if (bare) {
        body.assign(120, 'x');
    } else {
        p._flags |= AMQP_BASIC_CONTENT_ENCODING_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                    AMQP_BASIC_PRIORITY_FLAG | AMQP_BASIC_HEADERS_FLAG;
        p.content_encoding = amqp_cstring_bytes("utf-8");
        p.correlation_id = amqp_cstring_bytes(id);
        p.priority = 0;
        p.headers = amqp_table_t{int(h.size()), h.data()};
    }
    amqp_bytes_t b{body.size(), body.data()};

    if (latency)
        return measure_latency(host, port, queue, pub, p, std::atof(argv[5]), std::atof(argv[6]));

    auto cpu_us = [] {
        rusage ru{};
        getrusage(RUSAGE_SELF, &ru);
        return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec +
               ru.ru_stime.tv_usec;
    };
    auto c0 = cpu_us();
    auto t0 = Clock::now();
    long sent = 0, confirmed = 0;
    const long window = 2048;
    while (confirmed < n) {
        while (sent < n && sent - confirmed < window) {
            if (amqp_basic_publish(pub, 1, amqp_empty_bytes, amqp_cstring_bytes(queue.c_str()), 1,
                                   0, &p, b) != AMQP_STATUS_OK) {
                fmt::print(stderr, "raw amqp: publish failed\n");
                return 1;
            }
            ++sent;
        }
        amqp_frame_t f;
        if (amqp_simple_wait_frame(pub, &f) != AMQP_STATUS_OK) return 1;
        if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            auto* ack = static_cast<amqp_basic_ack_t*>(f.payload.method.decoded);
            confirmed = ack->multiple ? long(ack->delivery_tag)
                                      : std::max(confirmed, long(ack->delivery_tag));
        }
    }
    auto t1 = Clock::now();
    auto c1 = cpu_us();

    // The drain's clock starts as the consumer connects, as Conveyor's does when its worker
    // starts.
    auto t2 = Clock::now();
    auto c2 = cpu_us();
    auto con = open(host, port);
    amqp_basic_qos(con, 1, 0, 1000, 0);
    amqp_basic_consume(con, 1, amqp_cstring_bytes(queue.c_str()), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    check(amqp_get_rpc_reply(con), "consume");
    long got = 0;
    std::uint64_t last = 0;
    while (got < n) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(con);
        if (amqp_consume_message(con, &env, nullptr, 0).reply_type != AMQP_RESPONSE_NORMAL)
            return 1;
        last = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (++got % 100 == 0) amqp_basic_ack(con, 1, last, 1);
    }
    amqp_basic_ack(con, 1, last, 1);
    auto t3 = Clock::now();
    auto c3 = cpu_us();
    amqp_queue_delete(pub, 1, amqp_cstring_bytes(queue.c_str()), 0, 0);
    fmt::print("{:.0f} {:.0f} {:.1f} {:.1f}\n", n / std::chrono::duration<double>(t1 - t0).count(),
               n / std::chrono::duration<double>(t3 - t2).count(), (c1 - c0) / double(n),
               (c3 - c2) / double(n));
    return 0;
}
