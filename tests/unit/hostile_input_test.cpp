// Input an adversary controls (a message, a remote-control request, a URL, a time) never
// crashes, never inverts its meaning, and never prints a secret.

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <thread>

#include "conveyor/client.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/worker.hpp"
#include "core/codec.hpp"
#include "core/json_bounds.hpp"
#include "core/time.hpp"
#include "core/url.hpp"
#include "worker/handlers.hpp"

using namespace conveyor;
using namespace std::chrono_literals;

namespace {

std::string nested(std::size_t depth, std::string_view inner = "1") {
    return std::string(depth, '[') + std::string(inner) + std::string(depth, ']');
}

std::string nested_object(std::size_t depth) {
    std::string out;
    for (std::size_t i = 0; i < depth; ++i) out += R"({"a": )";
    return out + "1" + std::string(depth, '}');
}

Envelope celery(std::string body, Json headers = Json::object()) {
    Envelope e;
    e.content_type = "application/json";
    e.content_encoding = "utf-8";
    Json h = {{"task", "t"}, {"id", "hostile-1"}};
    for (auto& [k, v] : headers.items()) h[k] = v;
    e.headers = h;
    e.body = std::move(body);
    return e;
}

}  // namespace

TEST(JsonBounds, DepthIsCountedWithoutRecursionAndStringsDoNotCount) {
    EXPECT_EQ(detail::json_text_depth("1"), 0u);
    EXPECT_EQ(detail::json_text_depth(R"([{"a": [1]}])"), 3u);
    EXPECT_EQ(detail::json_text_depth(R"(["[[[[", "\"[[["])"), 1u);
    EXPECT_GT(detail::json_text_depth(nested(1000000)), detail::kMaxJsonDepth);
    Json deep = Json::array();
    for (int i = 0; i < 10; ++i) deep = Json::array({deep});
    EXPECT_EQ(detail::json_depth(deep), 11u);
    EXPECT_EQ(detail::json_depth(Json(5)), 0u);
}

TEST(JsonBounds, TooDeepTextIsRefusedBeforeATreeIsBuilt) {
    auto r = detail::parse_untrusted(nested(100000), "the body");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::malformed);
    EXPECT_EQ(r.error().message, "the body nests deeper than 128 levels");
    EXPECT_TRUE(detail::parse_untrusted(nested(128), "x"));
    EXPECT_FALSE(detail::parse_untrusted(nested(129), "x"));
    EXPECT_EQ(detail::dump_lossy(Json("a\xff")), "\"a\xEF\xBF\xBD\"");
}

TEST(JsonBounds, TheBoundIsExactWhateverTheInnermostLevelHolds) {
    // simdjson, bounded, counts a level holding something one more than an empty one: the
    // depth is counted again where it refuses, so the bound is the same either way.
    for (std::string_view inner : {"1", "", "{}", R"({"k": null})"}) {
        std::size_t own = inner.starts_with('{') ? 1 : 0;  // the inner object's own level
        EXPECT_TRUE(detail::parse_untrusted(nested(128 - own, inner), "x")) << inner;
        EXPECT_FALSE(detail::parse_untrusted(nested(129 - own, inner), "x")) << inner;
    }
    EXPECT_TRUE(detail::parse_untrusted(nested_object(128), "x"));
    // Past the reused parser's size, a parser of its own is bounded the same.
    std::string pad(70000, ' ');
    EXPECT_TRUE(detail::parse_untrusted(pad + nested(128), "x"));
    EXPECT_FALSE(detail::parse_untrusted(pad + nested(129), "x"));
    EXPECT_FALSE(detail::parse_untrusted(pad + nested(129, ""), "x"));
    auto r = detail::parse_untrusted(nested_object(129), "x");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message, "x nests deeper than 128 levels");
    // And the same thread's next document parses as ever.
    EXPECT_EQ(*detail::parse_untrusted("[1, {\"a\": 2}]", "x"), Json::parse("[1, {\"a\": 2}]"));
}

TEST(JsonBounds, ATaskBodyIsReadInItsPartsOnlyWhenItReadsAsTheWholeTreeWould) {
    auto parts = detail::parse_task_body(
        R"([[1, "two", -3], {"k": [3.5]}, {"callbacks": null, "errbacks": null, )"
        R"("chain": null, "chord": null}])");
    ASSERT_TRUE(parts);
    EXPECT_EQ(parts->args, Json::parse(R"([1, "two", -3])"));
    EXPECT_EQ(parts->kwargs, Json::parse(R"({"k": [3.5]})"));
    EXPECT_EQ(parts->embed, Json::object());  // Celery's empty embed: written the same again
    // An embed with something in it (or a key of its own) is kept whole.
    for (const char* embed : {R"({"chain": [{"task": "next"}], "callbacks": null})",
                              R"({"callbacks": null, "mine": null})"}) {
        auto kept = detail::parse_task_body(std::string("[[], {}, ") + embed + "]");
        ASSERT_TRUE(kept) << embed;
        EXPECT_EQ(kept->embed, Json::parse(embed));
    }
    auto null_embed = detail::parse_task_body("[[], {}, null]");
    ASSERT_TRUE(null_embed);
    EXPECT_EQ(null_embed->embed, Json::object());
    // Whatever is not such a body, or reads otherwise than nlohmann reads it, is left to the
    // whole parse (which says what is wrong).
    for (std::string text :
         {std::string("[[], {}]"), std::string("[[], {}, {}, 1]"), std::string("{\"task\": \"t\"}"),
          std::string("[{}, {}, {}]"), std::string("[[], [], {}]"), std::string("[[], {}, 5]"),
          std::string("[[-0], {}, {}]"), std::string("[[], {\"n\": -0}, {}]"),
          std::string("[[18446744073709551616], {}, {}]"), std::string("[[\"\xff\"], {}, {}]"),
          std::string("[[], {}, {}"), "[" + nested(127) + ", {}, {}]"}) {
        EXPECT_FALSE(detail::parse_task_body(text)) << text.substr(0, 40);
    }
    // Read in parts or whole, a task decodes the same (Celery's empty embed an empty object
    // either way, as the whole way also keeps it).
    for (std::string text :
         {std::string(R"([[1, "two"], {"k": [3]}, {"callbacks": null, "chain": null}])"),
          std::string(R"([[], {}, {"chain": [{"task": "next"}], "chord": null}])"),
          std::string(R"([[], {}, {"errbacks": null, "x": null}])"),
          std::string(R"([[-0.0, 1e3], {"a": {"a": 1, "a": 2}}, null])"),
          std::string(R"([["\u00e9\ud83d\ude00"], {}, {}])"),
          // The same read whole: a -0 in a string, and a body past the reused parser's size.
          std::string(R"([["x-0,"], {}, {"callbacks": null}])"),
          R"([[")" + std::string(70000, 'x') + R"("], {}, {"chord": null}])"}) {
        Json headers = {{"task", "t"}, {"id", "i"}};
        const codec::JsonHeaders h(headers);
        auto task = codec::decode(
            codec::MessageView{.content_type = codec::kJson, .headers = h, .body = text}, 1 << 20);
        ASSERT_TRUE(task) << text.substr(0, 60);
        Json whole = *detail::parse_untrusted(text, "body");
        EXPECT_EQ(task->args, whole[0]) << text.substr(0, 60);
        EXPECT_EQ(task->kwargs, whole[1]) << text.substr(0, 60);
        bool empty = whole[2].is_null() || detail::is_empty_embed(whole[2]);
        EXPECT_EQ(task->embed, empty ? Json::object() : whole[2]) << text.substr(0, 60);
    }
    // Past the reused parser's size too (a parser of its own each time is not worth it).
    EXPECT_FALSE(detail::parse_task_body("[[\"" + std::string(70000, 'x') + "\"], {}, {}]"));
}

TEST(JsonBounds, TheFastParserBuildsWhatNlohmannBuildsAndRefusesWhatItRefuses) {
    const char* texts[] = {
        R"({"id":"x","retries":0,"eta":null,"ok":true,"f":1.5,"neg":-3,"arr":[1,[2,{}]]})",
        R"({"a":1,"a":2})",                // the last of two equal keys wins
        "18446744073709551615",            // the largest unsigned
        "-9223372036854775808",            // the smallest signed
        "123456789012345678901234567890",  // beyond 64 bits: a double
        "-123456789012345678901234567890", "1e400", "-0", "[-0,0]", "{\"a\":-0}", R"(["a-0,"])",
        "0.1", "1E-7", "  [1, 2]  ",
        R"("\u00e9\ud83d\ude00\u0000\n")",  // escapes, a surrogate pair, NUL
        "\"\xC3\xA9\"",                     // UTF-8
        // Refused by both:
        "\"\xff\"", R"("\ud800")", "[1,]", "{\"a\" 1}", "01", "1.", "[1] x", "", "nul", "\"a\tb\"",
        "{\"a\":1", "[\"\\x\"]"};
    for (std::string_view text : texts) {
        SCOPED_TRACE(std::string(text));
        Json fast = detail::parse_json(text);
        Json slow = Json::parse(text, nullptr, false);
        ASSERT_EQ(fast.is_discarded(), slow.is_discarded());
        if (slow.is_discarded()) continue;
        EXPECT_EQ(detail::dump_lossy(fast), detail::dump_lossy(slow));
        EXPECT_EQ(fast.type(), slow.type());
        if (slow.is_object()) {
            for (auto& [k, v] : slow.items()) EXPECT_EQ(fast.at(k).type(), v.type()) << k;
        }
    }
    // A document past the reused parser's size, and one after it on the same thread.
    std::string big = "[" + std::string(100000, ' ') + "\"" + std::string(70000, 'x') + "\"]";
    EXPECT_EQ(detail::parse_json(big)[0].get_ref<const std::string&>().size(), 70000u);
    EXPECT_EQ(detail::parse_json(R"({"k":[true]})"), Json({{"k", {true}}}));
}

TEST(HostileMessages, EveryBadShapeIsMalformedNeverAThrow) {
    struct Case {
        const char* label;
        Envelope env;
        const char* says;
    };
    std::vector<Case> cases = {
        {"args nested 100,000 deep", celery("[" + nested(100000) + ", {}, {}]"),
         "body nests deeper than 128 levels"},
        {"kwargs nested 200 deep", celery("[[], " + nested_object(200) + ", {}]"),
         "body nests deeper than 128 levels"},
        {"time limit 1e300", celery("[[], {}, {}]", {{"timelimit", {1e300, nullptr}}}),
         "timelimit hard is 1e+300, outside 0..31536000 seconds"},
        {"negative time limit", celery("[[], {}, {}]", {{"timelimit", {nullptr, -1}}}),
         "timelimit soft"},
        {"NaN time limit (an AMQP double may be NaN)",
         celery("[[], {}, {}]",
                {{"timelimit", {std::numeric_limits<double>::quiet_NaN(), nullptr}}}),
         "timelimit hard"},
        {"max_retries beyond int", celery("[[], {}, {}]", {{"max_retries", 99999999999999LL}}),
         "header 'max_retries' is 99999999999999, outside 0..1000000"},
        {"retries beyond int", celery("[[], {}, {}]", {{"retries", 4294967296LL}}),
         "header 'retries'"},
        {"group_index beyond int", celery("[[], {}, {}]", {{"group_index", -5}}),
         "header 'group_index'"},
    };
    {
        Json deep_headers = Json::object();
        for (int i = 0; i < 200; ++i) deep_headers = Json{{"x", deep_headers}};
        Envelope e = celery("[[], {}, {}]");
        e.headers["x-deep"] = deep_headers;
        cases.push_back({"headers nested 200 deep", e, "headers nest deeper than 128 levels"});
    }
    for (auto& c : cases) {
        Result<TaskMessage> r = fail(Errc::internal, "not run");
        EXPECT_NO_THROW(r = codec::decode(c.env)) << c.label;
        ASSERT_FALSE(r) << c.label;
        EXPECT_EQ(r.error().code, Errc::malformed) << c.label;
        EXPECT_NE(r.error().message.find(c.says), std::string::npos)
            << c.label << ": " << r.error().message;
    }
    Envelope raw;
    raw.body = nested(50000);
    auto r = codec::decode_raw(raw, "t", "id-1");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message, "raw body nests deeper than 128 levels");
}

TEST(HostileMessages, TimesPastTheClocksRangeWaitInsteadOfOverflowing) {
    auto d = codec::decode(celery("[[], {}, {}]", {{"eta", "9999-12-31T23:59:59+00:00"},
                                                   {"expires", "9999-01-01T00:00:00Z"}}));
    ASSERT_TRUE(d) << d.error().message;
    ASSERT_TRUE(d->eta);
    EXPECT_EQ(*d->eta, detail::kLatestTime);  // waits, rather than running at once
    EXPECT_GT(*d->eta, SystemClock::now() + 24h * 365 * 200);
    EXPECT_EQ(*d->expires, detail::kLatestTime);  // never counts as expired
    auto old = detail::parse_iso8601("0001-01-01T00:00:00Z");
    ASSERT_TRUE(old);
    EXPECT_EQ(*old, detail::kEarliestTime);
}

TEST(Time, AdditionsAndConversionsSaturate) {
    auto now = SystemClock::now();
    EXPECT_EQ(detail::add_clamped(now, std::chrono::milliseconds(std::numeric_limits<long>::max())),
              detail::kLatestTime);
    EXPECT_EQ(detail::add_clamped(now, std::chrono::milliseconds(std::numeric_limits<long>::min())),
              detail::kEarliestTime);
    EXPECT_EQ(detail::add_clamped(now, 5000ms), now + 5000ms);
    EXPECT_FALSE(detail::seconds_to_ms(std::nan("")));
    EXPECT_EQ(*detail::seconds_to_ms(1.5), 1500ms);
    EXPECT_LT(*detail::seconds_to_ms(1e300), std::chrono::milliseconds(std::int64_t(1e13)));
    EXPECT_FALSE(detail::check_time(detail::kLatestTime, "the eta"));
    EXPECT_EQ(detail::check_time(detail::kLatestTime, "the eta").error().message,
              "the eta is after 2262-01-01T00:00:00Z, the latest time Conveyor can represent");
    EXPECT_TRUE(detail::check_time(now, "x"));
}

TEST(Client, RefusesTimesTheClockCannotHold) {
    auto broker = *Broker::open("memory://client-times");
    Client client(broker);
    EnqueueOptions o;
    o.queue = "q";
    o.countdown = std::chrono::milliseconds(9999999999LL * 1000);
    auto r = client.enqueue("t", {}, {}, o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, Errc::invalid_argument);
    EXPECT_NE(r.error().message.find("after 2262-01-01"), std::string::npos);
    o.countdown.reset();
    o.eta = detail::parse_iso8601("2300-01-01T00:00:00Z");
    EXPECT_FALSE(client.enqueue("t", {}, {}, o));
    o.eta.reset();
    o.expires = detail::kLatestTime;
    EXPECT_FALSE(client.enqueue("t", {}, {}, o));
    Json deep = Json::array();
    for (int i = 0; i < 200; ++i) deep = Json::array({deep});
    auto d = client.enqueue("t", deep, {}, EnqueueOptions{.queue = "q"});
    ASSERT_FALSE(d);
    EXPECT_NE(d.error().message.find("args nest deeper than 128 levels"), std::string::npos);
    // `{}` is C++ for "no arguments".
    EXPECT_TRUE(client.enqueue("t", {}, {}, EnqueueOptions{.queue = "q"}));
}

TEST(BrokerUrl, PasswordsAreMaskedWhereverTheyAre) {
    EXPECT_EQ(detail::redact_url("amqp://guest:s3cret@rabbit:5672/"),
              "amqp://guest:***@rabbit:5672/");
    EXPECT_EQ(detail::redact_url("amqp://u:p@h1//;amqp://u:p2@h2//"),
              "amqp://u:***@h1//;amqp://u:***@h2//");
    EXPECT_EQ(detail::redact_url("amqp://u:p@h/?results=redis://:redispw@r:6379/0&heartbeat=5"),
              "amqp://u:***@h/?results=redis://:***@r:6379/0&heartbeat=5");
    EXPECT_EQ(detail::redact_url("amqp://u:p@h/?results=redis%3A%2F%2F%3Apw%40r%3A6379%2F0"),
              "amqp://u:***@h/?results=redis%3A%2F%2F%3A***%40r%3A6379%2F0");
    EXPECT_EQ(detail::redact_url("amqp://user@h/"), "amqp://user@h/");
    EXPECT_EQ(detail::redact_url("sqlite://conveyor.db"), "sqlite://conveyor.db");
    auto bad = detail::parse_broker_url("amqp://u:topsecret@h?novalue");
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().message.find("topsecret"), std::string::npos) << bad.error().message;
    auto opened = Broker::open("nosuch://u:topsecret@h/");
    ASSERT_FALSE(opened);
    EXPECT_EQ(opened.error().message.find("topsecret"), std::string::npos);
}

