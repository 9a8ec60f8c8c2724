#pragma once
// `conveyor demo`: the order-processing scenario on the embedded engine.

#include <string>

#include "conveyor/error.hpp"

namespace conveyor {

struct DemoOptions {
    int orders = 500;
    std::string db_path = "conveyor-demo.db";
    std::string broker;  ///< overrides sqlite://db_path when set
};

Result<void> run_demo(const DemoOptions& options);

}  // namespace conveyor
