#include "core/node.hpp"

#include <fmt/format.h>
#include <unistd.h>

namespace conveyor::detail {

std::string host_name() {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') return "localhost";
    return host;
}

std::string process_name() { return fmt::format("{}:{}", host_name(), ::getpid()); }

std::string node_name(std::string_view name) {
    if (name.empty()) return fmt::format("conveyor-{}@{}", ::getpid(), host_name());
    if (name.find('@') != std::string_view::npos) return std::string(name);
    return fmt::format("{}@{}", name, host_name());
}

}  // namespace conveyor::detail
