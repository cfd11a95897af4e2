// Instruction-count driver for the CPU paged attention (kernels/cpu/attention_paged.h): one layer of the default
// model's shape (9 query heads, 3 KV heads of 64, blocks of 16, fp16 KV — the CPU's default cache) doing what
// `quantserve bench` does per layer: a prompt prefilled in passes of 256 tokens, then decode steps. Run under
// `valgrind --tool=callgrind --toggle-collect='qs::cpu::attention_paged_forward*'` to count the kernel alone
// (machine load does not change instruction counts); bench/attention_instructions.sh builds it against two
// kernel libraries and writes the JSON.
//
//   attention_instructions PROMPT DECODE_STEPS
#include <omp.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/attention_paged.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s PROMPT_TOKENS DECODE_STEPS\n", argv[0]);
    return 2;
  }
  const int64_t prompt = std::atoll(argv[1]), steps = std::atoll(argv[2]);
  const int64_t NH = 9, NKV = 3, HD = 64, BS = 16, chunk = 256;
  const int64_t L = prompt + steps, row = (NH + 2 * NKV) * HD, blocks = (L + BS - 1) / BS;
  std::vector<uint16_t> k(size_t(blocks * NKV * HD * BS)), v(k.size());
  std::vector<float> qkv(size_t(L * row)), out(size_t(chunk * NH * HD));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  for (float& x : qkv) x = u(rng);
  qs::BatchLayout batch;
  batch.block_tables.push_back({});
  for (int64_t b = 0; b < blocks; ++b) batch.block_tables[0].push_back(int32_t(b));
  auto pass = [&](int64_t first, int64_t count) {
    batch.token_ids.assign(size_t(count), 0);
    batch.positions.clear();
    for (int64_t p = first; p < first + count; ++p) batch.positions.push_back(int32_t(p));
    batch.seq_of_token.assign(size_t(count), 0);
    batch.seq_lens = {int32_t(first + count)};
    qs::cpu::attention_paged_forward(out.data(), qkv.data() + first * row, k.data(), v.data(), qs::DType::F16,
                                     batch, BS, NH, NKV, HD);
  };
  for (int64_t p = 0; p < prompt; p += chunk) pass(p, std::min(chunk, prompt - p));
  for (int64_t s = 0; s < steps; ++s) pass(prompt + s, 1);
  std::printf("%lld-token prompt, %lld decode steps, %d threads: out[0] = %g\n", (long long)prompt,
              (long long)steps, omp_get_max_threads(), double(out[0]));
  return 0;
}
