#pragma once
// Error propagation: CONVEYOR_TRY(result) returns the error of a failed Result from the
// enclosing function (whose Result may hold another value type).

#include <expected>
#include <utility>

#include "conveyor/error.hpp"

/// Evaluates `expr` (a Result, or the name of one) once; on failure returns its error.
#define CONVEYOR_TRY(...)                                                       \
    do {                                                                        \
        if (auto&& conveyor_try_result_ = (__VA_ARGS__); !conveyor_try_result_) \
            return std::unexpected(std::move(conveyor_try_result_).error());    \
    } while (false)
