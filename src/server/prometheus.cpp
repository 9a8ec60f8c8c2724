#include "server/prometheus.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace conveyor::detail {

std::string escape_label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '"')
            out += "\\\"";
        else if (c == '\n')
            out += "\\n";
        else
            out += c;
    }
    return out;
}

void PromText::family(std::string_view name, std::string_view type, std::string_view help) {
    fmt::format_to(std::back_inserter(out_), "# HELP {} ", name);
    for (char c : help) {  // HELP escapes backslash and newline only
        if (c == '\\')
            out_ += "\\\\";
        else if (c == '\n')
            out_ += "\\n";
        else
            out_ += c;
    }
    fmt::format_to(std::back_inserter(out_), "\n# TYPE {} {}\n", name, type);
}

void PromText::head(std::string_view name, Labels labels) {
    out_ += name;
    if (labels.empty()) {
        out_ += ' ';
        return;
    }
    out_ += '{';
    bool first = true;
    auto put = [&](std::string_view k, std::string_view v) {
        if (!first) out_ += ',';
        first = false;
        fmt::format_to(std::back_inserter(out_), "{}=\"{}\"", k, escape_label_value(v));
    };
    for (auto& [k, v] : labels) put(k, v);
    out_ += "} ";
}

void PromText::sample(std::string_view name, Labels labels, double value) {
    head(name, labels);
    if (std::isnan(value))
        out_ += "NaN";
    else if (std::isinf(value))
        out_ += value > 0 ? "+Inf" : "-Inf";
    else
        fmt::format_to(std::back_inserter(out_), "{}", value);
    out_ += '\n';
}

void PromText::sample(std::string_view name, Labels labels, std::uint64_t value) {
    head(name, labels);
    fmt::format_to(std::back_inserter(out_), "{}\n", value);
}

void Histogram::observe(double v) {
    if (std::isnan(v)) return;
    v = std::max(v, 0.0);
    auto it = std::lower_bound(kSeconds.begin(), kSeconds.end(), v);
    if (it != kSeconds.end()) buckets_[std::size_t(it - kSeconds.begin())]++;
    count_++;
    sum_ += v;
}

void Histogram::add(double v, std::uint64_t n) {
    auto it = std::lower_bound(kSeconds.begin(), kSeconds.end(), std::max(v, 0.0));
    if (it != kSeconds.end()) buckets_[std::size_t(it - kSeconds.begin())] += n;
    count_ += n;
}

void Histogram::write(PromText& out, std::string_view name, Labels labels) const {
    std::vector<std::pair<std::string_view, std::string_view>> with_le(labels.begin(),
                                                                       labels.end());
    with_le.emplace_back("le", "");
    std::string bucket = fmt::format("{}_bucket", name);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= kSeconds.size(); ++i) {
        std::string le = i < kSeconds.size() ? fmt::format("{}", kSeconds[i]) : "+Inf";
        cumulative += i < kSeconds.size() ? buckets_[i] : 0;
        with_le.back().second = le;
        out.sample(bucket, with_le, i < kSeconds.size() ? cumulative : count_);
    }
    out.sample(fmt::format("{}_sum", name), labels, sum_);
    out.sample(fmt::format("{}_count", name), labels, count_);
}

}  // namespace conveyor::detail
