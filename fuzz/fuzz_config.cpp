// conveyor.toml as a user may write it: any text gets a configuration or one sentence.
#include <cstddef>
#include <cstdint>
#include <string>

#include "conveyor/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    auto cfg = conveyor::parse_config(text, "fuzz.toml");
    if (cfg) {
        (void)cfg->topology();
        for (auto& t : cfg->tasks) (void)cfg->queue_for(t.name);
    } else if (cfg.error().message.find('\n') != std::string::npos) {
        __builtin_trap();  // a mistake is told in one sentence
    }
    return 0;
}
