#pragma once
// Tasks whose encoded message the engines write without building it (codec::headers_text,
// codec::write_headers, encode_body): each covers a way the written message could differ from
// codec::encode's.

#include <chrono>
#include <string>
#include <vector>

#include "conveyor/task.hpp"

namespace testsupport {

inline std::vector<conveyor::TaskMessage> encoding_cases() {
    using namespace conveyor;
    std::vector<TaskMessage> cases;
    cases.push_back(TaskMessage{.id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", .name = "a.b"});
    cases.push_back(TaskMessage{
        .id = "id-2",
        .name = "orders.bill",
        .args = {1, "two", "caf\xc3\xa9", "bad \xff utf-8", "quote \" back\\slash", nullptr},
        .kwargs = {{"k", {{"nested", {1.5, true}}}}, {"\t", "tab"}},
        .embed = {{"callbacks", {{{"task", "next"}}}}},
        .retries = 3,
        .eta = TimePoint(std::chrono::seconds(1900000000)),
        .expires = TimePoint(std::chrono::seconds(1900003600)),
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
    // Numbers past 32 bits, below zero and past 63 bits; a header named as the one a publisher
    // adds for its time of sending.
    cases.push_back(TaskMessage{.id = "id-8",
                                .name = "t",
                                .retries = -2,
                                .group_index = 0,
                                .max_retries = 2147483647,
                                .extra_headers = {{"big", 5000000000LL},
                                                  {"neg", -3},
                                                  {"u64", 18446744073709551615ULL},
                                                  {"real", 0.1},
                                                  {"x-conveyor-sent-at", 5}}});
    return cases;
}

}  // namespace testsupport
