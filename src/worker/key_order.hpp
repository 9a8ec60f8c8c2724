#pragma once
// Per-key order in a worker: of the tasks with one ordering key, one runs at a time, in the
// order they arrived; the others wait here (the dispatcher thread's, not thread-safe).

#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace conveyor::detail {

/// `T`: how the caller names a task (the worker's job pointer; tests use numbers). The empty
/// key means "no order": such tasks are never held.
template <class T>
class KeyOrder {
  public:
    /// A task with `key` arrived: true when it may run now, false when it waits behind an
    /// earlier one with that key.
    bool admit(const std::string& key, T task) {
        if (key.empty()) return true;
        auto& k = keys_[key];
        if (!k.active) {
            k.active = true;
            return true;
        }
        k.waiting.push_back(task);
        return false;
    }

    /// The running task with `key` is settled: the next task with that key, which may run now.
    std::optional<T> done(const std::string& key) {
        if (key.empty()) return std::nullopt;
        auto it = keys_.find(key);
        if (it == keys_.end()) return std::nullopt;
        if (it->second.waiting.empty()) {
            keys_.erase(it);
            return std::nullopt;
        }
        T next = it->second.waiting.front();
        it->second.waiting.pop_front();
        return next;
    }

    /// A task that never ran is dropped (its delivery is no longer ours): taken out of the
    /// waiting ones, or, when it was the one allowed to run, the next one moves up (returned).
    std::optional<T> drop(const std::string& key, T task) {
        if (key.empty()) return std::nullopt;
        auto it = keys_.find(key);
        if (it == keys_.end()) return std::nullopt;
        auto& w = it->second.waiting;
        for (auto i = w.begin(); i != w.end(); ++i)
            if (*i == task) {
                w.erase(i);
                return std::nullopt;
            }
        return done(key);
    }

    /// Every waiting task, taken out (shutdown hands them back); the running ones stay.
    std::vector<T> take_waiting() {
        std::vector<T> out;
        for (auto& [_, k] : keys_) {
            out.insert(out.end(), k.waiting.begin(), k.waiting.end());
            k.waiting.clear();
        }
        return out;
    }

    void clear() { keys_.clear(); }
    /// Tasks waiting behind another with their key.
    std::size_t waiting() const {
        std::size_t n = 0;
        for (auto& [_, k] : keys_) n += k.waiting.size();
        return n;
    }

  private:
    struct Key {
        bool active = false;  // a task with this key runs (or sleeps before running again)
        std::deque<T> waiting;
    };
    std::unordered_map<std::string, Key> keys_;
};

}  // namespace conveyor::detail
