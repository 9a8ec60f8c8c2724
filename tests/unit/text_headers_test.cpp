// The sqlite engine decodes a task from its stored headers as text (codec::TextHeaders, read in
// place by simdjson), without the JSON tree the rest of Conveyor reads (codec::JsonHeaders over
// detail::parse_json, as make_envelope builds it). Both must give the same task, or the same
// refusal; text the flat reader cannot read the same way it must say so.
#include "core/text_headers.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/codec.hpp"
#include "core/json_bounds.hpp"

using namespace conveyor;

namespace {

/// A task as encoded again, with what encoding leaves out; or the refusal.
std::string outcome(const Result<TaskMessage>& t) {
    if (!t) return "refused: " + t.error().message;
    auto again = codec::encode(*t);
    return again.headers.dump() + again.body + t->extra_headers.dump() + t->reply_to + "|" +
           t->correlation_id + "|" + std::to_string(t->priority);
}

codec::MessageView view(const codec::Headers& h, const std::string& body) {
    return codec::MessageView{.content_type = codec::kJson,
                              .correlation_id = "corr",
                              .reply_to = "replies",
                              .priority = 7,
                              .headers = h,
                              .body = body};
}

/// The tree's way, as the sqlite engine builds an envelope (text that is not JSON: no headers).
std::string as_tree(const std::string& text, const std::string& body) {
    Json tree = detail::parse_json(text);
    if (tree.is_discarded()) tree = Json::object();
    const codec::JsonHeaders h(tree);
    return outcome(codec::decode(view(h, body), 4096));
}

const std::string kBody = R"([[1, "two"], {"k": [3]}, {"callbacks": null}])";

/// Same task or refusal both ways; and every header reads the same, by name and as JSON.
void expect_same(const std::string& text, const std::string& label,
                 const std::string& body = kBody) {
    const codec::TextHeaders flat(text);
    ASSERT_TRUE(flat.readable()) << label;
    EXPECT_EQ(outcome(codec::decode(view(flat, body), 4096)), as_tree(text, body)) << label;
    Json tree = detail::parse_json(text);
    const codec::JsonHeaders h(tree);
    EXPECT_EQ(flat.is_table(), h.is_table()) << label;
    EXPECT_EQ(flat.too_deep(), h.too_deep()) << label;
    std::vector<std::string> names;
    flat.names([&](std::string_view k) { names.emplace_back(k); });
    for (auto& k : names) {
        auto a = flat.find(k), b = h.find(k);
        ASSERT_TRUE(a && b) << label << ": " << k;
        EXPECT_EQ(int(a->kind), int(b->kind)) << label << ": " << k;
        EXPECT_EQ(a->boolean, b->boolean) << label << ": " << k;
        EXPECT_EQ(a->integer, b->integer) << label << ": " << k;
        EXPECT_EQ(a->unsigned_integer, b->unsigned_integer) << label << ": " << k;
        EXPECT_EQ(a->real, b->real) << label << ": " << k;
        EXPECT_EQ(a->text, b->text) << label << ": " << k;
        EXPECT_EQ(flat.json(k), h.json(k)) << label << ": " << k;
    }
    std::size_t tree_names = 0;
    h.names([&](std::string_view k) {
        ++tree_names;
        EXPECT_NE(std::find(names.begin(), names.end(), k), names.end()) << label << ": " << k;
    });
    EXPECT_LE(tree_names, names.size()) << label;
    EXPECT_FALSE(flat.find("absent-name")) << label;
    EXPECT_TRUE(flat.json("absent-name").is_null()) << label;
}

std::string nested(int levels) {
    std::string s = R"({"task": "t", "id": "i", "x-deep": )";
    for (int i = 0; i < levels - 1; ++i) s += i % 2 ? R"({"k": )" : "[";
    s += "1";
    for (int i = levels - 2; i >= 0; --i) s += i % 2 ? "}" : "]";
    return s + "}";
}

}  // namespace

