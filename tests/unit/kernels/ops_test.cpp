// The CPU backend's element-wise, normalisation, rotary, attention (paged KV cache), embedding and gather ops
// against naive double-precision references written here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/quantize.h"
#include "kernels/error.h"

namespace qs {
namespace {

// T = tokens, C = channels, F = MLP width, NH = query heads, NKV = key/value heads, HD = head dim, BS = block size.

Backend& cpu() {
  static std::unique_ptr<Backend> backend = make_cpu_backend();
  return *backend;
}

Tensor host_tensor(std::vector<float>& v, int64_t rows, int64_t cols) {
  return Tensor{v.data(), rows, cols, DType::F32};
}

std::vector<float> random_vector(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& e : v) e = u(rng);
  return v;
}

// Round to nearest even, written independently of kernels/dtype.h.
float round_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t lower = bits & 0xffffu, keep = bits >> 16;
  uint32_t up = (keep + ((lower > 0x8000u || (lower == 0x8000u && (keep & 1u))) ? 1u : 0u)) << 16;
  float r;
  std::memcpy(&r, &up, 4);
  return r;
}

DenseWeight dense(const std::vector<float>& v, int64_t rows, int64_t cols = 1) {
  return cpu().make_dense(HostTensor{v.data(), DType::F32, rows, cols}, DType::F32);
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double rel, double abs,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int failures = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(std::fabs(got[i] - want[i]) <= rel * std::fabs(want[i]) + abs) && failures++ < 5) {
      ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", reference " << want[i];
    }
  }
}

TEST(Ops, Layernorm) {
  const int64_t T = 5, C = 70;
  std::vector<float> x = random_vector(size_t(T * C), -3.0f, 5.0f, 1);   // a non-zero mean
  const std::vector<float> w = random_vector(size_t(C), 0.5f, 1.5f, 2), b = random_vector(size_t(C), -1.0f, 1.0f, 3);
  const DenseWeight dw = dense(w, C), db = dense(b, C);
  for (bool with_bias : {true, false}) {
    std::vector<double> ref(static_cast<size_t>(T * C));
    for (int64_t t = 0; t < T; ++t) {
      double mean = 0, var = 0;
      for (int64_t c = 0; c < C; ++c) mean += x[size_t(t * C + c)];
      mean /= double(C);
      for (int64_t c = 0; c < C; ++c) var += (x[size_t(t * C + c)] - mean) * (x[size_t(t * C + c)] - mean);
      var /= double(C);
      for (int64_t c = 0; c < C; ++c) {
        ref[size_t(t * C + c)] = (x[size_t(t * C + c)] - mean) / std::sqrt(var + 1e-5) * w[size_t(c)] +
                                 (with_bias ? b[size_t(c)] : 0.0);
      }
    }
    std::vector<float> y(static_cast<size_t>(T * C), NAN);
    cpu().layernorm(host_tensor(y, T, C), host_tensor(x, T, C), dw, with_bias ? &db : nullptr, 1e-5f);
    expect_close(y, ref, 1e-5, 1e-5, with_bias ? "layernorm" : "layernorm without bias");
  }
  // In place, as the model calls it.
  std::vector<float> y = x;
  cpu().layernorm(host_tensor(y, T, C), host_tensor(y, T, C), dw, &db, 1e-5f);
  std::vector<float> y2(static_cast<size_t>(T * C));
  cpu().layernorm(host_tensor(y2, T, C), host_tensor(x, T, C), dw, &db, 1e-5f);
  EXPECT_EQ(y, y2);
}

