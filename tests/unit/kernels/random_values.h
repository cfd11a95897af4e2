// Seeded uniform random test inputs for the kernel tests: the same seed gives the same values on every machine
// (std::mt19937 is specified bit for bit; the distribution is only used within one build).
#pragma once
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

namespace qs::test {

// n values uniform in [lo, hi).
inline std::vector<float> random_values(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& e : v) e = u(rng);
  return v;
}

}  // namespace qs::test
