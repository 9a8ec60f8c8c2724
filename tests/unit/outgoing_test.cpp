// The one way a task becomes a message to publish: detail::make_outgoing.
#include "client/outgoing.hpp"

#include <gtest/gtest.h>

#include "core/codec.hpp"

namespace {

using conveyor::Errc;
using conveyor::Json;
using conveyor::SystemClock;
using conveyor::TaskMessage;
using conveyor::detail::Destination;
using conveyor::detail::make_outgoing;
namespace codec = conveyor::codec;

TaskMessage task(Json args = Json(), Json kwargs = Json()) {
    TaskMessage t;
    t.name = "orders.ship";
    t.args = std::move(args);
    t.kwargs = std::move(kwargs);
    return t;
}

TEST(Outgoing, FillsTheIdOriginAndEmptyArgumentsAndAddressesTheMessage) {
    auto m = make_outgoing(task(), Destination{.queue = "shipping"});
    ASSERT_TRUE(m) << m.error().message;
    EXPECT_FALSE(m->task_id.empty());
    EXPECT_EQ(codec::envelope_id(m->envelope), m->task_id);
    EXPECT_EQ(m->queue, "shipping");
    EXPECT_FALSE(m->not_before);
    auto decoded = codec::decode(m->envelope, 1 << 20);
    ASSERT_TRUE(decoded) << decoded.error().message;
    EXPECT_EQ(decoded->args, Json::array());
    EXPECT_EQ(decoded->kwargs, Json::object());
    EXPECT_FALSE(decoded->origin.empty());
    EXPECT_EQ(decoded->root_id, m->task_id);
}

TEST(Outgoing, KeepsAGivenIdAndDelaysByTheEta) {
    auto t = task(Json::array({1}));
    t.id = "fixed-id";
    t.eta = SystemClock::now() + std::chrono::hours(1);
    auto m = make_outgoing(t, Destination{.queue = "q"});
    ASSERT_TRUE(m);
    EXPECT_EQ(m->task_id, "fixed-id");
    ASSERT_TRUE(m->not_before);
    EXPECT_EQ(*m->not_before, *t.eta);
}

TEST(Outgoing, RefusesWhatNoWorkerWouldTake) {
    EXPECT_EQ(make_outgoing(task(Json::object()), {}).error().code, Errc::invalid_argument);
    EXPECT_EQ(make_outgoing(task(Json::array(), Json::array()), {}).error().code,
              Errc::invalid_argument);
    Json deep = Json::array();
    for (int i = 0; i < 200; ++i) deep = Json::array({deep});
    auto m = make_outgoing(task(deep), {});
    ASSERT_FALSE(m);
    EXPECT_NE(m.error().message.find("nest deeper"), std::string::npos);
    auto t = task();
    t.priority = 256;
    EXPECT_FALSE(make_outgoing(t, {}));
    t = task();
    t.name.clear();
    EXPECT_FALSE(make_outgoing(t, {}));
}

TEST(Outgoing, ARawDestinationGetsTheBareBody) {
    auto t = task(Json::array({Json{{"order", 7}}}));
    auto m = make_outgoing(t, Destination{.queue = "plain", .raw = true});
    ASSERT_TRUE(m) << m.error().message;
    EXPECT_EQ(m->envelope.body, R"({"order":7})");
    EXPECT_FALSE(m->task_id.empty());
}

}  // namespace
