#include "embedding/initializer.h"

#include <cmath>

#include "common/hash.h"

namespace t2d::embedding {

RowInitializer::RowInitializer(const config::InitializerConfig& config)
    : kind_(config.kind()), stddev_(config.stddev()), range_(config.range()), seed_(config.seed()) {}

void RowInitializer::Fill(int64_t id, absl::Span<float> out) const {
  SplitMix64 rng(HashCombine(seed_, static_cast<uint64_t>(id)));
  switch (kind_) {
    case config::InitializerConfig::ZEROS:
      for (float& v : out) v = 0.0f;
      return;
    case config::InitializerConfig::UNIFORM:
      for (float& v : out) v = (2.0f * rng.NextFloat() - 1.0f) * range_;
      return;
    case config::InitializerConfig::NORMAL:
    case config::InitializerConfig::TRUNCATED_NORMAL: {
      const bool truncate = kind_ == config::InitializerConfig::TRUNCATED_NORMAL;
      size_t i = 0;
      while (i < out.size()) {
        // Box-Muller: two independent N(0,1) values from two uniforms; 1 - u keeps log finite.
        const double u1 = 1.0 - rng.NextDouble();
        const double u2 = rng.NextDouble();
        const double r = std::sqrt(-2.0 * std::log(u1));
        const double z[2] = {r * std::cos(6.283185307179586 * u2), r * std::sin(6.283185307179586 * u2)};
        for (double zi : z) {
          if (i == out.size()) break;
          if (truncate && std::abs(zi) > 2.0) continue;  // redraw outside 2 stddev
          out[i++] = static_cast<float>(zi) * stddev_;
        }
      }
      return;
    }
  }
}

}  // namespace t2d::embedding
