// `conveyor scheduler` as real processes: three instances, the leader killed with SIGKILL
// again and again during a per-second schedule, on the sqlite engine (one file) and on
// RabbitMQ (a private node). Every second must fire exactly once, and no fire may come later
// than the failover bound.

#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <map>
#include <memory>
#include <set>

#include "conveyor/broker.hpp"
#include "conveyor/engine.hpp"
#include "core/time.hpp"
#include "support/process.hpp"
#include "support/rabbitmq.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::Process;
using testsupport::TempDir;

namespace {

struct Scheduled {
    std::string id;
    TimePoint scheduled{}, fired{};
};

class Cluster {
  public:
    explicit Cluster(const std::string& url) : url_(url) {
        testsupport::write_file(config_, "broker = \"" + url +
                                             "\"\n"
                                             "[[schedule]]\n"
                                             "name = \"tick\"\n"
                                             "task = \"t.tick\"\n"
                                             "every = 1\n"
                                             "queue = \"ticks\"\n");
        for (int i = 0; i < 3; ++i) slots_.push_back(spawn());
    }

    /// Kills the leader every 3 s for `total`; returns how many leaders were killed.
    std::size_t kill_leaders_for(std::chrono::seconds total) {
        std::size_t killed = 0;
        auto end = std::chrono::steady_clock::now() + total;
        while (std::chrono::steady_clock::now() < end) {
            std::this_thread::sleep_for(3s);
            for (auto& s : slots_)
                if (leads(s)) {
                    s.proc->signal(SIGKILL);
                    s.proc->wait(5s);
                    ++killed;
                    s = spawn();  // a fresh standby takes the slot
                    break;
                }
        }
        for (auto& s : slots_) s.proc->signal(SIGTERM);
        for (auto& s : slots_) EXPECT_TRUE(s.proc->wait(10s));
        return killed;
    }

    /// Every task the schedulers published.
    std::vector<Scheduled> fires() {
        auto b = Broker::open(url_);
        EXPECT_TRUE(b) << b.error().message;
        auto c = (*b)->consume({.queues = {"ticks"}, .prefetch = 500, .name = "check"});
        EXPECT_TRUE(c) << c.error().message;
        std::vector<Scheduled> out;
        for (;;) {
            auto got = (*c)->fetch(500, 1000ms);
            if (!got || got->empty()) break;
            std::vector<Settlement> acks;
            for (auto& d : *got) {
                const Json& h = d.envelope.headers;
                Scheduled s;
                s.id = h.value("id", "");
                s.scheduled = *detail::parse_iso8601(h.value("x-conveyor-scheduled-at", ""));
                s.fired = *detail::parse_iso8601(h.value("x-conveyor-fired-at", ""));
                out.push_back(s);
                acks.push_back(Settlement{Settlement::Kind::ack, d.tag});
            }
            EXPECT_TRUE((*c)->settle(acks));
        }
        return out;
    }

  private:
    struct Slot {
        std::unique_ptr<Process> proc;
        std::string log;
    };
    Slot spawn() {
        Slot s;
        s.log = dir_.file("scheduler-" + std::to_string(started_++) + ".log");
        s.proc =
            std::make_unique<Process>(std::vector<std::string>{CONVEYOR_CLI, "--config", config_,
                                                               "scheduler", "--lease", "2"},
                                      s.log);
        return s;
    }
    /// Its log says it leads (and not, after that, that it stopped leading).
    static bool leads(const Slot& s) {
        auto log = testsupport::read_file(s.log);
        auto lead = log.rfind(": leading");
        return lead != std::string::npos &&
               log.find("no longer leading", lead) == std::string::npos;
    }

    std::string url_;
    TempDir dir_;
    std::string config_ = dir_.file("conveyor.toml");
    std::vector<Slot> slots_;
    int started_ = 0;
};

void expect_every_second_once(std::vector<Scheduled> fires, std::size_t killed, double bound_s) {
    EXPECT_GE(killed, 4u) << "the leader was not found to kill";
    ASSERT_GE(fires.size(), 18u);
    std::map<std::int64_t, std::string> by_second;
    double worst = 0;
    for (auto& f : fires) {
        auto sec = std::chrono::duration_cast<std::chrono::seconds>(f.scheduled.time_since_epoch())
                       .count();
        EXPECT_TRUE(by_second.emplace(sec, f.id).second)
            << "second fired twice: " << detail::format_iso8601(f.scheduled);
        worst = std::max(worst, std::chrono::duration<double>(f.fired - f.scheduled).count());
    }
    auto first = by_second.begin()->first, last = by_second.rbegin()->first;
    EXPECT_EQ(std::int64_t(by_second.size()), last - first + 1)
        << "a second was never fired between the first and the last";
    EXPECT_LE(worst, bound_s) << "a fire came later than the failover bound";
    std::printf("%zu fires, %zu leaders killed, worst lateness %.3f s\n", fires.size(), killed,
                worst);
}

}  // namespace

TEST(SchedulerProcesses, OnSqliteLeaderKilledAgainAndAgainEverySecondFiresExactlyOnce) {
    TempDir dir;
    Cluster c("sqlite://" + dir.file("s.db"));
    auto killed = c.kill_leaders_for(20s);
    // Failover bound: lease (2 s) + one look (0.5 s) + slack for a loaded machine.
    expect_every_second_once(c.fires(), killed, 3.5);
}

TEST(SchedulerProcesses, OnRabbitMqLeaderKilledAgainAndAgainEverySecondFiresExactlyOnce) {
    testsupport::RabbitNode node;
    ASSERT_FALSE(node.url().empty());
    Cluster c(node.url());
    auto killed = c.kill_leaders_for(20s);
    // A killed leader's exclusive queue goes at once; a standby looks every 0.2 s.
    expect_every_second_once(c.fires(), killed, 3.5);
}
