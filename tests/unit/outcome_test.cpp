// What becomes of a finished task: detail::decide, without a worker around it.
#include "worker/outcome.hpp"

#include <gtest/gtest.h>

namespace {

using conveyor::detail::decide;
using conveyor::detail::Decision;
using conveyor::detail::JobState;
using conveyor::detail::Outcome;
using Action = Decision::Action;
using namespace std::chrono_literals;

Outcome failed(std::string type = "ValueError", std::string message = "bad") {
    Outcome o;
    o.kind = Outcome::Kind::failure;
    o.exc_type = std::move(type);
    o.message = std::move(message);
    return o;
}

JobState job(int retries = 0, int max_retries = 3) {
    JobState j;
    j.retries = retries;
    j.policy.max_retries = max_retries;
    j.policy.backoff_base = 2.0;
    j.policy.jitter = false;
    return j;
}

TEST(Outcome, ASuccessIsAcked) { EXPECT_EQ(decide(Outcome{}, job(), 0.5).action, Action::succeed); }

TEST(Outcome, AFailureWithRetriesLeftIsRetriedAfterThePolicysDelay) {
    auto d = decide(failed(), job(2), 0.5);
    EXPECT_EQ(d.action, Action::retry);
    EXPECT_EQ(d.delay, 8s);  // 2 s * 2^2, no jitter
    EXPECT_EQ(d.failure, "ValueError: bad");
}

TEST(Outcome, JitterSpreadsTheDelayBelowItsBound) {
    auto j = job(2);
    j.policy.jitter = true;
    EXPECT_EQ(decide(failed(), j, 0.25).delay, 2s);
    EXPECT_EQ(decide(failed(), j, 0.0).delay, 0s);
}

TEST(Outcome, TheHandlersOwnRetryDelayWins) {
    auto o = failed();
    o.retry_after = 1500ms;
    EXPECT_EQ(decide(o, job(), 0.5).delay, 1500ms);
}

TEST(Outcome, AFailureOutOfRetriesIsDeadLetteredSayingHowManyItHad) {
    auto d = decide(failed(), job(3, 3), 0.5);
    EXPECT_EQ(d.action, Action::dead_letter);
    EXPECT_EQ(d.reason, "failed after 3 retries: ValueError: bad");
}

TEST(Outcome, ARejectIsDeadLetteredAtOnce) {
    auto o = failed("Reject", "no");
    o.kind = Outcome::Kind::reject;
    auto d = decide(o, job(0, 10), 0.5);
    EXPECT_EQ(d.action, Action::dead_letter);
    EXPECT_EQ(d.reason, "rejected: Reject: no");
}

TEST(Outcome, AKeyedTaskRetriesInPlaceToKeepItsOrder) {
    auto j = job(0);
    j.keyed = true;
    auto d = decide(failed(), j, 0.5);
    EXPECT_EQ(d.action, Action::retry_in_place);
    EXPECT_EQ(d.delay, 2s);
}

TEST(Outcome, ALostLeaseIsAbandonedWhateverTheHandlerDid) {
    auto j = job();
    j.lease_lost = true;
    j.shutting_down = true;
    j.terminated = true;
    EXPECT_EQ(decide(Outcome{}, j, 0.5).action, Action::abandon);
    EXPECT_EQ(decide(failed(), j, 0.5).action, Action::abandon);
}

TEST(Outcome, AJobStoppedByShutdownIsReleasedNotRetried) {
    auto j = job();
    j.shutting_down = true;
    EXPECT_EQ(decide(failed(), j, 0.5).action, Action::release);
}

TEST(Outcome, RevokedBeforeItRanOrTerminatedWhileRunningIsRevokedSayingWhich) {
    Outcome never;
    never.kind = Outcome::Kind::revoked;
    auto d = decide(never, job(), 0.5);
    EXPECT_EQ(d.action, Action::revoke);
    EXPECT_EQ(d.reason, "revoked");
    auto j = job();
    j.terminated = true;
    d = decide(failed(), j, 0.5);
    EXPECT_EQ(d.action, Action::revoke);
    EXPECT_EQ(d.reason, "terminated");
}

}  // namespace
