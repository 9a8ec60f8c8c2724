#pragma once
// A message's headers kept as JSON text (the sqlite engine stores them so), read in place by
// the decoder: parsed by simdjson, without a JSON tree of them.

#include <simdjson.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/codec.hpp"

namespace conveyor::codec {

/// JSON text read as codec::Headers. Reads what JsonHeaders over detail::parse_json(text)
/// reads: the last of two equal names wins, a non-negative integer is unsigned. Where it could
/// not read the same (text that is not JSON or not UTF-8, a number beyond 64 bits, a -0, nesting
/// deeper than kMaxJsonDepth, or maybe exactly as deep: see detail::bound_depth) readable() is
/// false, and the caller reads the JSON tree instead; so it is for an object of more than kMaxNames
/// names, whose lookups (a walk over the names each) the tree's index does better. `text` must
/// outlive it; so must the thread (its parser is the thread's, while no other TextHeaders of the
/// thread holds it).
class TextHeaders final : public Headers {
  public:
    static constexpr std::size_t kMaxNames = 64;
    explicit TextHeaders(std::string_view text);
    explicit TextHeaders(const char* text) : TextHeaders(std::string_view(text)) {}
    explicit TextHeaders(std::string&&) = delete;  // it reads the text where it is
    ~TextHeaders() override;
    TextHeaders(const TextHeaders&) = delete;
    TextHeaders& operator=(const TextHeaders&) = delete;

    /// Whether the text was read (else every lookup finds nothing).
    bool readable() const noexcept { return readable_; }
    /// Whether it is a JSON object (else `null`, an array or a scalar).
    bool is_object() const noexcept { return readable_ && root_.is_object(); }

    std::optional<HeaderValue> find(std::string_view key) const override;
    Json json(std::string_view key) const override;
    void names(const std::function<void(std::string_view)>& each) const override;
    bool is_table() const override;
    bool too_deep() const override;

  private:
    /// The value named `key` (the last of its name), if there is one.
    std::optional<simdjson::dom::element> member(std::string_view key) const;

    std::string_view text_;
    std::unique_ptr<simdjson::dom::parser> own_;  // when the thread's parser is taken or too small
    bool borrowed_ = false;                       // the thread's parser is this one's
    simdjson::dom::element root_;
    bool readable_ = false;
};

}  // namespace conveyor::codec