TEST(BrokerUrl, DurationOptionsAreBoundedAndNaNIsRefused) {
    for (auto v : {"nan", "1e300", "-1", "", "5s"}) {
        auto r = detail::seconds_option("amqp", "heartbeat", v, 0, 3600);
        ASSERT_FALSE(r) << v;
        EXPECT_NE(r.error().message.find("must be a number of seconds from 0 to 3600"),
                  std::string::npos);
    }
    EXPECT_EQ(*detail::seconds_option("amqp", "heartbeat", "2.5", 0, 3600), 2500ms);
    EXPECT_FALSE(Broker::open("sqlite:///tmp/x.db?busy_timeout=nan"));
    EXPECT_FALSE(Broker::open("sqlite:///tmp/x.db?result_expires=1e300"));
}

TEST(HttpHandler, HeaderValuesFromTaskDataCannotStartAHeader) {
    EXPECT_EQ(detail::header_value("a\r\nX-Injected: yes"), "a%0D%0AX-Injected: yes");
    EXPECT_EQ(detail::header_value("100%"), "100%25");
    EXPECT_EQ(detail::header_value("1de47d4f-e265"), "1de47d4f-e265");
}

// ---- the worker: one message of each kind, then a good task still runs ----------------------

namespace {

struct Harness {
    std::shared_ptr<Broker> broker;
    Client client;
    Worker worker;
    std::jthread thread;
    Harness(const std::string& name, WorkerOptions o)
        : broker(*Broker::open("memory://" + name)), client(broker), worker(broker, o) {}
    void start() {
        thread = std::jthread([this] { ASSERT_TRUE(worker.run()); });
    }
    ~Harness() {
        worker.stop();
        if (thread.joinable()) thread.join();
    }
    void publish(Envelope env, const std::string& queue = "q") {
        OutgoingMessage m{.queue = queue, .envelope = std::move(env)};
        ASSERT_TRUE(broker->publish(std::span(&m, 1)));
    }
    std::string reasons(const std::string& queue = "q") {
        std::string all;
        auto dead = broker->dead_letters(queue, 100);
        for (auto& d : *dead) all += d.reason + "\n";
        return all;
    }
};

WorkerOptions opts() {
    WorkerOptions o;
    o.queues = {"q"};
    o.concurrency = 2;
    o.seed = 3;
    return o;
}

Envelope with_embed(const std::string& id, const std::string& task, Json embed) {
    TaskMessage t{.id = id, .name = task};
    t.embed = std::move(embed);
    return codec::encode(t);
}

}  // namespace

