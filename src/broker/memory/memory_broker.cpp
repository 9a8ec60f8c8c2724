#include "broker/memory/memory_broker.hpp"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include "broker/embedded.hpp"
#include "broker/memory/id_index.hpp"
#include "broker/memory/reaper.hpp"
#include "broker/publish_moved.hpp"
#include "core/codec.hpp"
#include "core/try.hpp"

namespace conveyor::memory {

namespace {

struct Item {
    std::string own_id;         // the id, unless it is the task's own (then empty: not kept twice)
    std::uint64_t id_hash = 0;  // IdIndex::hash_of(id())
    std::string queue;
    Envelope envelope;
    std::shared_ptr<const TaskMessage> task;  // as published (then `envelope` is not made)
    int priority = 0;
    int deliveries = 0;
    std::uint64_t owner = 0;  // consumer id while in flight
    std::string reason;
    TimePoint dead_at{};
    TimePoint due{};  // published, or its delay ended

    const std::string& id() const { return own_id.empty() && task ? task->id : own_id; }
};

struct QueueState {
    std::set<std::pair<int, std::uint64_t>> ready;  // (-priority, seq)
    std::multimap<TimePoint, std::uint64_t> delayed;
    std::int64_t in_flight = 0;
    std::vector<std::uint64_t> dead;  // seqs, oldest first
};

struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::uint64_t next_seq = 1;
    std::uint64_t next_consumer = 1;
    std::unordered_map<std::uint64_t, Item> items;
    // Live id -> seq. Every entry's seq is in `items` (live() reads items.at): filed after
    // its item is, erased before it goes.
    IdIndex ids;
    std::unordered_map<std::string, TaskResult> results;
    std::map<std::string, QueueState> queues;
    /// Frees acknowledged items (taken out of `items`) off the settling thread.
    Reaper<decltype(items)::node_type> reaper;

    /// The seq of the live task `id` (IdIndex::hash_of: `h`), if there is one.
    std::optional<std::uint64_t> live(std::string_view id, std::uint64_t h) const {
        return ids.find(h, id,
                        [&](std::uint64_t seq) -> std::string_view { return items.at(seq).id(); });
    }

    void make_ready(std::uint64_t seq) {
        auto& it = items.at(seq);
        queues[it.queue].ready.emplace(-it.priority, seq);
    }

    void promote_due(QueueState& q, TimePoint now) {
        while (!q.delayed.empty() && q.delayed.begin()->first <= now) {
            auto seq = q.delayed.begin()->second;
            q.delayed.erase(q.delayed.begin());
            q.ready.emplace(-items.at(seq).priority, seq);
        }
    }
};

class MemoryConsumer final : public Consumer {
  public:
    MemoryConsumer(std::shared_ptr<State> s, ConsumerOptions o)
        : s_(std::move(s)), opts_(std::move(o)) {
        std::lock_guard lk(s_->mu);
        id_ = s_->next_consumer++;
        for (auto& q : opts_.queues) s_->queues[q];
    }

    ~MemoryConsumer() override {
        // A consumer that goes away hands back what it still holds.
        std::lock_guard lk(s_->mu);
        for (auto seq : held_) {
            auto it = s_->items.find(seq);
            if (it == s_->items.end() || it->second.owner != id_) continue;
            it->second.owner = 0;
            s_->queues[it->second.queue].in_flight--;
            s_->make_ready(seq);
        }
        s_->cv.notify_all();
    }

