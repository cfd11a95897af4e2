// SmoothQuant's alpha search (engine/smoothing.h) on synthetic activations, and int8-smooth's load with it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/model.h"
#include "engine/model_file.h"
#include "engine/smoothing.h"
#include "kernels/backend.h"

namespace qs {
namespace {

// T tokens x K channels of N(0, 1) activations with channel 3 a 60x outlier (what smoothing is for), and an
// N x K weight of N(0, 0.05).
struct Synthetic {
  int64_t T = 32, K = 64, N = 48;
  std::vector<float> x, w, x_max;
  Synthetic() {
    std::mt19937 rng(7);
    std::normal_distribution<float> unit(0.0f, 1.0f);
    x.resize(size_t(T * K));
    w.resize(size_t(N * K));
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t k = 0; k < K; ++k) x[size_t(t * K + k)] = unit(rng) * (k == 3 ? 60.0f : 1.0f);
    }
    for (float& v : w) v = 0.05f * unit(rng);
    x_max.assign(size_t(K), 0.0f);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t k = 0; k < K; ++k) x_max[size_t(k)] = std::max(x_max[size_t(k)], std::fabs(x[size_t(t * K + k)]));
    }
  }
  std::vector<double> reference() const {
    std::vector<double> ref(size_t(T * N), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t k = 0; k < K; ++k) ref[size_t(t * N + n)] += double(x[size_t(t * K + k)]) * w[size_t(n * K + k)];
      }
    }
    return ref;
  }
};

TEST(Smoothing, SearchReturnsTheErrorMinimisingAlpha) {
  const Synthetic d;
  const std::vector<double> grid = default_alpha_grid();
  const AlphaSearchResult r = search_smoothing_alpha(d.x.data(), d.T, d.x_max, d.w.data(), d.N, d.K, grid);
  // Every row is scored (N < kSmoothingSampleRows), so an independent sweep must find the same minimum.
  std::vector<int64_t> rows;
  for (int64_t n = 0; n < d.N; ++n) rows.push_back(n);
  const std::vector<double> ref = d.reference();
  const std::vector<float> w_max = weight_column_absmax(d.w.data(), d.N, d.K);
  double best = w8a8_error(d.x.data(), d.T, d.w.data(), d.K, rows, nullptr, ref), best_alpha = -1;
  EXPECT_DOUBLE_EQ(r.unsmoothed_error, best);
  for (double a : grid) {
    const std::vector<float> s = smoothing_factors(d.x_max, w_max, a);
    const double e = w8a8_error(d.x.data(), d.T, d.w.data(), d.K, rows, s.data(), ref);
    if (e < best) best = e, best_alpha = a;
  }
  EXPECT_DOUBLE_EQ(r.alpha, best_alpha);
  EXPECT_DOUBLE_EQ(r.error, best);
  // With a 60x outlier channel, smoothing must win clearly over none, and neither extreme is the best.
  EXPECT_GT(r.alpha, 0.0);
  EXPECT_LT(r.alpha, 1.0);
  EXPECT_LT(r.error, 0.5 * r.unsmoothed_error);
  const std::vector<float> expected = smoothing_factors(d.x_max, w_max, r.alpha);
  EXPECT_EQ(r.factors, expected);
}

TEST(Smoothing, NoOutliersMeansLittleToGain) {
  // Uniform activations: smoothing cannot beat no smoothing by much, and whatever wins is no worse than none.
  Synthetic d;
  for (int64_t t = 0; t < d.T; ++t) d.x[size_t(t * d.K + 3)] /= 60.0f;
  d.x_max[3] /= 60.0f;
  const AlphaSearchResult r = search_smoothing_alpha(d.x.data(), d.T, d.x_max, d.w.data(), d.N, d.K,
                                                     default_alpha_grid());
  EXPECT_LE(r.error, r.unsmoothed_error);
  EXPECT_GT(r.error, 0.5 * r.unsmoothed_error);
}

TEST(Smoothing, Int8SmoothLoadsWithSearchedOrFixedAlpha) {
  const auto file = ModelFile::open(std::string(QS_SOURCE_DIR) + "/tests/fixtures/models/llama");
  auto backend = make_cpu_backend(1);
  LoadOptions o;
  o.precision = Precision::kInt8Smooth;
  o.compute_error = false;
  o.smoothing_alpha = -1.0f;
  const std::vector<double> grid = default_alpha_grid();
  {
    auto model = Model::load(*file, *backend, o);
    const auto& alphas = model->report().smoothing_alpha;
    // QKV and gate_up of every layer.
    EXPECT_EQ(int64_t(alphas.size()), 2 * model->config().num_layers);
    for (const auto& [name, a] : alphas) {
      EXPECT_TRUE(a == -1.0 || std::find(grid.begin(), grid.end(), a) != grid.end()) << name << " " << a;
    }
  }
  o.smoothing_alpha = 0.5f;
  auto model = Model::load(*file, *backend, o);
  for (const auto& [name, a] : model->report().smoothing_alpha) EXPECT_DOUBLE_EQ(a, 0.5) << name;
}

}  // namespace
}  // namespace qs
