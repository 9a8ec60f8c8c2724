// The classic php-amqplib recipe (tests/interop/peers/recipe: setup, producer, consumer, as
// tutorials write them: a non-durable direct exchange and queue, routing key '', transient
// messages, no_ack) runs unchanged beside a `conveyor worker`, in either start order; conflicts
// say how to fix them; queues owned elsewhere are used as they are.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "interop/support.hpp"

using namespace conveyor;
using namespace std::chrono_literals;
using testsupport::eventually;
using testsupport::Process;
using testsupport::read_file;
using testsupport::TempDir;

namespace {

const std::string kRecipe = interop::kPeers + "/recipe/";

/// A vhost of the test's own, so the recipe's fixed names never meet another test's.
struct Vhost {
    std::string name = testsupport::unique_name("recipe");
    Vhost() {
        ctl({"add_vhost", name});
        ctl({"set_permissions", "-p", name, "guest", ".*", ".*", ".*"});
    }
    ~Vhost() { ctl({"delete_vhost", name}); }
    std::string url() const {
        return "amqp://guest:guest@127.0.0.1:" + interop::amqp_port() + "/" + name;
    }
    static void ctl(std::vector<std::string> args) {
        args.insert(args.begin(), {CONVEYOR_SOURCE_DIR "/scripts/rabbitmq-node.sh", "ctl",
                                   testsupport::shared_rabbitmq_dir()});
        auto [rc, out] = testsupport::run(args);
        EXPECT_EQ(rc, 0) << out;
    }
};

Json php(const Vhost& v, const std::string& script, std::vector<std::string> args = {}) {
    std::vector<std::string> argv = {"php", kRecipe + script};
    argv.insert(argv.end(), args.begin(), args.end());
    auto [rc, out] = testsupport::run(
        argv, {"AMQP_PORT=" + interop::amqp_port(), "AMQP_VHOST=" + v.name}, {}, 60s);
    EXPECT_EQ(rc, 0) << script << ": " << out;
    return interop::last_json(out);
}

/// The recipe's topology as configuration, and a task that writes each payload to DIR/got.
std::string recipe_config(const Vhost& v, const TempDir& dir, bool durable_false = true) {
    std::string flags = durable_false ? "durable = false\n" : "";
    return "broker = \"" + v.url() + "\"\n" +                                       //
           "[[exchange]]\nname = \"task_exchange\"\ntype = \"direct\"\n" + flags +  //
           "[[queue]]\nname = \"task_queue\"\nformat = \"raw\"\ntask = \"orders.import\"\n" +
           flags +  //
           "[[binding]]\nexchange = \"task_exchange\"\nqueue = \"task_queue\"\nrouting_key = "
           "\"\"\n" +
           "[[task]]\nname = \"orders.import\"\nqueue = \"task_queue\"\nexec = [\"/bin/sh\", "
           "\"-c\", \"cat >> " +
           dir.file("got") + "\"]\n";
}

std::pair<int, std::string> cli(const TempDir& dir, std::vector<std::string> args) {
    args.insert(args.begin(), {CONVEYOR_CLI, "--config", dir.file("conveyor.toml")});
    return testsupport::run(args, {}, dir.path().string());
}

/// Payloads (args[0]) the worker's task wrote, one task JSON per line.
std::vector<Json> payloads(const TempDir& dir) {
    std::vector<Json> out;
    std::istringstream in(read_file(dir.file("got")));
    for (std::string line; std::getline(in, line);)
        if (auto j = Json::parse(line, nullptr, false); j.is_object()) out.push_back(j["args"][0]);
    return out;
}

void recipe_and_conveyor_work_together(const Vhost& v, const TempDir& dir) {
    Process worker({CONVEYOR_CLI, "--config", dir.file("conveyor.toml"), "worker"},
                   dir.file("worker.out"), {}, dir.path().string());
    // The recipe's producer feeds the Conveyor worker.
    auto sent = php(v, "producer.php", {"Task Data 1", "Task Data 2", "{\"order\": 3}"});
    EXPECT_EQ(sent["published"], 3);
    ASSERT_TRUE(eventually([&] { return payloads(dir).size() == 3; }, 30s))
        << read_file(dir.file("worker.out"));
    // Handlers run side by side: any order.
    auto got = payloads(dir);
    std::sort(got.begin(), got.end());
    EXPECT_EQ(Json(got), Json::array({Json({{"order", 3}}), "Task Data 1", "Task Data 2"}));
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(30s), 0) << read_file(dir.file("worker.out"));
    EXPECT_EQ(read_file(dir.file("worker.out")).find("PRECONDITION"), std::string::npos);
    // And the recipe's consumer reads what Conveyor publishes to the exchange: the body itself.
    auto [rc, id] = cli(dir, {"enqueue", "orders.import", "--exchange", "task_exchange", "--args",
                              R"(["from conveyor"])"});
    ASSERT_EQ(rc, 0) << id;
    auto [rc2, id2] = cli(dir, {"enqueue", "orders.import", "--exchange", "task_exchange", "--args",
                                R"([{"order": 4}])"});
    ASSERT_EQ(rc2, 0) << id2;
    auto read = php(v, "consumer.php", {"2"});
    EXPECT_EQ(read["bodies"], Json::array({"from conveyor", R"({"order":4})"}));
}

}  // namespace