    Result<std::vector<Delivery>> fetch(std::size_t max, std::chrono::milliseconds wait) override {
        std::vector<Delivery> out;
        auto deadline = std::chrono::steady_clock::now() + wait;
        std::unique_lock lk(s_->mu);
        for (;;) {
            auto now = SystemClock::now();
            std::optional<TimePoint> next_due;
            std::size_t n = opts_.queues.size();
            for (std::size_t i = 0; i < n && out.size() < max; ++i) {
                auto& qname = opts_.queues[(rr_ + i) % n];
                auto& q = s_->queues[qname];
                s_->promote_due(q, now);
                if (out.empty()) out.reserve(std::min(max, q.ready.size()));
                while (!q.ready.empty() && out.size() < max) {
                    auto seq = q.ready.begin()->second;
                    q.ready.erase(q.ready.begin());
                    auto& item = s_->items.at(seq);
                    item.owner = id_;
                    item.deliveries++;
                    q.in_flight++;
                    held_.push_back(seq);
                    held_live_++;
                    // A task published in this process goes as it is; only a retried one (the
                    // worker hands back its message) or one published as a message is copied.
                    out.push_back(Delivery{seq,
                                           item.queue,
                                           item.id(),
                                           item.task ? Envelope{.headers = nullptr} : item.envelope,
                                           item.deliveries,
                                           {},
                                           item.due,
                                           {},
                                           item.task});
                }
                if (!q.delayed.empty() && (!next_due || q.delayed.begin()->first < *next_due))
                    next_due = q.delayed.begin()->first;
            }
            rr_++;
            if (!out.empty()) return out;
            auto steady_now = std::chrono::steady_clock::now();
            if (steady_now >= deadline) return out;
            auto until = deadline;
            if (next_due) {
                auto d = std::chrono::duration_cast<std::chrono::steady_clock::duration>(*next_due -
                                                                                         now);
                until = std::min(until, steady_now + d);
            }
            s_->cv.wait_until(lk, until);
        }
    }

    Result<void> settle(std::span<Settlement> batch) override {
        if (batch.empty()) return {};
        // Acknowledged items are freed once the lock is released, by the reaper.
        std::vector<decltype(State::items)::node_type> gone;
        gone.reserve(batch.size());
        settle_locked(batch, gone);
        s_->reaper.take(gone);
        return {};
    }

    void settle_locked(std::span<Settlement> batch,
                       std::vector<decltype(State::items)::node_type>& gone) {
        std::lock_guard lk(s_->mu);
        for (auto& st : batch) {
            auto found = s_->items.find(st.tag);
            if (found == s_->items.end() || found->second.owner != id_) continue;  // not ours
            held_live_--;
            auto& item = found->second;
            auto& q = s_->queues[item.queue];
            q.in_flight--;
            item.owner = 0;
            switch (st.kind) {
                case Settlement::Kind::ack:
                    if (st.result) s_->results[item.id()] = *st.result;
                    s_->ids.erase(item.id_hash, st.tag);
                    gone.push_back(s_->items.extract(st.tag));
                    break;
                case Settlement::Kind::retry: {
                    item.envelope = std::move(st.envelope);
                    if (item.own_id.empty()) item.own_id = item.id();
                    item.task.reset();
                    item.due = std::max(st.not_before, SystemClock::now());
                    auto& r = s_->results[item.own_id];
                    r.id = item.own_id;
                    r.state = TaskState::retry;
                    r.retries++;
                    if (st.not_before > SystemClock::now())
                        q.delayed.emplace(st.not_before, st.tag);
                    else
                        s_->make_ready(st.tag);
                    break;
                }
                case Settlement::Kind::dead_letter:
                    if (st.result) s_->results[item.id()] = *st.result;
                    item.reason = st.reason;
                    item.dead_at = SystemClock::now();
                    q.dead.push_back(st.tag);
                    break;
                case Settlement::Kind::release:
                    item.deliveries = std::max(0, item.deliveries - 1);  // not a delivery
                    s_->make_ready(st.tag);
                    break;
            }
        }
        if (held_.size() > 2 * held_live_ + 1024) {
            std::erase_if(held_, [&](std::uint64_t seq) {
                auto it = s_->items.find(seq);
                return it == s_->items.end() || it->second.owner != id_;
            });
            // (A task handed back and taken again is listed twice.)
            if (held_.size() > held_live_) {
                std::ranges::sort(held_);
                auto [first, last] = std::ranges::unique(held_);
                held_.erase(first, last);
            }
        }
        s_->cv.notify_all();
    }

