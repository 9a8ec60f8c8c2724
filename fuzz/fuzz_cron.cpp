// Cron expressions from configuration and the CLI: parsed, and their next fire computed.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "conveyor/schedule.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    auto cron = conveyor::CronExpr::parse(text);
    if (!cron) return 0;
    conveyor::TimePoint t{std::chrono::seconds(1767225600)};  // 2026-01-01
    for (const char* zone : {"UTC", "Europe/Berlin"}) {
        auto next = cron->next(t, zone);
        if (next && *next <= t) __builtin_trap();  // the next fire is after the given time
    }
    return 0;
}