TEST(Recipe, RecipeFirstThenConveyor) {
    Vhost v;
    TempDir dir;
    testsupport::write_file(dir.file("conveyor.toml"), recipe_config(v, dir));
    php(v, "setup.php");
    auto [rc, out] = cli(dir, {"topology", "apply"});
    ASSERT_EQ(rc, 0) << out;
    recipe_and_conveyor_work_together(v, dir);
}

TEST(Recipe, ConveyorFirstThenRecipe) {
    Vhost v;
    TempDir dir;
    testsupport::write_file(dir.file("conveyor.toml"), recipe_config(v, dir));
    auto [rc, out] = cli(dir, {"topology", "apply"});
    ASSERT_EQ(rc, 0) << out;
    php(v, "setup.php");  // its own declarations succeed against Conveyor's
    recipe_and_conveyor_work_together(v, dir);
}

TEST(Recipe, AConflictSaysWhichKeyFixesIt) {
    Vhost v;
    TempDir dir;
    php(v, "setup.php");
    // Conveyor's defaults (durable) against the recipe's non-durable exchange and queue.
    testsupport::write_file(dir.file("conveyor.toml"), recipe_config(v, dir, false));
    auto [rc, out] = cli(dir, {"topology", "apply"});
    EXPECT_EQ(rc, 2) << out;
    EXPECT_NE(out.find("exchange 'task_exchange' exists with durable 'false', and Conveyor "
                       "declares 'true': set durable = false in [[exchange]] 'task_exchange', or "
                       "passive = true to use it as it is"),
              std::string::npos)
        << out;
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
    // The exchange fixed, the queue is next.
    std::string cfg = recipe_config(v, dir, false);
    cfg.insert(cfg.find("[[queue]]"), "durable = false\n");
    testsupport::write_file(dir.file("conveyor.toml"), cfg);
    auto [rc2, out2] = cli(dir, {"topology", "apply"});
    EXPECT_EQ(rc2, 2) << out2;
    EXPECT_NE(out2.find("set durable = false in [[queue]] 'task_queue', or passive = true"),
              std::string::npos)
        << out2;
    // A worker meets the conflict on one queue and serves its other queue.
    testsupport::write_file(dir.file("conveyor.toml"),
                            cfg +
                                "[[queue]]\nname = \"other\"\n[[task]]\nname = \"other.task\"\n"
                                "queue = \"other\"\nexec = \"echo ran >> " +
                                dir.file("other") + "\"\n");
    Process worker({CONVEYOR_CLI, "--config", dir.file("conveyor.toml"), "worker"},
                   dir.file("worker.out"), {}, dir.path().string());
    auto [rc3, id] = cli(dir, {"enqueue", "other.task"});
    ASSERT_EQ(rc3, 0) << id;
    EXPECT_TRUE(eventually([&] { return read_file(dir.file("other")) == "ran\n"; }, 30s))
        << read_file(dir.file("worker.out"));
    std::string log = read_file(dir.file("worker.out"));
    EXPECT_NE(log.find("not consuming from queue 'task_queue': queue 'task_queue' exists with "
                       "durable 'false'"),
              std::string::npos)
        << log;
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(30s), 0) << read_file(dir.file("worker.out"));
}