    Result<void> set_consuming(const std::string& queue, bool consume) override {
        std::lock_guard lk(s_->mu);
        auto& qs = opts_.queues;
        bool has = std::find(qs.begin(), qs.end(), queue) != qs.end();
        if (consume && !has) {
            qs.push_back(queue);
            s_->queues[queue];
        }
        if (!consume && has) std::erase(qs, queue);
        return {};
    }

    Result<std::vector<std::uint64_t>> renew() override {
        return std::vector<std::uint64_t>();  // no leases: a delivery is held until settled
    }

  private:
    std::shared_ptr<State> s_;
    ConsumerOptions opts_;
    std::uint64_t id_ = 0;
    std::size_t rr_ = 0;
    /// The seqs this consumer was handed, some settled since (an item is ours while its owner
    /// is id_): appended as they are fetched, and compacted once most are settled, rather
    /// than a set changed for each task.
    std::vector<std::uint64_t> held_;
    std::size_t held_live_ = 0;  // how many of them are still ours
};

class MemoryBroker final : public Broker, public detail::MovePublisher {
  public:
    explicit MemoryBroker(std::string name)
        : name_(std::move(name)), s_(std::make_shared<State>()) {}

    Result<void> publish(std::span<const OutgoingMessage> msgs) override {
        std::vector<OutgoingMessage> copies(msgs.begin(), msgs.end());
        return publish_moved(copies);
    }

    detail::TaskForm task_form() const noexcept override { return detail::TaskForm::decoded; }

    Result<void> publish_moved(std::span<OutgoingMessage> msgs) override {
        for (auto& m : msgs) CONVEYOR_TRY(detail::check_embedded_message(m, "memory"));
        // Items are made before the lock is taken: consumers wait only for the inserts.
        std::vector<Item> made;
        made.reserve(msgs.size());
        for (auto& m : msgs) {
            std::string id = !m.task_id.empty() ? m.task_id
                             : m.task           ? m.task->id
                                                : codec::envelope_id(m.envelope);
            if (id.empty()) id = make_task_id();
            int priority = m.task ? m.task->priority : m.envelope.priority;
            auto h = IdIndex::hash_of(id);
            if (m.task && m.task->id == id) id.clear();  // the task's own: Item::id()
            made.push_back(Item{std::move(id), h, m.queue, std::move(m.envelope), std::move(m.task),
                                priority});
        }
        std::lock_guard lk(s_->mu);
        auto now = SystemClock::now();
        QueueState* q = nullptr;
        const std::string* q_name = nullptr;
        for (std::size_t i = 0; i < msgs.size(); ++i) {
            auto& m = msgs[i];
            Item& item = made[i];
            if (s_->live(item.id(), item.id_hash) || s_->results.contains(item.id())) continue;
            auto seq = s_->next_seq++;
            if (!q_name || *q_name != m.queue) {  // batches usually go to one queue
                q = &s_->queues[m.queue];
                q_name = &m.queue;
            }
            if (m.not_before && *m.not_before > now) {
                q->delayed.emplace(*m.not_before, seq);
                item.due = *m.not_before;
            } else {
                q->ready.emplace(-item.priority, seq);
                item.due = now;
            }
            auto h = item.id_hash;
            s_->items.emplace(seq, std::move(item));
            s_->ids.insert(h, seq);
        }
        s_->cv.notify_all();
        return {};
    }

    Result<std::unique_ptr<Consumer>> consume(const ConsumerOptions& o) override {
        if (o.queues.empty())
            return fail(Errc::invalid_argument, "a consumer needs at least one queue");
        return std::unique_ptr<Consumer>(std::make_unique<MemoryConsumer>(s_, o));
    }

    Result<std::vector<QueueStats>> stats() override {
        std::lock_guard lk(s_->mu);
        std::vector<QueueStats> out;
        auto now = SystemClock::now();
        for (auto& [name, q] : s_->queues) {
            s_->promote_due(q, now);
            out.push_back(QueueStats{name, std::int64_t(q.ready.size()),
                                     std::int64_t(q.delayed.size()), q.in_flight,
                                     std::int64_t(q.dead.size())});
        }
        return out;
    }