TEST(Ops, LayernormEpsMatters) {
  // A constant row has variance 0: the output is the bias, and eps keeps it finite.
  const int64_t C = 8;
  std::vector<float> x(static_cast<size_t>(C), 3.0f);
  const std::vector<float> w(static_cast<size_t>(C), 2.0f), b = random_vector(size_t(C), -1.0f, 1.0f, 4);
  std::vector<float> y(static_cast<size_t>(C));
  cpu().layernorm(host_tensor(y, 1, C), host_tensor(x, 1, C), dense(w, C), nullptr, 1e-5f);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST(Ops, Rmsnorm) {
  const int64_t T = 6, C = 70;
  std::vector<float> x = random_vector(size_t(T * C), -3.0f, 5.0f, 5);
  const std::vector<float> w = random_vector(size_t(C), 0.5f, 1.5f, 6);
  for (float eps : {1e-6f, 1e-1f}) {
    std::vector<double> ref(static_cast<size_t>(T * C));
    for (int64_t t = 0; t < T; ++t) {
      double ss = 0;
      for (int64_t c = 0; c < C; ++c) ss += double(x[size_t(t * C + c)]) * x[size_t(t * C + c)];
      const double inv = 1 / std::sqrt(ss / double(C) + double(eps));
      for (int64_t c = 0; c < C; ++c) ref[size_t(t * C + c)] = w[size_t(c)] * x[size_t(t * C + c)] * inv;
    }
    std::vector<float> y(static_cast<size_t>(T * C), NAN);
    cpu().rmsnorm(host_tensor(y, T, C), host_tensor(x, T, C), dense(w, C), eps);
    expect_close(y, ref, 1e-5, 1e-6, "rmsnorm eps " + std::to_string(eps));
  }
}

TEST(Ops, SiluMul) {
  // 37 = four vectors of eight and a scalar tail; +-100 reaches past the vector exp's clamp at 87.
  const int64_t T = 3, F = 37;
  std::vector<float> gu = random_vector(size_t(T * 2 * F), -6.0f, 6.0f, 7);
  gu[0] = 100.0f, gu[1] = -100.0f, gu[2] = 87.5f, gu[3] = -87.5f, gu[4] = 0.0f;
  std::vector<double> ref(static_cast<size_t>(T * F));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t f = 0; f < F; ++f) {
      const double g = gu[size_t(t * 2 * F + f)], u = gu[size_t(t * 2 * F + F + f)];
      ref[size_t(t * F + f)] = g / (1 + std::exp(-g)) * u;
    }
  }
  std::vector<float> y(static_cast<size_t>(T * F), NAN);
  cpu().silu_mul(host_tensor(y, T, F), host_tensor(gu, T, 2 * F));
  expect_close(y, ref, 1e-5, 1e-6, "silu_mul");
}

TEST(Ops, AddAndAliasing) {
  const int64_t T = 4, C = 33;
  std::vector<float> a = random_vector(size_t(T * C), -1.0f, 1.0f, 8), b = random_vector(size_t(T * C), -1.0f, 1.0f, 9);
  std::vector<double> ref(static_cast<size_t>(T * C));
  for (size_t i = 0; i < ref.size(); ++i) ref[i] = double(a[i]) + double(b[i]);
  std::vector<float> y(static_cast<size_t>(T * C), NAN);
  cpu().add(host_tensor(y, T, C), host_tensor(a, T, C), host_tensor(b, T, C));
  expect_close(y, ref, 1e-7, 0, "add");
  cpu().add(host_tensor(a, T, C), host_tensor(a, T, C), host_tensor(b, T, C));   // out aliases a
  expect_close(a, ref, 1e-7, 0, "add into a");
  std::vector<float> shape_mismatch(static_cast<size_t>(T * C));
  EXPECT_THROW(cpu().add(host_tensor(y, T, C), host_tensor(a, T, C), host_tensor(shape_mismatch, T - 1, C)), Error);
}

// Hugging Face's rotate_half rotary embedding on the first rotary_dim dims of each q and k head, in double.
void rope_reference(std::vector<double>& qkv, const std::vector<int32_t>& positions, int64_t NH, int64_t NKV,
                    int64_t HD, int64_t rotary_dim, double theta) {
  const int64_t row = (NH + 2 * NKV) * HD, half = rotary_dim / 2;
  for (size_t t = 0; t < positions.size(); ++t) {
    for (int64_t h = 0; h < NH + NKV; ++h) {
      double* x = qkv.data() + int64_t(t) * row + h * HD;
      for (int64_t i = 0; i < half; ++i) {
        const double angle = positions[t] / std::pow(theta, double(2 * i) / double(rotary_dim));
        const double x1 = x[i], x2 = x[i + half];
        x[i] = x1 * std::cos(angle) - x2 * std::sin(angle);
        x[i + half] = x2 * std::cos(angle) + x1 * std::sin(angle);
      }
    }
  }
}

