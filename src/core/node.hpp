#pragma once
// How this process names itself: to leases, to Celery's monitors, and on the tasks it sends.

#include <string>
#include <string_view>

namespace conveyor::detail {

/// This host's name ("localhost" when it has none).
std::string host_name();

/// "HOST:PID": who holds a lease (a worker's claims, a scheduler's leadership).
std::string process_name();

/// A Celery node name, NAME@HOST: empty gives "conveyor-PID@HOST", a bare name gets this
/// host (as `celery -n` does), a name with '@' stays as it is.
std::string node_name(std::string_view name = {});

}  // namespace conveyor::detail
