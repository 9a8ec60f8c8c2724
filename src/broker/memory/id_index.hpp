#pragma once
// The memory engine's index of live task ids: id -> seq. Open addressing with linear probing
// over (hash, seq) slots in one array. Settling a task, whose hash and seq the engine holds,
// touches one slot, mostly one cache line; a node-based map chases a bucket, the node before
// and the node itself, each a cache miss once the index outgrows the cache.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>
#include <vector>

namespace conveyor::memory {

class IdIndex {
  public:
    /// The hash an id is filed under (never 0, which marks a free slot).
    static std::uint64_t hash_of(std::string_view id) noexcept {
        auto h = std::uint64_t(std::hash<std::string_view>{}(id));
        return h != 0 ? h : 1;
    }

    /// The seq filed for `id` (hash `h`), if any. `id_of(seq)` is the id of a filed seq:
    /// slots keep hashes only, so an equal hash is checked against the id itself.
    template <class IdOf>
    std::optional<std::uint64_t> find(std::uint64_t h, std::string_view id, IdOf&& id_of) const {
        if (size_ == 0) return std::nullopt;
        for (std::size_t i = home(h);; i = next(i)) {
            const Slot& s = slots_[i];
            if (s.hash == 0) return std::nullopt;
            if (s.hash == h && id_of(s.seq) == id) return s.seq;
        }
    }

    /// Files `seq` under `h` (its id must not be filed yet).
    void insert(std::uint64_t h, std::uint64_t seq) {
        if ((size_ + 1) * 2 > slots_.size()) resize(std::max<std::size_t>(kMin, slots_.size() * 2));
        place(h, seq);
        ++size_;
    }

    /// Removes `seq`, filed under `h`; nothing when it is not filed.
    void erase(std::uint64_t h, std::uint64_t seq) {
        if (size_ == 0) return;
        std::size_t i = home(h);
        for (;; i = next(i)) {
            if (slots_[i].hash == 0) return;
            if (slots_[i].hash == h && slots_[i].seq == seq) break;
        }
        // Backward shift: each later slot of the run that may sit in the hole moves into it,
        // so that no lookup meets a free slot before its own.
        for (std::size_t j = next(i);; j = next(j)) {
            if (slots_[j].hash == 0) break;
            std::size_t k = home(slots_[j].hash);
            // Slot j may move to i unless its home lies cyclically in (i, j].
            bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
            if (stays) continue;
            slots_[i] = slots_[j];
            i = j;
        }
        slots_[i] = Slot{};
        --size_;
        if (slots_.size() > kMin && size_ * 8 < slots_.size()) resize(slots_.size() / 2);
    }

    std::size_t size() const noexcept { return size_; }

  private:
    struct Slot {
        std::uint64_t hash = 0;
        std::uint64_t seq = 0;
    };
    static constexpr std::size_t kMin = 64;

    std::size_t home(std::uint64_t h) const noexcept {
        return std::size_t(h) & (slots_.size() - 1);
    }
    std::size_t next(std::size_t i) const noexcept { return (i + 1) & (slots_.size() - 1); }

    void place(std::uint64_t h, std::uint64_t seq) {
        std::size_t i = home(h);
        while (slots_[i].hash != 0) i = next(i);
        slots_[i] = Slot{h, seq};
    }

    void resize(std::size_t n) {
        std::vector<Slot> old(n);
        old.swap(slots_);
        for (const Slot& s : old)
            if (s.hash != 0) place(s.hash, s.seq);
    }

    std::vector<Slot> slots_;  // a power of two in size, at most half full
    std::size_t size_ = 0;
};

}  // namespace conveyor::memory
