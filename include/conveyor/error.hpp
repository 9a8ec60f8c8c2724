#pragma once
/// Errors returned across Conveyor's boundaries.

#include <expected>
#include <string>
#include <string_view>

namespace conveyor {

/// A small closed set of failure kinds; the message carries the detail for people.
enum class Errc {
    invalid_argument,  ///< the caller passed something malformed (bad URL, bad JSON, bad option)
    not_found,         ///< the task, queue or file does not exist
    unavailable,       ///< the broker or endpoint cannot be reached right now (retryable)
    timeout,           ///< a deadline passed
    conflict,          ///< the entity exists with other properties, or the lease was lost
    malformed,         ///< a message from the wire could not be decoded
    io,                ///< a local I/O or storage error
    internal,          ///< a broken invariant
};

/// The error value of every fallible call: `std::expected<T, Error>`.
struct Error {
    Errc code = Errc::internal;
    std::string message;
};

template <class T>
using Result = std::expected<T, Error>;

/// Shorthand for `std::unexpected(Error{code, message})`.
inline std::unexpected<Error> fail(Errc code, std::string message) {
    return std::unexpected(Error{code, std::move(message)});
}

/// The name of an error code, e.g. "unavailable".
std::string_view to_string(Errc code) noexcept;

}  // namespace conveyor