    Result<void> store_results(std::span<const TaskResult> results, std::string_view) override {
        std::lock_guard lk(s_->mu);
        for (auto& r : results) s_->results[r.id] = r;
        return {};
    }

    Result<TaskResult> result(std::string_view id) override {
        std::lock_guard lk(s_->mu);
        std::string key(id);
        auto seq = s_->live(key, IdIndex::hash_of(key));
        if (auto it = s_->results.find(key);
            it != s_->results.end() && (it->second.ready() || !seq))
            return it->second;
        TaskResult r;
        r.id = key;
        if (seq) {
            auto& item = s_->items.at(*seq);
            if (auto rit = s_->results.find(key); rit != s_->results.end()) r = rit->second;
            if (item.owner) r.state = TaskState::started;
        }
        return r;
    }

    Result<std::vector<DeadLetter>> dead_letters(std::string_view queue,
                                                 std::size_t limit) override {
        std::lock_guard lk(s_->mu);
        std::vector<DeadLetter> out;
        auto it = s_->queues.find(std::string(queue));
        if (it == s_->queues.end()) return out;
        for (auto seq : it->second.dead) {
            if (out.size() >= limit) break;
            auto& item = s_->items.at(seq);
            out.push_back(DeadLetter{item.id(), item.queue,
                                     item.task ? codec::encode(*item.task) : item.envelope,
                                     item.reason, item.dead_at});
        }
        return out;
    }

    Result<std::size_t> replay_dead(std::string_view queue,
                                    std::span<const std::string> ids) override {
        std::lock_guard lk(s_->mu);
        auto it = s_->queues.find(std::string(queue));
        if (it == s_->queues.end()) return std::size_t{0};
        std::size_t n = 0;
        std::vector<std::uint64_t> keep;
        for (auto seq : it->second.dead) {
            auto& item = s_->items.at(seq);
            if (!ids.empty() && std::find(ids.begin(), ids.end(), item.id()) == ids.end()) {
                keep.push_back(seq);
                continue;
            }
            if (item.task) {
                auto t = *item.task;
                t.retries = 0;
                item.task = std::make_shared<const TaskMessage>(std::move(t));
            } else if (item.envelope.headers.is_object() &&
                       item.envelope.headers.contains("retries")) {
                item.envelope.headers["retries"] = 0;
            }
            item.reason.clear();
            s_->results.erase(item.id());
            s_->make_ready(seq);
            ++n;
        }
        it->second.dead = std::move(keep);
        s_->cv.notify_all();
        return n;
    }

    Result<void> set_topology(const Topology& t) override {
        CONVEYOR_TRY(detail::check_embedded_topology(t, "memory"));
        std::lock_guard lk(s_->mu);
        for (auto& q : t.queues) s_->queues[q.name];
        return {};
    }
    Result<void> declare_topology() override { return {}; }

    Result<std::size_t> purge_dead(std::string_view queue) override {
        std::lock_guard lk(s_->mu);
        auto it = s_->queues.find(std::string(queue));
        if (it == s_->queues.end()) return std::size_t{0};
        std::size_t n = it->second.dead.size();
        for (auto seq : it->second.dead) {
            s_->ids.erase(s_->items.at(seq).id_hash, seq);
            s_->items.erase(seq);
        }
        it->second.dead.clear();
        return n;
    }

    std::string url() const override { return "memory://" + name_; }

  private:
    std::string name_;
    std::shared_ptr<State> s_;
};

}  // namespace

std::shared_ptr<Broker> open_memory_broker(const std::string& name) {
    static std::mutex mu;
    static std::map<std::string, std::weak_ptr<Broker>> registry;
    std::lock_guard lk(mu);
    if (auto existing = registry[name].lock()) return existing;
    auto b = std::make_shared<MemoryBroker>(name);
    registry[name] = b;
    return b;
}

}  // namespace conveyor::memory