TEST(TextHeaders, ATaskDecodedFromStoredTextIsTheTaskDecodedFromItsJsonTree) {
    const Json every = {{"task", "orders.bill"},
                        {"id", "id-1"},
                        {"retries", 3},
                        {"max_retries", 9},
                        {"eta", "2030-01-02T03:04:05.123456+00:00"},
                        {"expires", "2031-01-02T03:04:05+00:00"},
                        {"timelimit", {30, 12.5}},
                        {"root_id", "r"},
                        {"parent_id", "p"},
                        {"group", "g"},
                        {"group_index", 4},
                        {"origin", "gen1@host"},
                        {"ignore_result", true},
                        {"shadow", "renamed"},
                        {"argsrepr", "***"},
                        {"x-extra", {{"nested", {1, 2, {{"deep", nullptr}}}}}},
                        {"x-conveyor-sent-at", 1700000000000LL},
                        {"float", 0.25},
                        {"huge", 18446744073709551615ULL}};
    std::vector<std::pair<std::string, std::string>> cases = {
        {"Conveyor's own", codec::encode(TaskMessage{.id = "x", .name = "a.b"}).headers.dump()},
        {"every field", every.dump()},
        {"spaced", " {\n\t\"task\" : \"t\" ,\r\n \"id\":\"i\" } "},
        {"a name twice (the last counts)",
         R"({"task": "first", "id": "i", "task": "orders.bill", "x": 1, "x": [2]})"},
        {"escapes", R"({"task": "a\"b\\c\u00e9\ud83d\ude00\/", "id": "i\u0000x", "k\n": "\t"})"},
        {"an empty name", R"({"": 1, "task": "t", "id": "i", "x": {"": [{"": null}]}})"},
        {"nulls", R"({"task": "t", "id": "i", "eta": null, "timelimit": null, "group": null})"},
        {"integers at the edges",
         R"({"task": "t", "id": "i", "a": -9223372036854775808, "b": 9223372036854775807,
             "c": 9223372036854775808, "d": 18446744073709551615, "e": 0, "f": -1})"},
        {"reals", R"({"task": "t", "id": "i", "a": 1e2, "b": -0.0, "c": 1.5E-300, "d": 2.0})"},
        {"retries a real", R"({"task": "t", "id": "i", "retries": 3.0})"},
        {"retries a string", R"({"task": "t", "id": "i", "retries": "x"})"},
        {"retries negative", R"({"task": "t", "id": "i", "retries": -1})"},
        {"retries too many", R"({"task": "t", "id": "i", "retries": 5000000000})"},
        {"eta garbage", R"({"task": "t", "id": "i", "eta": "tomorrow"})"},
        {"eta a number", R"({"task": "t", "id": "i", "eta": 5})"},
        {"timelimit shape", R"({"task": "t", "id": "i", "timelimit": [1]})"},
        {"timelimit a string", R"({"task": "t", "id": "i", "timelimit": "60"})"},
        {"timelimit too long", R"({"task": "t", "id": "i", "timelimit": [1e12, null]})"},
        {"parent_id a number", R"({"task": "t", "id": "i", "parent_id": 3})"},
        {"ignore_result a string", R"({"task": "t", "id": "i", "ignore_result": "yes"})"},
        {"no task", R"({"id": "i"})"},
        {"task a number", R"({"task": 12, "id": "i"})"},
        {"task an object", R"({"task": {"name": "t"}, "id": "i"})"},
        {"empty task", R"({"task": "", "id": "i"})"},
        {"no id", R"({"task": "t"})"},
        {"unsupported compression", R"({"task": "t", "id": "i", "compression": "bz2"})"},
        {"compressed garbage", R"({"task": "t", "id": "i", "compression": "zlib"})"},
        {"not an object: an array", R"([{"task": "t", "id": "i"}])"},
        {"not an object: a string", R"("task")"},
        {"not an object: null", "null"},
        {"empty object", "{}"},
    };
    for (auto& [label, text] : cases) expect_same(text, label);
    const std::string bare = R"({"task": "t", "id": "i"})";
    expect_same(bare, "body not JSON", "not json");
    expect_same(bare, "body of two elements", R"([[1], {}])");
    expect_same("{}", "protocol v1",
                R"({"task": "v1.task", "id": "v1", "args": [1], "retries": 2})");
    expect_same(bare, "body too big", std::string(5000, ' '));
    // A decoded task is a task, not only the same refusal twice.
    const std::string every_text = every.dump();
    const codec::TextHeaders flat(every_text);
    auto t = codec::decode(view(flat, kBody), 4096);
    ASSERT_TRUE(t) << t.error().message;
    EXPECT_EQ(t->name, "orders.bill");
    EXPECT_EQ(t->retries, 3);
    EXPECT_EQ(t->extra_headers.at("x-extra"), every.at("x-extra"));
    EXPECT_EQ(t->args, Json({1, "two"}));
}