TEST(Recipe, APassiveQueueOwnedElsewhereIsUsedAsItIs) {
    Vhost v;
    TempDir dir;
    // Another team's queue, with arguments Conveyor knows nothing of.
    auto [rc0, out0] = testsupport::run(
        {"php", "-r",
         "require_once '/usr/share/php/PhpAmqpLib/autoload.php';"
         "$c = new PhpAmqpLib\\Connection\\AMQPStreamConnection('127.0.0.1', getenv('AMQP_PORT'), "
         "'guest', 'guest', getenv('AMQP_VHOST'));"
         "$ch = $c->channel();"
         "$ch->queue_declare('owned', false, true, false, false, false, new "
         "PhpAmqpLib\\Wire\\AMQPTable(['x-message-ttl' => 600000, 'x-max-length' => 1000, "
         "'x-team' => 'billing']));"
         "echo json_encode(['ok' => true]), \"\\n\";"},
        {"AMQP_PORT=" + interop::amqp_port(), "AMQP_VHOST=" + v.name});
    ASSERT_EQ(rc0, 0) << out0;
    testsupport::write_file(dir.file("conveyor.toml"),
                            "broker = \"" + v.url() +
                                "\"\n[[queue]]\nname = \"owned\"\npassive = true\n"
                                "[[task]]\nname = \"t\"\nqueue = \"owned\"\nexec = \"echo ran >> " +
                                dir.file("ran") + "\"\n");
    auto [rc, out] = cli(dir, {"topology", "apply"});
    ASSERT_EQ(rc, 0) << out;
    Process worker({CONVEYOR_CLI, "--config", dir.file("conveyor.toml"), "worker"},
                   dir.file("worker.out"), {}, dir.path().string());
    auto [rc2, id] = cli(dir, {"enqueue", "t"});
    ASSERT_EQ(rc2, 0) << id;
    EXPECT_TRUE(eventually([&] { return read_file(dir.file("ran")) == "ran\n"; }, 30s))
        << read_file(dir.file("worker.out"));
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(30s), 0);
    // A passive queue that does not exist is named.
    testsupport::write_file(dir.file("conveyor.toml"),
                            "broker = \"" + v.url() +
                                "\"\n[[queue]]\nname = \"nobody-declared-this\"\npassive = true\n");
    auto [rc3, out3] = cli(dir, {"topology", "apply"});
    EXPECT_EQ(rc3, 2) << out3;
    EXPECT_NE(out3.find("queue 'nobody-declared-this' does not exist (it is passive = true"),
              std::string::npos)
        << out3;
}