TEST(HostileMessages, PoisonMessagesAreDeadLetteredAndTheWorkerCarriesOn) {
    Harness h("hostile-worker", opts());
    TaskOptions no_retry;
    no_retry.retry.max_retries = 0;
    h.worker.handle("ok", [](TaskContext&) -> Json { return "fine"; });
    h.worker.handle("fails", no_retry, [](TaskContext&) -> Json { throw Reject("no"); });
    h.start();
    // Args nested 100,000 deep (once a stack overflow in the monitor's copy).
    h.publish(celery("[" + nested(100000) + ", {}, {}]", {{"task", "ok"}, {"id", "deep"}}));
    // A callback group whose member is a number, and an errback that is a string.
    h.publish(
        with_embed("bad-callback", "ok",
                   {{"callbacks", {{{"subtask_type", "group"}, {"kwargs", {{"tasks", {1}}}}}}}}));
    h.publish(with_embed("bad-errback", "fails", {{"errbacks", {"x"}}}));
    h.publish(with_embed("bad-chain", "ok", {{"chain", {7}}}));
    h.publish(celery("[[], {}, {}]",
                     {{"task", "ok"}, {"id", "huge-limit"}, {"timelimit", {1e300, 1e300}}}));
    auto good = h.client.enqueue("ok", {}, {}, EnqueueOptions{.queue = "q"});
    ASSERT_TRUE(good);
    auto r = h.client.wait(*good, 10s);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->state, TaskState::success);
    for (auto id : {"deep", "bad-callback", "bad-errback", "bad-chain", "huge-limit"}) {
        auto f = h.client.wait(id, 10s);
        ASSERT_TRUE(f) << id;
        EXPECT_EQ(f->state, TaskState::failure) << id;
    }
    std::string reasons = h.reasons();
    EXPECT_NE(reasons.find("malformed message: body nests deeper than 128 levels"),
              std::string::npos)
        << reasons;
    EXPECT_NE(reasons.find("a workflow member is not a signature (an object) but number"),
              std::string::npos)
        << reasons;
    // The failing task's own failure stands; its unusable errback is reported, not followed.
    EXPECT_NE(reasons.find("rejected: Reject: no"), std::string::npos) << reasons;
    EXPECT_NE(reasons.find("a chain link is not a signature"), std::string::npos) << reasons;
    EXPECT_NE(reasons.find("timelimit hard is 1e+300"), std::string::npos) << reasons;
}