TEST(TextHeaders, NestingIsRefusedAtTheSameDepthAsTheJsonTree) {
    for (int levels : {1, 2, 126, 127, 128, 129, 130, 500, 1000}) {
        auto text = nested(levels);
        const codec::TextHeaders flat(text);
        // Its parser refuses the bound's depth and beyond (detail::bound_depth): that text
        // is left to the tree, which refuses what is deeper than the bound.
        if (levels < int(detail::kMaxJsonDepth))
            expect_same(text, std::to_string(levels) + " levels");
        else
            EXPECT_FALSE(flat.readable()) << levels;
        EXPECT_EQ(flat.too_deep(), levels > int(detail::kMaxJsonDepth)) << levels;
    }
}

TEST(TextHeaders, AParserOfItsOwnIsBoundedAsTheThreadsIs) {
    // Past the reused parser's size, or while another holds it: too deep is never readable
    // (else too_deep() would take it for shallow, unscanned).
    std::string big = nested(129);
    big.insert(big.size() - 1, std::string(70000, ' '));
    const codec::TextHeaders alone(big);
    EXPECT_FALSE(alone.readable());
    EXPECT_TRUE(alone.too_deep());
    const std::string three = nested(3), deep = nested(129), hundred = nested(100);
    const codec::TextHeaders holder(three);
    ASSERT_TRUE(holder.readable());
    const codec::TextHeaders second(deep);
    EXPECT_FALSE(second.readable());
    EXPECT_TRUE(second.too_deep());
    const codec::TextHeaders shallow(hundred);
    EXPECT_TRUE(shallow.readable());
    EXPECT_FALSE(shallow.too_deep());
}

TEST(TextHeaders, TextNotReadTheTreesWayIsLeftToTheTree) {
    // Each of these the tree reads otherwise (or not at all): the caller must take the tree.
    for (std::string text : {
             std::string(R"({"task": "t", "id": "i", "retries": -0})"),              // signed zero
             std::string(R"({"task": "t", "id": "i", "n": 18446744073709551616})"),  // 65 bits
             std::string("{\"task\": \"t\", \"id\": \"\xff\"}"),                     // not UTF-8
             std::string(R"({"task": "t", "id": )"),                                 // cut short
             std::string(""), std::string("{} {}"),
             nested(1100),  // beyond simdjson's depth
         }) {
        const codec::TextHeaders flat(text);
        EXPECT_FALSE(flat.readable()) << text.substr(0, 60);
        EXPECT_FALSE(flat.is_object());
        EXPECT_FALSE(flat.find("task"));
        bool any = false;
        flat.names([&](std::string_view) { any = true; });
        EXPECT_FALSE(any);
    }
    // Past kMaxNames names the tree's index looks them up (a walk over the names each would
    // make decoding quadratic in them); up to it the text reads as the tree.
    for (std::size_t n :
         {codec::TextHeaders::kMaxNames, codec::TextHeaders::kMaxNames + 1, std::size_t(10000)}) {
        std::string text = R"({"task": "t", "id": "i")";
        for (std::size_t i = 2; i < n; ++i) text += fmt::format(R"(, "x-{}": {})", i, i);
        text += "}";
        const codec::TextHeaders flat(text);
        EXPECT_EQ(flat.readable(), n <= codec::TextHeaders::kMaxNames) << n;
        if (flat.readable()) expect_same(text, fmt::format("{} names", n));
    }
    // "-0" inside a string only costs the slower path.
    EXPECT_FALSE(codec::TextHeaders(R"({"task": "-0,", "id": "i"})").readable());
    EXPECT_TRUE(codec::TextHeaders(R"({"task": "-01", "id": "i"})").readable());
}

TEST(TextHeaders, TwoAtOnceOnOneThreadEachKeepTheirOwnText) {
    // The thread's parser serves one at a time; a second, or a big one, parses on its own.
    const codec::TextHeaders a(R"({"task": "first", "id": "1"})");
    {
        const codec::TextHeaders b(R"({"task": "second", "id": "2"})");
        const std::string big_text =
            R"({"task": "big", "pad": ")" + std::string(100000, 'x') + R"("})";
        const codec::TextHeaders big(big_text);
        ASSERT_TRUE(b.readable() && big.readable());
        EXPECT_EQ(b.find("task")->text, "second");
        EXPECT_EQ(big.find("task")->text, "big");
        EXPECT_EQ(a.find("task")->text, "first");
    }
    const codec::TextHeaders c(R"({"task": "third"})");  // the thread's parser again
    EXPECT_EQ(c.find("task")->text, "third");
    EXPECT_EQ(a.find("task")->text, "first");
}