TEST(Ops, RopeFullAndPartialRotary) {
  const int64_t NH = 4, NKV = 2, HD = 16;
  const std::vector<int32_t> positions = {0, 1, 5, 37, 100, 2};
  const int64_t T = int64_t(positions.size()), row = (NH + 2 * NKV) * HD;
  for (int64_t rotary_dim : {HD, HD / 2, int64_t(4)}) {
    for (float theta : {10000.0f, 500.0f}) {
      std::vector<float> qkv = random_vector(size_t(T * row), -1.0f, 1.0f, uint32_t(10 + rotary_dim));
      std::vector<double> ref(qkv.begin(), qkv.end());
      rope_reference(ref, positions, NH, NKV, HD, rotary_dim, theta);
      BatchLayout batch;
      batch.token_ids.assign(size_t(T), 0);
      batch.positions = positions;
      batch.seq_of_token.assign(size_t(T), 0);
      batch.block_tables = {{0}};
      batch.seq_lens = {int32_t(T)};
      cpu().begin_batch(batch);
      const std::vector<float> before = qkv;
      cpu().rope(host_tensor(qkv, T, row), NH, NKV, HD, rotary_dim, theta);
      // Angles are computed in float as HF does: at position 100 that is ~1e-5 off the exact angle.
      expect_close(qkv, ref, 0, 5e-5, "rope rotary_dim " + std::to_string(rotary_dim) + " theta " + std::to_string(theta));
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t h = 0; h < NH + 2 * NKV; ++h) {
          for (int64_t d = 0; d < HD; ++d) {
            const size_t i = size_t(t * row + h * HD + d);
            if (h >= NH + NKV || d >= rotary_dim) {
              ASSERT_EQ(qkv[i], before[i]) << "v heads and dims past rotary_dim stay";
            }
          }
        }
      }
    }
  }
}

// Dense causal attention over one whole sequence, in double: out (L, NH*HD) from qkv (L, (NH+2NKV)*HD).
std::vector<double> dense_causal_attention(const std::vector<float>& qkv, int64_t L, int64_t NH, int64_t NKV,
                                           int64_t HD) {
  const int64_t row = (NH + 2 * NKV) * HD, group = NH / NKV;
  std::vector<double> out(static_cast<size_t>(L * NH * HD), 0.0);
  for (int64_t i = 0; i < L; ++i) {
    for (int64_t h = 0; h < NH; ++h) {
      const int64_t kvh = h / group;
      std::vector<double> s(static_cast<size_t>(i + 1));
      double mx = -INFINITY;
      for (int64_t j = 0; j <= i; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < HD; ++d) {
          dot += double(qkv[size_t(i * row + h * HD + d)]) * qkv[size_t(j * row + (NH + kvh) * HD + d)];
        }
        s[size_t(j)] = dot / std::sqrt(double(HD));
        mx = std::max(mx, s[size_t(j)]);
      }
      double z = 0;
      for (auto& v : s) z += (v = std::exp(v - mx));
      for (int64_t j = 0; j <= i; ++j) {
        for (int64_t d = 0; d < HD; ++d) {
          out[size_t(i * NH * HD + h * HD + d)] += s[size_t(j)] / z * qkv[size_t(j * row + (NH + NKV + kvh) * HD + d)];
        }
      }
    }
  }
  return out;
}

struct SeqSlice {
  int32_t seq;    // index into the sequences of the test
  int64_t first;  // first position of this pass
  int64_t count;  // tokens in this pass
};

