#pragma once
// Workflows as Celery encodes them (signatures in the message's `embed`): chains, groups,
// chords, link callbacks and errbacks. Used by the worker (what follows a finished task) and by
// the client (starting a workflow). Python and Conveyor workers can share one workflow.

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "conveyor/broker.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/task.hpp"

namespace conveyor::canvas {

/// Where new messages of a workflow go, and how their results come back.
struct Context {
    std::string fallback_queue;  ///< a signature without a queue goes here
    std::string reply_to;        ///< rpc reply queue for signatures that name none
    std::function<std::string(const std::string& task)> queue_for;  ///< optional routing
};

/// Messages that start `signature` (a plain task, or a chain, group or chord signature),
/// with `prepend` (the previous task's return value) as first argument unless immutable.
/// `parent`: the task that triggers it (for parent_id/root_id), or null.
/// Chords call `store.begin_chord` before their header is returned.
Result<void> apply(ResultStore& store, const Json& signature, const std::optional<Json>& prepend,
                   const TaskMessage* parent, const Context& context,
                   std::vector<OutgoingMessage>& out);

/// Does the task have anything to run after it (callbacks, chain, chord, errbacks)?
bool has_followers(const TaskMessage& task);

/// What follows a success: link callbacks, the next link of the chain, and the chord body when
/// this task completes its chord (or FAILURE results for the body when a part failed).
/// `children` gets the ids of the callbacks and the chain's next task, as Celery records them.
Result<void> on_success(ResultStore& store, const TaskMessage& task, const Json& result,
                        const Context& context, std::vector<OutgoingMessage>& out,
                        std::vector<TaskResult>& results,
                        std::vector<std::string>* children = nullptr);

/// What follows a final failure: one-argument errbacks (called with the task id), FAILURE for
/// every later link of the chain, and the chord bookkeeping.
Result<void> on_failure(ResultStore& store, const TaskMessage& task, const TaskResult& failure,
                        const Context& context, std::vector<OutgoingMessage>& out,
                        std::vector<TaskResult>& results);

/// A task as a signature, the form workflows embed.
Json signature(const std::string& task, Json args, Json kwargs, Json options,
               bool immutable = false);

}  // namespace conveyor::canvas