TEST(HostileMessages, AMessageThatKeepsKillingItsWorkerIsDeadLetteredAtTheDeliveryLimit) {
    // Each consumer that takes the message and dies without settling it (as a crashed worker
    // would) adds a delivery; past the limit the next worker dead-letters it undecoded.
    auto broker = *Broker::open("memory://hostile-limit");
    TaskMessage t{.id = "killer", .name = "ok"};
    OutgoingMessage m{.queue = "q", .envelope = codec::encode(t)};
    ASSERT_TRUE(broker->publish(std::span(&m, 1)));
    for (int i = 0; i < 5; ++i) {
        auto c = broker->consume(ConsumerOptions{.queues = {"q"}, .prefetch = 1});
        ASSERT_TRUE(c);
        auto got = (*c)->fetch(1, 1s);
        ASSERT_TRUE(got);
        ASSERT_EQ(got->size(), 1u);
        EXPECT_EQ((*got)[0].deliveries, i + 1);
    }  // the consumer dies with the delivery unsettled
    WorkerOptions o = opts();
    std::atomic<int> ran{0};
    Worker worker(broker, o);
    worker.handle("ok", [&](TaskContext&) -> Json { return ++ran; });
    std::jthread th([&] { ASSERT_TRUE(worker.run()); });
    Client client(broker);
    auto r = client.wait("killer", 10s);
    worker.stop();
    th.join();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, TaskState::failure);
    EXPECT_EQ(r->result["exc_type"], "DeliveryLimitExceeded");
    EXPECT_EQ(ran.load(), 0);
    auto dl = broker->dead_letters("q", 10);
    ASSERT_EQ(dl->size(), 1u);
    EXPECT_EQ((*dl)[0].reason, "delivered 6 times without being settled (delivery limit 5)");
}

TEST(HostileMessages, HandingBackAtShutdownIsNotADelivery) {
    auto broker = *Broker::open("memory://hostile-release");
    TaskMessage t{.id = "kept", .name = "ok"};
    OutgoingMessage m{.queue = "q", .envelope = codec::encode(t)};
    ASSERT_TRUE(broker->publish(std::span(&m, 1)));
    for (int i = 0; i < 8; ++i) {
        auto c = broker->consume(ConsumerOptions{.queues = {"q"}, .prefetch = 1});
        auto got = (*c)->fetch(1, 1s);
        ASSERT_EQ(got->size(), 1u);
        EXPECT_EQ((*got)[0].deliveries, 1);
        Settlement back{Settlement::Kind::release, (*got)[0].tag};
        ASSERT_TRUE((*c)->settle(std::span(&back, 1)));
    }
}