TEST(Recipe, BodiesTravelByteForByteBothWays) {
    Vhost v;
    TempDir dir;
    std::filesystem::create_directories(dir.file("in"));
    std::filesystem::create_directories(dir.file("out"));
    std::filesystem::create_directories(dir.file("php"));
    // Every byte value; text beyond ASCII; nothing at all; 16 MiB (the largest body a worker
    // takes by default) of every byte value; a transient message as the recipe sends it; JSON
    // with spacing that parsing would lose.
    std::string every;
    for (int i = 0; i < 1024; ++i) every.push_back(char(i % 256));
    std::string large(16u << 20, '\0');
    std::uint32_t x = 7;
    for (auto& c : large) c = char((x = x * 1664525u + 1013904223u) >> 24);
    struct Body {
        std::string bytes, type;
    };
    std::map<std::string, Body> bodies = {
        {"binary", {every, "application/octet-stream"}},
        {"utf8",
         {"Gr\xc3\xbc\xc3\x9f"
          "e, \xe6\xb3\xa8\xe6\x96\x87 \xe2\x82\xac\xf0\x9f\x98\x80\n",
          "text/plain; charset=utf-8"}},
        {"empty", {"", ""}},
        {"large", {large, "application/octet-stream"}},
        {"transient-text", {"Task Data", ""}},
        {"json-spaced", {"  {\"order\" :  7 }\n", "application/json"}},
    };
    for (auto& [name, b] : bodies) {
        testsupport::write_file(dir.file("in/" + name + ".body"), b.bytes);
        if (!b.type.empty()) testsupport::write_file(dir.file("in/" + name + ".type"), b.type);
    }
    // bytes_in: a raw queue whose command gets the body as published on stdin.
    testsupport::write_file(
        dir.file("conveyor.toml"),
        "broker = \"" + v.url() + "\"\n" +
            "[[queue]]\nname = \"bytes_in\"\nformat = \"raw\"\ntask = \"bytes.in\"\n"
            "[[queue]]\nname = \"bytes_out\"\nformat = \"raw\"\ntask = \"bytes.out\"\n"
            "[[task]]\nname = \"bytes.in\"\nqueue = \"bytes_in\"\ninput = \"body\"\n"
            "exec = [\"/bin/sh\", \"-c\", \"cat > " +
            dir.file("out") +
            "/$CONVEYOR_TASK_ID.body; printf %s \\\"$CONVEYOR_CONTENT_TYPE\\\" > " +
            dir.file("out") + "/$CONVEYOR_TASK_ID.type\"]\n" +
            "[[task]]\nname = \"bytes.out\"\nqueue = \"bytes_out\"\n");
    auto [rc, out] = cli(dir, {"topology", "apply"});
    ASSERT_EQ(rc, 0) << out;
    Process worker(
        {CONVEYOR_CLI, "--config", dir.file("conveyor.toml"), "worker", "--queues", "bytes_in"},
        dir.file("worker.out"), {}, dir.path().string());

    // php-amqplib -> a Conveyor worker's command.
    auto [prc, pout] =
        testsupport::run({"php", interop::kPeers + "/php_bytes.php", interop::amqp_port(),
                          "publish", "", "bytes_in", dir.file("in")},
                         {"AMQP_VHOST=" + v.name}, {}, 60s);
    ASSERT_EQ(prc, 0) << pout;
    ASSERT_TRUE(eventually(
        [&] {
            for (auto& [name, b] : bodies)
                if (!std::filesystem::exists(dir.file("out/" + name + ".type"))) return false;
            return true;
        },
        60s))
        << read_file(dir.file("worker.out"));
    for (auto& [name, b] : bodies) {
        EXPECT_TRUE(read_file(dir.file("out/" + name + ".body")) == b.bytes) << name;
        EXPECT_EQ(read_file(dir.file("out/" + name + ".type")), b.type) << name;
    }
    worker.signal(SIGTERM);
    EXPECT_EQ(worker.wait(30s), 0) << read_file(dir.file("worker.out"));

    // conveyor enqueue --body-file -> a plain php-amqplib consumer.
    for (auto& [name, b] : bodies) {
        std::vector<std::string> args = {
            "enqueue", "bytes.out", "--id", name, "--body-file", dir.file("in/" + name + ".body")};
        if (!b.type.empty()) args.insert(args.end(), {"--content-type", b.type});
        auto [erc, eout] = cli(dir, args);
        ASSERT_EQ(erc, 0) << eout;
    }
    auto [crc, cout] =
        testsupport::run({"php", interop::kPeers + "/php_bytes.php", interop::amqp_port(),
                          "consume", "bytes_out", std::to_string(bodies.size()), dir.file("php")},
                         {"AMQP_VHOST=" + v.name}, {}, 90s);
    ASSERT_EQ(crc, 0) << cout;
    auto got = interop::last_json(cout)["messages"];
    ASSERT_EQ(got.size(), bodies.size()) << cout.substr(0, 2000);
    for (auto& m : got) {
        auto name = m["correlation_id"].get<std::string>();
        ASSERT_TRUE(bodies.contains(name)) << name;
        const auto& b = bodies[name];
        EXPECT_TRUE(read_file(m["file"].get<std::string>()) == b.bytes) << name;
        EXPECT_EQ(m["size"], b.bytes.size()) << name;
        // The type given, else what the bytes are.
        std::string type = !b.type.empty() ? b.type : "text/plain";
        EXPECT_EQ(m["content_type"], type) << name;
        EXPECT_EQ(m["delivery_mode"], 2) << name;  // Conveyor publishes persistent messages
    }
}
