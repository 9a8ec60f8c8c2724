#include "conveyor/error.hpp"

namespace conveyor {

std::string_view to_string(Errc code) noexcept {
    switch (code) {
        case Errc::invalid_argument:
            return "invalid_argument";
        case Errc::not_found:
            return "not_found";
        case Errc::unavailable:
            return "unavailable";
        case Errc::timeout:
            return "timeout";
        case Errc::conflict:
            return "conflict";
        case Errc::malformed:
            return "malformed";
        case Errc::io:
            return "io";
        case Errc::internal:
            return "internal";
    }
    return "unknown";
}

}  // namespace conveyor