TEST(Ops, PagedAttentionMatchesDenseCausalAttention) {
  const int64_t NH = 4, NKV = 2, HD = 8, BS = 4, row = (NH + 2 * NKV) * HD;
  const std::vector<int64_t> lens = {9, 6, 3};
  // Non-contiguous, out-of-order block tables.
  const std::vector<std::vector<int32_t>> tables = {{7, 2, 11}, {5, 0}, {9}};
  std::vector<std::vector<float>> qkv;
  std::vector<std::vector<double>> ref;
  for (size_t s = 0; s < lens.size(); ++s) {
    qkv.push_back(random_vector(size_t(lens[s] * row), -2.0f, 2.0f, uint32_t(20 + s)));
    ref.push_back(dense_causal_attention(qkv.back(), lens[s], NH, NKV, HD));
  }
  KvCacheConfig kc;
  kc.num_layers = 2;
  kc.num_blocks = 12;
  kc.block_size = BS;
  kc.num_kv_heads = NKV;
  kc.head_dim = HD;
  auto cache = cpu().make_kv_cache(kc);
  const int64_t layer = 1;

  // Runs one pass over the given slices and checks every output row against the dense reference.
  auto run_pass = [&](const std::vector<SeqSlice>& slices, int64_t on_layer, bool garbage) {
    BatchLayout batch;
    std::vector<float> in;
    for (size_t i = 0; i < slices.size(); ++i) {
      const SeqSlice& sl = slices[i];
      for (int64_t p = sl.first; p < sl.first + sl.count; ++p) {
        batch.token_ids.push_back(0);
        batch.positions.push_back(int32_t(p));
        batch.seq_of_token.push_back(int32_t(i));
        const float* src = qkv[size_t(sl.seq)].data() + p * row;
        for (int64_t c = 0; c < row; ++c) in.push_back(garbage ? 1e3f : src[c]);
      }
      batch.block_tables.push_back(tables[size_t(sl.seq)]);
      batch.seq_lens.push_back(int32_t(sl.first + sl.count));
    }
    const int64_t T = batch.num_tokens();
    std::vector<float> out(static_cast<size_t>(T * NH * HD), NAN);
    cpu().begin_batch(batch);
    cpu().attention(host_tensor(out, T, NH * HD), host_tensor(in, T, row), *cache, on_layer, NH, NKV, HD);
    if (garbage) return;
    int64_t t = 0;
    for (const SeqSlice& sl : slices) {
      for (int64_t p = sl.first; p < sl.first + sl.count; ++p, ++t) {
        for (int64_t c = 0; c < NH * HD; ++c) {
          ASSERT_NEAR(out[size_t(t * NH * HD + c)], ref[size_t(sl.seq)][size_t(p * NH * HD + c)], 1e-5)
              << "sequence " << sl.seq << " position " << p << " channel " << c;
        }
      }
    }
  };
  // Pass 1: sequence 0's prompt but its last token, the first half of sequence 1's prompt.
  run_pass({{0, 0, 8}, {1, 0, 3}}, layer, false);
  // The other layer's pool at the same slots gets garbage: layers must not share memory.
  run_pass({{0, 0, 8}, {1, 0, 3}, {2, 0, 3}}, 0, true);
  // Pass 2, mixed: a new sequence's whole prompt, sequence 0's decode token, the rest of sequence 1's prompt.
  run_pass({{2, 0, 3}, {0, 8, 1}, {1, 3, 3}}, layer, false);
}

TEST(Ops, AttentionSingleTokenIsItsValue) {
  // One key: softmax is 1, the output is v (per KV group) whatever q is.
  const int64_t NH = 4, NKV = 1, HD = 5, row = (NH + 2 * NKV) * HD;
  std::vector<float> qkv = random_vector(size_t(row), -1.0f, 1.0f, 30);
  KvCacheConfig kc{1, 2, 16, NKV, HD};
  auto cache = cpu().make_kv_cache(kc);
  BatchLayout batch;
  batch.token_ids = {0};
  batch.positions = {0};
  batch.seq_of_token = {0};
  batch.block_tables = {{1}};
  batch.seq_lens = {1};
  cpu().begin_batch(batch);
  std::vector<float> out(static_cast<size_t>(NH * HD));
  cpu().attention(host_tensor(out, 1, NH * HD), host_tensor(qkv, 1, row), *cache, 0, NH, NKV, HD);
  for (int64_t h = 0; h < NH; ++h) {
    for (int64_t d = 0; d < HD; ++d) EXPECT_FLOAT_EQ(out[size_t(h * HD + d)], qkv[size_t((NH + NKV) * HD + d)]);
  }
}

