#include "core/codec.hpp"

#include <gtest/gtest.h>
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <set>

#include "core/json_bounds.hpp"
#include "core/time.hpp"

using namespace conveyor;

namespace {

std::string zlib_compress(const std::string& in) {
    uLongf n = compressBound(uLong(in.size()));
    std::string out(n, '\0');
    compress(reinterpret_cast<Bytef*>(out.data()), &n, reinterpret_cast<const Bytef*>(in.data()),
             uLong(in.size()));
    out.resize(n);
    return out;
}

Envelope celery_envelope(std::string body, Json headers = Json::object()) {
    Envelope e;
    e.content_type = "application/json";
    e.content_encoding = "utf-8";
    Json h = {{"task", "capapp.add"}, {"id", "1de47d4f-e265-4c6b-b239-e206bc339bd1"}};
    for (auto& [k, v] : headers.items()) h[k] = v;
    e.headers = h;
    e.body = std::move(body);
    return e;
}

}  // namespace

TEST(Codec, EncodesTheCeleryHeaderSetAndThreeElementBody) {
    TaskMessage t;
    t.id = "abc";
    t.name = "orders.bill";
    t.args = {2, 3};
    t.kwargs = {{"y", 10}};
    t.time_limit = 30;
    t.soft_time_limit = 20;
    Envelope e = codec::encode(t);
    EXPECT_EQ(e.content_type, "application/json");
    EXPECT_EQ(e.content_encoding, "utf-8");
    EXPECT_EQ(e.correlation_id, "abc");
    for (const char* k : {"lang", "task", "id", "retries", "timelimit", "root_id", "argsrepr",
                          "kwargsrepr", "origin", "ignore_result"})
        EXPECT_TRUE(e.headers.contains(k)) << k;
    // Headers that would be null are left out (Celery reads them as null).
    for (const char* k : {"shadow", "eta", "expires", "group", "group_index", "parent_id"})
        EXPECT_FALSE(e.headers.contains(k)) << k;
    EXPECT_FALSE(codec::encode(TaskMessage{.id = "x", .name = "n"}).headers.contains("timelimit"));
    t.eta = TimePoint(std::chrono::seconds(1'800'000'000));
    t.expires = TimePoint(std::chrono::seconds(1'800'000'060));
    t.group = "g";
    t.group_index = 2;
    t.parent_id = "p";
    Envelope full = codec::encode(t);
    EXPECT_EQ(full.headers["eta"], "2027-01-15T08:00:00.000000+00:00");
    EXPECT_EQ(full.headers["expires"], "2027-01-15T08:01:00.000000+00:00");
    EXPECT_EQ(full.headers["group"], "g");
    EXPECT_EQ(full.headers["group_index"], 2);
    EXPECT_EQ(full.headers["parent_id"], "p");
    EXPECT_EQ(e.headers["timelimit"], Json::array({30.0, 20.0}));  // [hard, soft] on the wire
    EXPECT_EQ(e.headers["root_id"], "abc");
    EXPECT_EQ(e.headers["argsrepr"], "(2, 3)");
    Json body = Json::parse(e.body);
    ASSERT_EQ(body.size(), 3u);
    EXPECT_EQ(body[0], Json::array({2, 3}));
    EXPECT_EQ(body[1], Json({{"y", 10}}));
    EXPECT_TRUE(body[2].contains("callbacks"));
    EXPECT_TRUE(body[2]["chord"].is_null());
}

TEST(Codec, RoundTripKeepsEveryField) {
    TaskMessage t;
    t.id = "id-1";
    t.name = "x.y";
    t.args = {"héllo ☃", 1.5, nullptr};
    t.kwargs = {{"k", {1, 2}}};
    t.retries = 4;
    t.eta = detail::parse_iso8601("2026-11-27T03:31:03.835497+00:00");
    t.expires = detail::parse_iso8601("2026-11-28T00:00:00Z");
    t.priority = 7;
    t.parent_id = "p";
    t.root_id = "r";
    t.group = "g";
    t.max_retries = 9;
    t.extra_headers = {{"x-custom", "v"}};
    auto d = codec::decode(codec::encode(t));
    ASSERT_TRUE(d) << d.error().message;
    EXPECT_EQ(d->id, t.id);
    EXPECT_EQ(d->name, t.name);
    EXPECT_EQ(d->args, t.args);
    EXPECT_EQ(d->kwargs, t.kwargs);
    EXPECT_EQ(d->retries, 4);
    EXPECT_EQ(d->eta, t.eta);
    EXPECT_EQ(d->expires, t.expires);
    EXPECT_EQ(d->priority, 7);
    EXPECT_EQ(d->parent_id, "p");
    EXPECT_EQ(d->root_id, "r");
    EXPECT_EQ(d->group, "g");
    EXPECT_EQ(d->max_retries, 9);
    EXPECT_EQ(d->extra_headers["x-custom"], "v");
}

TEST(Codec, DecodesACeleryCapturedMessage) {
    // Captured from Celery 5.2.6 (add.delay(2, 3)), ASCII-escaped with ", " separators.
    Envelope e = celery_envelope(
        R"([[2, 3], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}])",
        {{"lang", "py"},
         {"shadow", nullptr},
         {"eta", nullptr},
         {"expires", nullptr},
         {"group", nullptr},
         {"group_index", nullptr},
         {"retries", 0},
         {"timelimit", {nullptr, nullptr}},
         {"root_id", "1de47d4f-e265-4c6b-b239-e206bc339bd1"},
         {"parent_id", nullptr},
         {"argsrepr", "(2, 3)"},
         {"kwargsrepr", "{}"},
         {"origin", "gen13416@vm"},
         {"ignore_result", false}});
    e.reply_to = "699be275-064f-372c-8781-be57ddd9ed5e";
    auto d = codec::decode(e);
    ASSERT_TRUE(d) << d.error().message;
    EXPECT_EQ(d->name, "capapp.add");
    EXPECT_EQ(d->args, Json::array({2, 3}));
    EXPECT_FALSE(d->time_limit);
    EXPECT_EQ(d->reply_to, "699be275-064f-372c-8781-be57ddd9ed5e");
    EXPECT_EQ(d->origin, "gen13416@vm");
}

TEST(Codec, AcceptsProtocolV1Bodies) {
    Envelope e;
    e.content_type = "application/json";
    e.body = R"({"task": "t.v1", "id": "v1id", "args": [1], "kwargs": {"a": 2}, "retries": 1})";
    auto d = codec::decode(e);
    ASSERT_TRUE(d) << d.error().message;
    EXPECT_EQ(d->name, "t.v1");
    EXPECT_EQ(d->id, "v1id");
    EXPECT_EQ(d->retries, 1);
}

struct BadCase {
    const char* label;
    Envelope env;
    const char* reason_part;
};

class CodecRejects : public ::testing::TestWithParam<int> {};

TEST(Codec, RejectsEveryMalformedShapeWithAReason) {
    std::vector<BadCase> cases;
    const std::string good_body = R"([[1], {}, {}])";
    {
        Envelope e = celery_envelope(good_body);
        e.content_type.clear();
        cases.push_back({"no content type", e, "no content_type"});
    }
    {
        Envelope e = celery_envelope(good_body);
        e.content_type = "application/x-python-serialize";
        cases.push_back({"pickle", e, "unsupported content_type"});
    }
    cases.push_back({"two-element body", celery_envelope(R"([[2,3],{}])"), "2 elements"});
    cases.push_back({"kwargs as list", celery_envelope(R"([[2,3],[],{}])"), "kwargs"});
    cases.push_back({"args as object", celery_envelope(R"([{},{},{}])"), "args"});
    cases.push_back({"not JSON", celery_envelope("not json"), "not valid JSON"});
    cases.push_back(
        {"invalid UTF-8", celery_envelope("[[\"\xff\xfe\"], {}, {}]"), "not valid JSON"});
    cases.push_back({"body is an object", celery_envelope(R"({"a": 1})"), "not a JSON array"});
    cases.push_back(
        {"retries is a string", celery_envelope(good_body, {{"retries", "x"}}), "retries"});
    cases.push_back({"negative retries", celery_envelope(good_body, {{"retries", -1}}), "retries"});
    cases.push_back({"eta garbage", celery_envelope(good_body, {{"eta", "tomorrow"}}), "eta"});
    cases.push_back({"eta wrong type", celery_envelope(good_body, {{"eta", 5}}), "eta"});
    cases.push_back(
        {"timelimit shape", celery_envelope(good_body, {{"timelimit", {1}}}), "timelimit"});
    cases.push_back({"timelimit type", celery_envelope(good_body, {{"timelimit", {"a", nullptr}}}),
                     "timelimit"});
    cases.push_back(
        {"parent_id type", celery_envelope(good_body, {{"parent_id", 3}}), "parent_id"});
    cases.push_back({"compressed garbage",
                     celery_envelope(good_body, {{"compression", "application/x-gzip"}}),
                     "not a valid zlib stream"});
    cases.push_back({"bzip2", celery_envelope(good_body, {{"compression", "application/x-bz2"}}),
                     "unsupported compression"});
    cases.push_back(
        {"compression bomb",
         celery_envelope(zlib_compress("[[\"" + std::string(100000, 'a') + "\"], {}, {}]"),
                         {{"compression", "application/x-gzip"}}),
         "exceeds the limit"});
    {
        Envelope e = celery_envelope(good_body);
        e.headers.erase("task");
        cases.push_back({"no task header", e, "'task'"});
    }
    {
        Envelope e = celery_envelope(good_body);
        e.headers["task"] = 12;
        cases.push_back({"task not a string", e, "'task'"});
    }
    {
        Envelope e = celery_envelope(good_body);
        e.headers.erase("id");
        cases.push_back({"no id", e, "'id'"});
    }
    {
        Envelope e = celery_envelope(std::string(2000, ' ') + good_body);
        cases.push_back({"huge body", e, "exceeds the limit"});
    }
    for (auto& c : cases) {
        auto d = codec::decode(c.env, 1000);
        ASSERT_FALSE(d) << c.label << " was accepted";
        EXPECT_EQ(d.error().code, Errc::malformed) << c.label;
        EXPECT_NE(d.error().message.find(c.reason_part), std::string::npos)
            << c.label << ": " << d.error().message;
    }
}

TEST(Codec, ZlibCompressedBodyAsCelerySendsItDecodes) {
    // apply_async(compression='gzip'): a zlib stream under "application/x-gzip".
    auto e = celery_envelope(zlib_compress(R"([[2, 3], {"z": 1}, {}])"),
                             {{"compression", "application/x-gzip"}});
    auto d = codec::decode(e);
    ASSERT_TRUE(d) << d.error().message;
    EXPECT_EQ(d->args, Json::array({2, 3}));
    EXPECT_EQ(d->kwargs, Json({{"z", 1}}));
    EXPECT_FALSE(d->extra_headers.contains("compression"));
}

TEST(Codec, RawFormatTakesTheBodyAsPayload) {
    Envelope e;
    e.body = R"({"order": 7})";
    auto d = codec::decode_raw(e, "orders.import", "row-1");
    ASSERT_TRUE(d);
    EXPECT_EQ(d->name, "orders.import");
    EXPECT_EQ(d->id, "row-1");
    EXPECT_EQ(d->args, Json::array({Json{{"order", 7}}}));

    e.body = "plain text order";
    e.correlation_id = "corr";
    d = codec::decode_raw(e, "orders.import", "row-1");
    ASSERT_TRUE(d);
    EXPECT_EQ(d->id, "corr");
    EXPECT_EQ(d->args, Json::array({"plain text order"}));

    EXPECT_EQ(d->body, "plain text order");

    // Any bytes: the exact body is kept, and the argument is a string of those bytes.
    std::string binary("\xff\xfe\x00 binary\x80", 12);
    e.body = binary;
    e.content_type = "application/octet-stream";
    d = codec::decode_raw(e, "orders.import", "row-1");
    ASSERT_TRUE(d) << d.error().message;
    EXPECT_EQ(d->body, binary);
    EXPECT_EQ(d->content_type, "application/octet-stream");
    EXPECT_EQ(d->args[0].get<std::string>(), binary);

    // Said to be text: a string even when it looks like JSON.
    e.body = R"({"order": 7})";
    e.content_type = "text/plain";
    d = codec::decode_raw(e, "orders.import", "row-1");
    ASSERT_TRUE(d);
    EXPECT_EQ(d->args, Json::array({R"({"order": 7})"}));

    e.body = "";
    e.content_type = "";
    d = codec::decode_raw(e, "orders.import", "row-1");
    ASSERT_TRUE(d);
    EXPECT_EQ(d->body, "");
    EXPECT_EQ(d->args, Json::array({""}));
    EXPECT_FALSE(codec::decode_raw(Envelope{}, "", "x"));
}

TEST(Codec, RawEncodingSendsTheBytesAsTheyAre) {
    TaskMessage t;
    t.id = "id-1";
    std::string binary("\x00\x01\xff\xfe", 4);
    t.args = Json::array({binary});
    auto e = codec::encode_raw(t, "q");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->body, binary);
    EXPECT_EQ(e->content_type, "application/octet-stream");
    EXPECT_EQ(e->content_encoding, "");
    t.args = Json::array({"Task Data"});
    e = codec::encode_raw(t, "q");
    EXPECT_EQ(e->body, "Task Data");
    EXPECT_EQ(e->content_type, "text/plain");
    t.args = Json::array({Json{{"a", 1}}});
    e = codec::encode_raw(t, "q");
    EXPECT_EQ(e->body, R"({"a":1})");
    EXPECT_EQ(e->content_type, "application/json");
    // A raw message forwarded: its own bytes and content type, not the parsed value.
    t.body = "  {\"a\": 1}  ";
    t.content_type = "application/vnd.x+json";
    e = codec::encode_raw(t, "q");
    EXPECT_EQ(e->body, "  {\"a\": 1}  ");
    EXPECT_EQ(e->content_type, "application/vnd.x+json");
}

TEST(Codec, Utf8IsCheckedStrictly) {
    EXPECT_TRUE(detail::is_utf8(""));
    EXPECT_TRUE(detail::is_utf8("plain"));
    EXPECT_TRUE(detail::is_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
    EXPECT_FALSE(detail::is_utf8("\xff"));
    EXPECT_FALSE(detail::is_utf8("\xc3"));              // cut short
    EXPECT_FALSE(detail::is_utf8("\xc0\xaf"));          // overlong '/'
    EXPECT_FALSE(detail::is_utf8("\xed\xa0\x80"));      // a surrogate
    EXPECT_FALSE(detail::is_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
}

TEST(Codec, ReprLooksLikePython) {
    EXPECT_EQ(codec::args_repr(Json::array({1})), "(1,)");
    EXPECT_EQ(codec::args_repr(Json::array({"a", nullptr, true})), "('a', None, True)");
    EXPECT_EQ(codec::kwargs_repr(Json{{"y", 10}}), "{'y': 10}");
}

TEST(Codec, ArgumentReprsInTheHeadersAreCutAtCelerysSize) {
    // 1,020 ASCII bytes, then two-byte characters: the cut falls inside one of them.
    std::string big = std::string(1020, 'a') + std::string(2000, 'x');
    for (std::size_t i = 1020; i < big.size(); i += 2) {
        big[i] = '\xc3';
        big[i + 1] = '\xa9';  // é
    }
    TaskMessage t{.id = "a", .name = "t", .args = Json::array({big}), .kwargs = {{"k", big}}};
    auto e = codec::encode(t);
    auto args = e.headers["argsrepr"].get<std::string>();
    auto kwargs = e.headers["kwargsrepr"].get<std::string>();
    for (auto* r : {&args, &kwargs}) {
        EXPECT_LE(r->size(), 1024u);
        EXPECT_TRUE(r->ends_with("...")) << *r;
        EXPECT_NO_THROW((void)Json(*r).dump());  // whole characters only
    }
    EXPECT_TRUE(args.starts_with("('aaaa"));
    // The arguments themselves travel whole.
    auto back = codec::decode(e);
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(back->args[0], big);
    // Small ones are left as they are.
    EXPECT_EQ(codec::encode(TaskMessage{.name = "t", .args = {2, 3}}).headers["argsrepr"],
              "(2, 3)");
}

TEST(Codec, TheBodyIsTheCompactJsonOfArgsKwargsAndAWholeEmbed) {
    auto old_body = [](const TaskMessage& t) {
        Json embed = t.embed.is_object() ? t.embed : Json::object();
        for (const char* k : {"callbacks", "errbacks", "chain", "chord"})
            if (!embed.contains(k)) embed[k] = nullptr;
        return Json::array({t.args, t.kwargs, embed})
            .dump(-1, ' ', false, Json::error_handler_t::replace);
    };
    std::vector<TaskMessage> tasks(5);
    tasks[1].args = {1, "two", 3.5, nullptr, {{"k", {true}}}};
    tasks[1].kwargs = {{"z", 1}, {"a", "\xff not UTF-8"}};
    tasks[2].embed = {{"chain", {{{"task", "next"}}}}};
    tasks[3].embed = {
        {"callbacks", nullptr}, {"errbacks", {1}}, {"chain", nullptr}, {"chord", nullptr}};
    tasks[4].embed = Json::array();
    for (auto& t : tasks) {
        auto body = codec::encode(t).body;
        EXPECT_EQ(body, old_body(t));
        auto parsed = Json::parse(body);
        ASSERT_EQ(parsed.size(), 3u);
        for (const char* k : {"callbacks", "errbacks", "chain", "chord"})
            EXPECT_TRUE(parsed[2].contains(k)) << body;
    }
}

TEST(TaskId, IdsAreVersion7UuidsThatSortInTheOrderTheyWereMade) {
    std::string last;
    std::set<std::string> seen;
    for (int i = 0; i < 20000; ++i) {
        std::string id = make_task_id();
        ASSERT_EQ(id.size(), 36u) << id;
        for (std::size_t at : {8u, 13u, 18u, 23u}) ASSERT_EQ(id[at], '-') << id;
        for (std::size_t k = 0; k < id.size(); ++k) {
            if (id[k] != '-') {
                ASSERT_TRUE(std::isxdigit(static_cast<unsigned char>(id[k])) &&
                            !std::isupper(static_cast<unsigned char>(id[k])))
                    << id;
            }
        }
        EXPECT_EQ(id[14], '7') << id;                                          // version
        EXPECT_NE(std::string("89ab").find(id[19]), std::string::npos) << id;  // variant
        EXPECT_GT(id, last);
        last = id;
        seen.insert(id);
    }
    EXPECT_EQ(seen.size(), 20000u);
    // The first 48 bits are the time in milliseconds.
    auto ms = std::stoull(last.substr(0, 8) + last.substr(9, 4), nullptr, 16);
    auto now = std::uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count());
    EXPECT_LE(ms, now);
    EXPECT_GT(ms + 60000, now);
}
