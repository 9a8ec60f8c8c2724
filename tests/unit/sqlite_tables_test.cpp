// How the sqlite engine stores a message's properties and a task's headers: written without a
// JSON tree, the same text the tree gave, read back as they were.
#include "broker/sqlite/sqlite_tables.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/codec.hpp"
#include "support/encoding_cases.hpp"

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
    auto cases = testsupport::encoding_cases();
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
