// Runs the portable kernel paths of edgeinfer/kernels/qmatmul_kernels.h on fixed pseudo-random blocks of
// every type and prints each output as a hex float. Built natively and for ARM (run under qemu), the outputs
// must be identical: the ARM build takes the NEON dot products, the native one the plain loops.
// Build with -ffp-contract=off so that neither compiler fuses the float sums differently.

#include <cstdio>
#include <vector>

#include "qmatmul_kernels.h"

namespace {

uint32_t state = 12345;
uint32_t next() {  // xorshift32
  state ^= state << 13;
  state ^= state >> 17;
  state ^= state << 5;
  return state;
}
float uniform() { return static_cast<float>(next() >> 8) / 16777216.f * 2.f - 1.f; }

void put_half(uint8_t* p, float v) {
  const uint16_t h = c10::detail::fp16_ieee_from_fp32_value(v);
  std::memcpy(p, &h, 2);
}

// random weight rows of `type`: random bytes, with the fp16 scales set to small positive values
std::vector<uint8_t> weights(int64_t type, int64_t block, int64_t bytes, int rows, int k) {
  const int64_t nb = k / block;
  std::vector<uint8_t> w(rows * nb * bytes);
  for (auto& b : w) b = static_cast<uint8_t>(next());
  for (int64_t i = 0; i < rows * nb; ++i) {
    uint8_t* blk = w.data() + i * bytes;
    if (type == F16) {  // 16-bit "blocks" are single values
      put_half(blk, uniform());
    } else if (type == BF16) {
      const uint16_t h = float_to_bf16(uniform());
      std::memcpy(blk, &h, 2);
    } else if (type == Q6_K) {
      put_half(blk + 208, 0.01f * (1.f + uniform()));
    } else {
      put_half(blk, 0.01f * (1.f + uniform()));
      if (type == Q4_K || type == Q5_K) put_half(blk + 2, 0.01f * (1.f + uniform()));
    }
  }
  return w;
}

template <typename Act>
void check(const char* name, int64_t type, const Kernel<Act>& kern) {
  const int rows = 5, n = 3, k = kern.block == 1 ? 509 : 512;  // 16-bit rows: any length
  const std::vector<uint8_t> w = weights(type, kern.block, kern.bytes, rows, k);
  const int64_t nb = k / kern.block;
  std::vector<float> x(n * k);
  for (auto& v : x) v = uniform();
  std::vector<Act> act(n * nb);
  for (int i = 0; i < n; ++i) kern.quantize(x.data() + i * k, act.data() + i * nb, k);
  for (int i = 0; i < n; ++i) {
    for (int r = 0; r < rows; ++r) {
      float y;
      kern.one(w.data() + r * nb * kern.bytes, act.data() + i * nb, nb, &y, 1);
      std::printf("%s %d %d %a\n", name, i, r, y);
    }
  }
}

}  // namespace

int main() {
  check("Q4_0", Q4_0, kernel_32(Q4_0, true));
  check("Q5_0", Q5_0, kernel_32(Q5_0, true));
  check("Q8_0", Q8_0, kernel_32(Q8_0, true));
  check("Q4_K", Q4_K, kernel_256(Q4_K, true));
  check("Q5_K", Q5_K, kernel_256(Q5_K, true));
  check("Q6_K", Q6_K, kernel_256(Q6_K, true));
  check("F16", F16, kernel_16(F16, true));
  check("BF16", BF16, kernel_16(BF16, true));
  return 0;
}
