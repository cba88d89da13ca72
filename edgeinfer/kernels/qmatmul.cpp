// y = x W^T with W kept in its GGUF encoding (Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16).
//
// The arithmetic is llama.cpp's: each row of x is rounded to 8 bits per block (Q8_0 blocks of 32 with an fp16
// scale for the 32-blocks, Q8_K blocks of 256 with a float scale and 16-value sums for the K-quants), then
// every output is a sum over blocks of integer dot products times the two block scales. Weights are read at
// their stored 4.5-8.5 bits per value, which is what makes decode fast: it is memory-bound. For F16 / BF16
// weights x is rounded to the same 16-bit type and the products are summed in float32.
//
// The block formats and dot products are in qmatmul_kernels.h; this file is the PyTorch operator around
// them. Exposed as torch.ops.edgeinfer.qmatmul(x, w, type).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "qmatmul_kernels.h"

namespace {

// Below this many multiply-adds a task is not worth a thread (small attention products, short rows)
constexpr int64_t kMinTaskWork = 1 << 16;

// x [B, n, k] float32 times W[b]^T for each of B matrices W [B, rows, bytes per row] -> [B, n, rows]
template <typename Act>
at::Tensor run(const at::Tensor& x, const at::Tensor& w, const Kernel<Act>& kern) {
  const int64_t batch = x.size(0), n = x.size(1), k = x.size(2), rows = w.size(1), row_bytes = w.size(2);
  const int64_t w_batch = w.stride(0), stride = w.stride(1);  // rows may lie apart (e.g. in the KV cache)
  TORCH_CHECK(w.size(0) == batch, "qmatmul: ", batch, " input matrices but ", w.size(0), " weight matrices");
  TORCH_CHECK(k % kern.block == 0 && row_bytes == k / kern.block * kern.bytes, "qmatmul: x has ", k,
              " columns but the weight rows hold ", row_bytes, " bytes");
  const int64_t nb = k / kern.block;
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  at::Tensor out = at::empty({batch, n, rows}, x.options());
  float* y = out.data_ptr<float>();
  std::vector<Act> act(static_cast<size_t>(batch * n * nb));
  at::parallel_for(0, batch * n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) kern.quantize(xp + i * k, act.data() + i * nb, k);
  });
  // weight rows in tiles: a tile stays in cache while every activation row passes over it
  constexpr int64_t tile = 16;
  const int64_t tiles = (rows + tile - 1) / tile;
  const int64_t grain = std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, tile * k * n));
  at::parallel_for(0, batch * tiles, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / tiles, r0 = (t % tiles) * tile, r1 = std::min(rows, r0 + tile);
      const uint8_t* wb = wp + b * w_batch;
      const Act* ab = act.data() + b * n * nb;
      float* yb = y + b * n * rows;
      int64_t i = 0;
      if (kern.four != nullptr) {
        for (; i + 4 <= n; i += 4)
          for (int64_t r = r0; r < r1; ++r) kern.four(wb + r * stride, ab + i * nb, nb, yb + i * rows + r, rows);
      }
      // the last 2-3 rows in one pass over the tile (speculative verification: k+1 rows, any k)
      const RowsFn<Act> last = n - i == 3 ? kern.three : n - i == 2 ? kern.two : nullptr;
      if (last != nullptr) {
        for (int64_t r = r0; r < r1; ++r) last(wb + r * stride, ab + i * nb, nb, yb + i * rows + r, rows);
        i = n;
      }
      for (; i < n; ++i)
        for (int64_t r = r0; r < r1; ++r) kern.one(wb + r * stride, ab + i * nb, nb, yb + i * rows + r, rows);
    }
  });
  return out;
}

at::Tensor qmatmul_impl(const at::Tensor& x_in, const at::Tensor& w_in, int64_t type, bool portable) {
  TORCH_CHECK((x_in.dim() == 2 || x_in.dim() == 3) && x_in.dim() == w_in.dim(),
              "qmatmul: x [n, k] with w [rows, bytes], or x [B, n, k] with w [B, rows, bytes]");
  const bool batched = x_in.dim() == 3;
  const at::Tensor x = batched ? x_in : x_in.unsqueeze(0);
  const at::Tensor w = batched ? w_in : w_in.unsqueeze(0);
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "qmatmul: x must be contiguous float32");
  TORCH_CHECK(w.scalar_type() == at::kByte && (w.stride(2) == 1 || w.size(2) <= 1) && w.stride(1) >= w.size(2),
              "qmatmul: w must be uint8 with contiguous rows");
  at::Tensor y;
  switch (type) {
    case Q4_0: case Q5_0: case Q8_0: y = run(x, w, kernel_32(type, portable)); break;
    case Q4_K: case Q5_K: case Q6_K: y = run(x, w, kernel_256(type, portable)); break;
    case F16: case BF16: y = run(x, w, kernel_16(type, portable)); break;
    default: TORCH_CHECK(false, "qmatmul: unsupported GGUF type id ", type);
  }
  return batched ? y : y.squeeze(0);
}

at::Tensor qmatmul(const at::Tensor& x, const at::Tensor& w, int64_t type) {
  return qmatmul_impl(x, w, type, false);
}
at::Tensor qmatmul_portable(const at::Tensor& x, const at::Tensor& w, int64_t type) {
  return qmatmul_impl(x, w, type, true);
}
at::Tensor simd() {  // one element when the AVX2 paths are compiled in, none otherwise
#ifdef EI_AVX2
  return at::empty({1});
#else
  return at::empty({0});
#endif
}

}  // namespace

TORCH_LIBRARY(edgeinfer, m) {
  m.def("qmatmul(Tensor x, Tensor w, int type) -> Tensor");
  m.def("qmatmul_portable(Tensor x, Tensor w, int type) -> Tensor");
  m.def("simd() -> Tensor");
}

TORCH_LIBRARY_IMPL(edgeinfer, CPU, m) {
  m.impl("qmatmul", &qmatmul);
  m.impl("qmatmul_portable", &qmatmul_portable);
}
TORCH_LIBRARY_IMPL(edgeinfer, CompositeExplicitAutograd, m) { m.impl("simd", &simd); }
