// How the sqlite engine stores a message's properties and a task's headers: written without a
// JSON tree, the same text the tree gave, read back as they were.
#include "broker/sqlite/sqlite_tables.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "core/codec.hpp"

using namespace conveyor;

TEST(SqliteTables, PropertiesAreWrittenAsTheirJsonObjectWouldBe) {
    auto as_tree = [](const Envelope& e) {
        Json p = Json::object();
        if (!e.content_type.empty()) p["content_type"] = e.content_type;
        if (!e.content_encoding.empty()) p["content_encoding"] = e.content_encoding;
        if (!e.correlation_id.empty()) p["correlation_id"] = e.correlation_id;
        if (!e.reply_to.empty()) p["reply_to"] = e.reply_to;
        if (e.priority) p["priority"] = e.priority;
        return p.dump(-1, ' ', false, Json::error_handler_t::replace);
    };
    std::vector<Envelope> cases(7);
    cases[1] = Envelope{.content_type = "application/json",
                        .content_encoding = "utf-8",
                        .correlation_id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                        .reply_to = "replies",
                        .priority = 9};
    cases[2] = Envelope{.content_type = "text/plain; charset=\"x\"", .reply_to = "back\\slash"};
    cases[3] = Envelope{.correlation_id = std::string("tab\there\nnew\x01line")};
    cases[4] = Envelope{.correlation_id = "caf\xc3\xa9 \xe2\x82\xac", .priority = -3};
    cases[5] = Envelope{.reply_to = "\xff\xfe not UTF-8", .priority = 255};
    cases[6] = Envelope{.content_encoding = "\x7f", .priority = 1};
    for (auto& e : cases) {
        std::string text = sqlite::props_json(e);
        EXPECT_EQ(text, as_tree(e));
        ASSERT_FALSE(Json::parse(text, nullptr, false).is_discarded()) << text;
        Envelope back = sqlite::make_envelope(text, "{}", "");
        EXPECT_EQ(back.content_type, e.content_type);
        EXPECT_EQ(back.correlation_id.size() > 0, e.correlation_id.size() > 0);
        EXPECT_EQ(back.priority, e.priority);
    }
}

TEST(SqliteTables, ATaskPassedAsItIsIsStoredAsItsEncodedMessageWouldBe) {
    // A task published in this process reaches the engine as it is (TaskForm::task) and is
    // written as text from its fields; the stored text is the encoded message's, byte for byte.
    auto at = [](std::int64_t s) { return TimePoint(std::chrono::seconds(s)); };
    std::vector<TaskMessage> cases;
    cases.push_back(TaskMessage{.id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", .name = "a.b"});
    cases.push_back(TaskMessage{
        .id = "id-2",
        .name = "orders.bill",
        .args = {1, "two", "caf\xc3\xa9", "bad \xff utf-8", "quote \" back\\slash", nullptr},
        .kwargs = {{"k", {{"nested", {1.5, true}}}}, {"\t", "tab"}},
        .embed = {{"callbacks", {{{"task", "next"}}}}},
        .retries = 3,
        .eta = at(1900000000),
        .expires = at(1900003600),
        .priority = 200,
        .root_id = "root",
        .parent_id = "parent",
        .group = "g",
        .group_index = 4,
        .time_limit = 30,
        .soft_time_limit = 12.5,
        .max_retries = 9,
        .reply_to = "replies",
        .correlation_id = "corr",
        .ignore_result = true,
        .origin = "gen1@host"});
    cases.push_back(TaskMessage{.id = "id-3",
                                .name = "t",
                                .args = {std::string(5000, 'x')},  // argsrepr cut
                                .soft_time_limit = 5});
    // Extra headers: names before, between and after Celery's, names encode sets itself (the
    // extra gives way), names it leaves out (the extra goes in), nulls (left out), odd names.
    cases.push_back(TaskMessage{.id = "id-4",
                                .name = "t",
                                .extra_headers = {{"", 1},
                                                  {"A", "upper"},
                                                  {"_x", 2},
                                                  {"a", {1, 2}},
                                                  {"argsrepr", "***"},
                                                  {"eta", "2030-01-01T00:00:00+00:00"},
                                                  {"shadow", "renamed"},
                                                  {"id2", {{"k", nullptr}}},
                                                  {"task", "not this"},
                                                  {"lang2", nullptr},
                                                  {"nulls", {nullptr, nullptr}},
                                                  {"empty", Json::array()},
                                                  {"timelimit", {1, 2}},
                                                  {"x-conveyor-key", "k"},
                                                  {"zz", "last"},
                                                  {"\xc3\xa9", "non-ascii name"},
                                                  {"bad\xff", "invalid name"}}});
    cases.push_back(TaskMessage{
        .id = "id-5", .name = "t", .time_limit = 3, .extra_headers = {{"timelimit", {1, 2}}}});
    // Extra headers that are not an object (left out, as encode leaves them), a null one under
    // the name of a header encode sets, names with quotes, control characters and DEL.
    for (Json odd : {Json("text"), Json::array({1}), Json(), Json(3)})
        cases.push_back(TaskMessage{.id = "id-6", .name = "t", .extra_headers = odd});
    cases.push_back(TaskMessage{
        .id = "id-7",
        .name = "t",
        .extra_headers = {{"id", nullptr}, {"q\"uote", 1}, {"c\x01trl\n", 2}, {"del\x7f", 3}}});
    for (auto& t : cases) {
        auto e = codec::encode(t);
        EXPECT_EQ(codec::headers_text(t), sqlite::headers_json(e)) << t.id;
        EXPECT_EQ(codec::encode_body(t), e.body) << t.id;
        EXPECT_EQ(sqlite::props_json(t), sqlite::props_json(e)) << t.id;
    }
    // And it is what a worker reads back.
    auto back = sqlite::make_envelope(sqlite::props_json(cases[1]), codec::headers_text(cases[1]),
                                      codec::encode_body(cases[1]));
    auto t = codec::decode(back);
    ASSERT_TRUE(t) << t.error().message;
    EXPECT_EQ(t->name, "orders.bill");
    EXPECT_EQ(t->retries, 3);
    EXPECT_EQ(t->priority, 200);
    EXPECT_EQ(t->kwargs, cases[1].kwargs);
    EXPECT_EQ(t->args[2], "caf\xc3\xa9");
    EXPECT_EQ(t->args[3], "bad \xef\xbf\xbd utf-8");  // as the tree wrote it: U+FFFD
}
