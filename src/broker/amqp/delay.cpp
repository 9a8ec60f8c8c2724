#include "broker/amqp/delay.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "broker/amqp/amqp_names.hpp"

namespace conveyor::amqp {

std::string_view delay_level_name(int level) {
    static const auto names = [] {
        std::array<std::string, kDelayLevels> n;
        for (int i = 0; i < kDelayLevels; ++i)
            n[std::size_t(i)] = fmt::format("conveyor.delay.{}", i);
        return n;
    }();
    return names.at(std::size_t(level));
}

std::string routing_word(std::string_view queue) {
    std::string out;
    out.reserve(queue.size());
    for (char c : queue) {
        switch (c) {
            case '.':
                out += "%2E";
                break;
            case '%':
                out += "%25";
                break;
            case '*':
                out += "%2A";
                break;
            case '#':
                out += "%23";
                break;
            default:
                out += c;
        }
    }
    return out;
}

std::string wait_queue(std::string_view queue, std::string_view task) {
    std::string name = fmt::format("conveyor.wait.{}.{}", routing_word(queue), task);
    if (name.size() <= 255) return name;
    std::uint64_t h = 14695981039346656037ULL;  // FNV-1a: the same name on every host
    for (unsigned char c : name) h = (h ^ c) * 1099511628211ULL;
    name.resize(200);
    return fmt::format("{}.{:016x}", name, h);
}

std::int64_t delay_seconds(std::chrono::milliseconds delay) {
    if (delay.count() <= 0) return 0;
    std::int64_t s = (delay.count() + 999) / 1000;
    return std::min(s, kMaxDelaySeconds);
}

DelayRoute delay_route(std::int64_t seconds, std::string_view queue) {
    seconds = std::clamp<std::int64_t>(seconds, 1, kMaxDelaySeconds);
    DelayRoute r;
    int top = 0;
    for (int level = kDelayLevels - 1; level >= 0; --level) {
        bool bit = (seconds >> level) & 1;
        if (bit && top == 0) top = level;
        r.routing_key += bit ? "1." : "0.";
    }
    r.routing_key += routing_word(queue);
    r.exchange = delay_level_name(top);
    return r;
}

std::string delay_binding_key(int level, bool bit_set) {
    std::string key;
    for (int i = kDelayLevels - 1; i > level; --i) key += "*.";
    key += bit_set ? "1.#" : "0.#";
    return key;
}

std::int64_t decode_delay_key(std::string_view key) {
    std::int64_t v = 0;
    for (int i = 0; i < kDelayLevels; ++i) {
        if (key.size() < 2 || (key[0] != '0' && key[0] != '1') || key[1] != '.') return -1;
        v = (v << 1) | (key[0] == '1');
        key.remove_prefix(2);
    }
    return key.empty() ? -1 : v;
}

}  // namespace conveyor::amqp
