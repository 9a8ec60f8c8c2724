#pragma once
// sqlite://PATH: the embedded default engine.

#include <chrono>
#include <memory>
#include <string>

#include "conveyor/broker.hpp"

namespace conveyor::sqlite {

struct SqliteOptions {
    std::string path;
    std::string synchronous = "FULL";            ///< FULL (durable), NORMAL or OFF
    std::chrono::seconds result_expires{86400};  ///< completed results are kept this long
};

Result<std::shared_ptr<Broker>> open_sqlite_broker(const SqliteOptions& options);

}  // namespace conveyor::sqlite
