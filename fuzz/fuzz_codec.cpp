// Message decoding as a worker meets it: a Celery task message (headers and body), a raw
// queue's message, and a stored result. Input: header JSON, a NUL byte, then the body. The
// headers read as stored text (codec::TextHeaders, the sqlite engine's way) must give what
// their JSON tree gives.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/codec.hpp"
#include "core/json_bounds.hpp"
#include "core/result_meta.hpp"
#include "core/text_headers.hpp"

using namespace conveyor;

namespace {

std::string outcome(const Result<TaskMessage>& t) {
    if (!t) return "refused: " + t.error().message;
    auto again = codec::encode(*t);
    return detail::dump_lossy(again.headers) + again.body + detail::dump_lossy(t->extra_headers) +
           t->correlation_id;
}

/// Stored header text decoded in place and through its tree (as make_envelope builds it).
void compare_text_and_tree(std::string_view text, std::string_view body) {
    if (detail::json_text_depth(text, 1000) > 1000) return;  // (the tree's parse recurses)
    const codec::TextHeaders flat(text);
    if (!flat.readable()) return;
    Json tree = detail::parse_json(text);
    if (tree.is_discarded()) __builtin_trap();  // read by one, not the other
    const codec::JsonHeaders h(tree);
    auto view = [&](const codec::Headers& headers) {
        return codec::MessageView{.content_type = codec::kJson, .headers = headers, .body = body};
    };
    if (outcome(codec::decode(view(flat), 1 << 20)) != outcome(codec::decode(view(h), 1 << 20)))
        __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view in(reinterpret_cast<const char*>(data), size);
    // The fast parser agrees with nlohmann's on every input (bounded depth, as in use).
    if (detail::json_text_depth(in) <= detail::kMaxJsonDepth) {
        Json fast = detail::parse_json(in), slow = Json::parse(in, nullptr, false);
        if (fast.is_discarded() != slow.is_discarded() ||
            (!slow.is_discarded() && detail::dump_lossy(fast) != detail::dump_lossy(slow)))
            __builtin_trap();
    }
    Envelope env;
    auto split = in.find('\0');
    if (split != std::string_view::npos) {
        compare_text_and_tree(in.substr(0, split), in.substr(split + 1));
        if (auto h = detail::parse_untrusted(in.substr(0, split), "headers"); h && h->is_object())
            env.headers = std::move(*h);
        in.remove_prefix(split + 1);
    }
    env.body = std::string(in);
    for (const char* type : {"application/json", "", "text/plain"}) {
        env.content_type = type;
        if (auto t = codec::decode(env, 1 << 20))
            (void)detail::dump_lossy(codec::encode(*t).headers);
        if (auto t = codec::decode_raw(env, "fuzz.task", "fallback-id", 1 << 20))
            (void)codec::encode_raw(*t, "q");
    }
    env.headers["compression"] = "application/x-gzip";
    (void)codec::decode(env, 1 << 20);
    (void)result_meta::decode(env.body);
    return 0;
}