TEST(Ops, EmbeddingWithPositionTable) {
  const int64_t V = 11, C = 6, P = 8;
  const std::vector<float> table = random_vector(size_t(V * C), -1.0f, 1.0f, 40);
  const std::vector<float> pos = random_vector(size_t(P * C), -1.0f, 1.0f, 41);
  const DenseWeight pos_table = dense(pos, P, C);
  BatchLayout batch;
  batch.token_ids = {3, 10, 0, 3};
  batch.positions = {0, 1, 7, 2};
  batch.seq_of_token = {0, 0, 0, 1};
  batch.block_tables = {{0}, {1}};
  batch.seq_lens = {8, 3};
  const int64_t T = batch.num_tokens();
  for (Precision p : {Precision::kFp32, Precision::kBf16, Precision::kInt8}) {
    auto lin = cpu().make_linear(HostTensor{table.data(), DType::F32, V, C}, nullptr, p, LinearOptions{});
    // The embedding of a token is its row of the table as the precision stores it, dequantized.
    std::vector<float> w_deq(table);
    if (p == Precision::kBf16) {
      for (auto& v : w_deq) v = round_to_bf16(v);
    } else if (p == Precision::kInt8) {
      std::vector<int8_t> q(table.size());
      std::vector<float> scales(static_cast<size_t>(V));
      cpu::quantize_per_channel_int8(q.data(), scales.data(), table.data(), V, C);
      for (size_t i = 0; i < q.size(); ++i) w_deq[i] = scales[i / size_t(C)] * float(q[i]);
    }
    const double tol = 1e-6;
    std::vector<float> out(static_cast<size_t>(T * C), NAN);
    cpu().begin_batch(batch);
    cpu().embedding(host_tensor(out, T, C), *lin, &pos_table);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        const double want = double(w_deq[size_t(batch.token_ids[size_t(t)] * C + c)]) +
                            pos[size_t(batch.positions[size_t(t)] * C + c)];
        EXPECT_NEAR(out[size_t(t * C + c)], want, tol) << precision_name(p) << " token " << t << " channel " << c;
      }
    }
    std::vector<float> no_pos(static_cast<size_t>(T * C), NAN);
    cpu().embedding(host_tensor(no_pos, T, C), *lin, nullptr);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < C; ++c) {
        EXPECT_FLOAT_EQ(no_pos[size_t(t * C + c)] + pos[size_t(batch.positions[size_t(t)] * C + c)],
                        out[size_t(t * C + c)]);
      }
    }
  }
}

TEST(Ops, EmbeddingRejectsOutOfRangeIdsAndPositions) {
  const int64_t V = 5, C = 4, P = 3;
  const std::vector<float> table = random_vector(size_t(V * C), -1.0f, 1.0f, 42);
  const std::vector<float> pos = random_vector(size_t(P * C), -1.0f, 1.0f, 43);
  auto lin = cpu().make_linear(HostTensor{table.data(), DType::F32, V, C}, nullptr, Precision::kFp32, LinearOptions{});
  const DenseWeight pos_table = dense(pos, P, C);
  std::vector<float> out(static_cast<size_t>(C));
  BatchLayout batch;
  batch.token_ids = {int32_t(V)};
  batch.positions = {0};
  batch.seq_of_token = {0};
  batch.block_tables = {{0}};
  batch.seq_lens = {1};
  cpu().begin_batch(batch);
  try {
    cpu().embedding(host_tensor(out, 1, C), *lin, nullptr);
    ADD_FAILURE() << "token id == vocab accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
  batch.token_ids = {1};
  batch.positions = {int32_t(P)};
  cpu().begin_batch(batch);
  try {
    cpu().embedding(host_tensor(out, 1, C), *lin, &pos_table);
    ADD_FAILURE() << "position == table rows accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  }
}

TEST(Ops, GatherLogitRows) {
  const int64_t T = 5, C = 7;
  std::vector<float> in = random_vector(size_t(T * C), -1.0f, 1.0f, 50);
  BatchLayout batch;
  batch.token_ids.assign(size_t(T), 0);
  batch.positions = {0, 1, 2, 0, 1};
  batch.seq_of_token = {0, 0, 0, 1, 1};
  batch.block_tables = {{0}, {1}};
  batch.seq_lens = {3, 2};
  batch.logit_rows = {4, 2, 0};
  cpu().begin_batch(batch);
  std::vector<float> out(batch.logit_rows.size() * size_t(C), NAN);
  cpu().gather_logit_rows(host_tensor(out, int64_t(batch.logit_rows.size()), C), host_tensor(in, T, C));
  for (size_t i = 0; i < batch.logit_rows.size(); ++i) {
    for (int64_t c = 0; c < C; ++c) {
      EXPECT_EQ(out[i * size_t(C) + size_t(c)], in[size_t(batch.logit_rows[i] * C + c)]) << "row " << i;
    }
  }
}

}  // namespace
}  // namespace qs
