#pragma once
// The Prometheus text exposition format (version 0.0.4): metric families with their HELP and
// TYPE lines, samples with escaped label values, and a fixed-bucket histogram.

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace conveyor::detail {

/// The Content-Type of a /metrics answer.
inline constexpr std::string_view kPrometheusContentType =
    "text/plain; version=0.0.4; charset=utf-8";

using Labels = std::span<const std::pair<std::string_view, std::string_view>>;

/// Writes one exposition: `family` once per metric name, then its samples.
class PromText {
  public:
    /// `type`: counter, gauge or histogram.
    void family(std::string_view name, std::string_view type, std::string_view help);
    void sample(std::string_view name, Labels labels, double value);
    void sample(std::string_view name, Labels labels, std::uint64_t value);
    std::string take() { return std::move(out_); }

  private:
    void head(std::string_view name, Labels labels);
    std::string out_;
};

/// A histogram's counts for fixed upper bounds (seconds), plus +Inf, sum and count. Not
/// thread-safe: its owner locks.
class Histogram {
  public:
    /// Bounds for run and wait times: 1 ms to 5 minutes.
    static constexpr std::array<double, 16> kSeconds = {
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};
    void observe(double v);
    /// Adds `n` observations of `v` without their sum (set_sum gives it).
    void add(double v, std::uint64_t n);
    void set_sum(double sum) { sum_ = sum; }
    std::uint64_t count() const { return count_; }
    double sum() const { return sum_; }
    /// `name`_bucket (cumulative, with le), `name`_sum and `name`_count.
    void write(PromText& out, std::string_view name, Labels labels) const;

  private:
    std::array<std::uint64_t, kSeconds.size()> buckets_{};  // not cumulative
    std::uint64_t count_ = 0;
    double sum_ = 0;
};

/// A label value escaped for the text format (backslash, double quote, newline).
std::string escape_label_value(std::string_view v);

}  // namespace conveyor::detail
