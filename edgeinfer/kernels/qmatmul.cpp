// y = x W^T with W kept in its GGUF block encoding (Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K).
//
// The arithmetic is llama.cpp's: each row of x is rounded to 8 bits per block (Q8_0 blocks of 32 with an fp16
// scale for the 32-blocks, Q8_K blocks of 256 with a float scale and 16-value sums for the K-quants), then
// every output is a sum over blocks of integer dot products times the two block scales. Weights are read at
// their stored 4.5-8.5 bits per value, which is what makes decode fast: it is memory-bound.
//
// Block layouts are those of ggml (see gguf.quants for the reference dequantizers); the AVX2 paths and the
// portable paths compute the same integers. Exposed as torch.ops.edgeinfer.qmatmul(x, w, type).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define EI_AVX2 1
#endif

namespace {

// ggml type ids (gguf.GGMLQuantizationType)
enum : int64_t { Q4_0 = 2, Q5_0 = 6, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

inline float half_to_float(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#ifdef __F16C__
  return _cvtsh_ss(h);
#else
  return c10::detail::fp16_ieee_to_fp32_value(h);
#endif
}
inline float round_to_half(float x) {
  return c10::detail::fp16_ieee_to_fp32_value(c10::detail::fp16_ieee_from_fp32_value(x));
}

// ---- activations -------------------------------------------------------------------------------------------
struct ActQ8_0 {  // one block of 32
  int8_t q[32];
  float d;  // the fp16-rounded scale, as float
};
struct ActQ8_K {  // one block of 256
  int8_t q[256];
  float d;
  int32_t bsums[16];  // sums of q over each 16 values
};

void quantize_q8_0(const float* x, ActQ8_0* y, int64_t k) {
  for (int64_t b = 0; b < k / 32; ++b, x += 32) {
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.f;
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    y[b].d = round_to_half(d);
    for (int j = 0; j < 32; ++j) y[b].q[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
  }
}

void quantize_q8_K(const float* x, ActQ8_K* y, int64_t k) {
  for (int64_t b = 0; b < k / 256; ++b, x += 256) {
    float amax = 0.f, max = 0.f;  // max: the value of largest magnitude, with its sign
    for (int j = 0; j < 256; ++j) {
      const float a = std::fabs(x[j]);
      if (a > amax) {
        amax = a;
        max = x[j];
      }
    }
    ActQ8_K& o = y[b];
    if (amax == 0.f) {
      std::memset(&o, 0, sizeof(o));
      continue;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < 256; ++j) {
      const int v = static_cast<int>(std::nearbyint(iscale * x[j]));
      o.q[j] = static_cast<int8_t>(v < 127 ? v : 127);
    }
    for (int g = 0; g < 16; ++g) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += o.q[16 * g + j];
      o.bsums[g] = s;
    }
    o.d = 1.f / iscale;
  }
}

// K-quant 6-bit scales and mins of sub-block j (0..7) packed in 12 bytes
inline void scale_min_k4(int j, const uint8_t* s, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// ---- one weight row . one activation row: portable versions ---------------------------------------------
// Each returns the dot product of the row (nb blocks starting at w) with the quantized activations.

float dot_q4_0_ref(const uint8_t* w, const ActQ8_0* a, int64_t nb) {
  float s = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += 18) {
    const uint8_t* qs = w + 2;
    int sumi = 0;
    for (int j = 0; j < 16; ++j) {
      sumi += ((qs[j] & 0xF) - 8) * a[b].q[j] + ((qs[j] >> 4) - 8) * a[b].q[j + 16];
    }
    s += half_to_float(w) * a[b].d * static_cast<float>(sumi);
  }
  return s;
}

float dot_q5_0_ref(const uint8_t* w, const ActQ8_0* a, int64_t nb) {
  float s = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += 22) {
    uint32_t qh;
    std::memcpy(&qh, w + 2, 4);
    const uint8_t* qs = w + 6;
    int sumi = 0;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
      const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      sumi += (lo - 16) * a[b].q[j] + (hi - 16) * a[b].q[j + 16];
    }
    s += half_to_float(w) * a[b].d * static_cast<float>(sumi);
  }
  return s;
}

float dot_q8_0_ref(const uint8_t* w, const ActQ8_0* a, int64_t nb) {
  float s = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += 34) {
    const int8_t* qs = reinterpret_cast<const int8_t*>(w + 2);
    int sumi = 0;
    for (int j = 0; j < 32; ++j) sumi += qs[j] * a[b].q[j];
    s += half_to_float(w) * a[b].d * static_cast<float>(sumi);
  }
  return s;
}

// Q4_K: d, dmin (fp16), 12 bytes of scales/mins, 128 bytes of nibbles; value = d*sc*q - dmin*m
float dot_q4_K_ref(const uint8_t* w, const ActQ8_K* a, int64_t nb) {
  float s = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += 144) {
    const uint8_t* qs = w + 16;
    int sumi = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      scale_min_k4(j, w + 4, sc, m);
      const int8_t* q8 = a[b].q + 32 * j;
      const uint8_t* q4 = qs + 32 * (j / 2);
      int dot = 0;
      for (int l = 0; l < 32; ++l) dot += ((j & 1) ? (q4[l] >> 4) : (q4[l] & 0xF)) * q8[l];
      sumi += sc * dot;
      summ += m * (a[b].bsums[2 * j] + a[b].bsums[2 * j + 1]);
    }
    s += a[b].d * (half_to_float(w) * sumi - half_to_float(w + 2) * summ);
  }
  return s;
}

// Q5_K: as Q4_K plus a fifth bit per value in 32 bytes of qh
float dot_q5_K_ref(const uint8_t* w, const ActQ8_K* a, int64_t nb) {
  float s = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += 176) {
    const uint8_t* qh = w + 16;
    const uint8_t* qs = w + 48;
    int sumi = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      scale_min_k4(j, w + 4, sc, m);
      const int8_t* q8 = a[b].q + 32 * j;
      const uint8_t* q4 = qs + 32 * (j / 2);
      int dot = 0;
      for (int l = 0; l < 32; ++l) {
        const int v = ((j & 1) ? (q4[l] >> 4) : (q4[l] & 0xF)) | (((qh[l] >> j) & 1) << 4);
        dot += v * q8[l];
      }
      sumi += sc * dot;
      summ += m * (a[b].bsums[2 * j] + a[b].bsums[2 * j + 1]);
    }
    s += a[b].d * (half_to_float(w) * sumi - half_to_float(w + 2) * summ);
  }
  return s;
}

// Q6_K: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales (one per 16 values), fp16 d
float dot_q6_K_ref(const uint8_t* w, const ActQ8_K* a, int64_t nb) {
  float s = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += 210) {
    const int8_t* sc = reinterpret_cast<const int8_t*>(w + 192);
    int sumi = 0;
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = w + 64 * h;
      const uint8_t* qh = w + 128 + 32 * h;
      const int8_t* q8 = a[b].q + 128 * h;
      for (int l = 0; l < 32; ++l) {
        const int g = 8 * h + l / 16;
        const int v0 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
        const int v1 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int v2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int v3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        sumi += sc[g] * v0 * q8[l] + sc[g + 2] * v1 * q8[l + 32] + sc[g + 4] * v2 * q8[l + 64] +
                sc[g + 6] * v3 * q8[l + 96];
      }
    }
    s += a[b].d * half_to_float(w + 208) * static_cast<float>(sumi);
  }
  return s;
}

#ifdef EI_AVX2
// ---- AVX2 versions: the same integers, 32 values per instruction --------------------------------------------
// Each computes one weight row against R activation rows (a, a + nb, ...), writing y[0], y[ys], ...: a weight
// block is unpacked once for all R rows, which is what makes prompt processing (many rows) fast.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline __m256i loadu(const void* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline __m256i nibbles(const uint8_t* p) {  // 16 bytes -> low nibbles in the low lane, high in the high lane
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i m = _mm_set1_epi8(0xF);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

// 32-value blocks: an fp16 scale, then the values, unpacked to signed bytes
inline __m256i unpack_q4_0(const uint8_t* w) { return _mm256_sub_epi8(nibbles(w + 2), _mm256_set1_epi8(8)); }
inline __m256i unpack_q5_0(const uint8_t* w) {
  // byte j of `spread` is byte j/8 of qh; `bit` selects bit j%8 of it
  const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
  uint32_t qh;
  std::memcpy(&qh, w + 2, 4);
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(qh)), spread);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
  // value - 16: the nibble where the fifth bit is set, else the nibble with its high bits set (nibble - 16)
  return _mm256_or_si256(nibbles(w + 6), _mm256_andnot_si256(set, _mm256_set1_epi8(char(0xF0))));
}
inline __m256i unpack_q8_0(const uint8_t* w) { return loadu(w + 2); }

template <int R, int Bytes, __m256i (*Unpack)(const uint8_t*)>
void rows_32(const uint8_t* w, const ActQ8_0* a, int64_t nb, float* y, int64_t ys) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, w += Bytes) {
    const __m256i q = Unpack(w);
    const __m256i mag = _mm256_sign_epi8(q, q);  // maddubs wants an unsigned left operand: move the sign
    const float dw = half_to_float(w);
    for (int r = 0; r < R; ++r) {
      const ActQ8_0& x = a[r * nb + b];
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(mag, _mm256_sign_epi8(loadu(x.q), q)), ones);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x.d), _mm256_cvtepi32_ps(p), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) y[r * ys] = hsum(acc[r]);
}

// unsigned values (< 64) . signed activations, weighted per 16-bit pair by `scales` -> 8 int32 partial sums
inline __m256i dot_scaled(__m256i u, const int8_t* x, __m256i scales) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, loadu(x)), scales);
}

// Q4_K (Five = false) and Q5_K: value = d*sc*q - dmin*m per sub-block of 32
template <int R, bool Five>
void rows_q45_K(const uint8_t* w, const ActQ8_K* a, int64_t nb, float* y, int64_t ys) {
  const __m256i low = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
  __m256 acc[R];
  float mins[R] = {};
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, w += Five ? 176 : 144) {
    int sc[8], m[8];
    for (int j = 0; j < 8; ++j) scale_min_k4(j, w + 4, sc[j], m[j]);
    const uint8_t* qs = w + (Five ? 48 : 16);
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i q = loadu(qs + 32 * c);
      __m256i lo = _mm256_and_si256(q, low), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
      if (Five) {  // bit 2c of qh byte l is the fifth bit of value l of sub-block 2c, bit 2c+1 of sub-block 2c+1
        const __m256i qh = loadu(w + 16);
        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
        hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
      }
      const __m256i s0 = _mm256_set1_epi16(sc[2 * c]), s1 = _mm256_set1_epi16(sc[2 * c + 1]);
      for (int r = 0; r < R; ++r) {
        const int8_t* x = a[r * nb + b].q + 64 * c;
        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(dot_scaled(lo, x, s0), dot_scaled(hi, x + 32, s1)));
      }
    }
    const float dw = half_to_float(w), dmin = half_to_float(w + 2);
    for (int r = 0; r < R; ++r) {
      const ActQ8_K& x = a[r * nb + b];
      int summ = 0;
      for (int j = 0; j < 8; ++j) summ += m[j] * (x.bsums[2 * j] + x.bsums[2 * j + 1]);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(x.d * dw), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
      mins[r] += x.d * dmin * static_cast<float>(summ);
    }
  }
  for (int r = 0; r < R; ++r) y[r * ys] = hsum(acc[r]) - mins[r];
}

// Q6_K: value = d*sc*(q - 32), one int8 scale per 16 values
template <int R>
void rows_q6_K(const uint8_t* w, const ActQ8_K* a, int64_t nb, float* y, int64_t ys) {
  const __m256i low = _mm256_set1_epi8(0xF), two = _mm256_set1_epi8(3);
  __m256 acc[R];
  float offs[R] = {};
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b, w += 210) {
    const int8_t* sc = reinterpret_cast<const int8_t*>(w + 192);
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = w + 64 * h;
      const __m256i qh = loadu(w + 128 + 32 * h);
      const __m256i l0 = loadu(ql), l1 = loadu(ql + 32);
      const __m256i v[4] = {
          _mm256_or_si256(_mm256_and_si256(l0, low), _mm256_slli_epi16(_mm256_and_si256(qh, two), 4)),
          _mm256_or_si256(_mm256_and_si256(l1, low),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), two), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), two), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), two), 4)),
      };
      for (int c = 0; c < 4; ++c) {
        const int g = 8 * h + 2 * c;  // values 32c..32c+15 use scale g, the next 16 use g+1
        const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
        for (int r = 0; r < R; ++r)
          sumi[r] = _mm256_add_epi32(sumi[r], dot_scaled(v[c], a[r * nb + b].q + 128 * h + 32 * c, s));
      }
    }
    const float dw = half_to_float(w + 208);
    for (int r = 0; r < R; ++r) {
      const ActQ8_K& x = a[r * nb + b];
      int bias = 0;  // the -32 offset of every value, applied through the activation sums
      for (int g = 0; g < 16; ++g) bias += sc[g] * x.bsums[g];
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(x.d * dw), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
      offs[r] += x.d * dw * 32.f * static_cast<float>(bias);
    }
  }
  for (int r = 0; r < R; ++r) y[r * ys] = hsum(acc[r]) - offs[r];
}
#endif

// ---- the operator ------------------------------------------------------------------------------------------
template <typename Act>
using RowsFn = void (*)(const uint8_t* w, const Act* a, int64_t nb, float* y, int64_t ys);

template <typename Act, float (*Dot)(const uint8_t*, const Act*, int64_t)>
void rows_ref(const uint8_t* w, const Act* a, int64_t nb, float* y, int64_t) {
  *y = Dot(w, a, nb);
}

template <typename Act>
struct Kernel {
  int64_t block, bytes;  // values and bytes per weight block
  RowsFn<Act> one;       // one activation row
  RowsFn<Act> four;      // four activation rows (nullptr: use `one` four times)
  void (*quantize)(const float*, Act*, int64_t);
};

Kernel<ActQ8_0> kernel_32(int64_t t, bool portable) {
#ifdef EI_AVX2
  if (!portable) {
    if (t == Q4_0) return {32, 18, rows_32<1, 18, unpack_q4_0>, rows_32<4, 18, unpack_q4_0>, quantize_q8_0};
    if (t == Q5_0) return {32, 22, rows_32<1, 22, unpack_q5_0>, rows_32<4, 22, unpack_q5_0>, quantize_q8_0};
    return {32, 34, rows_32<1, 34, unpack_q8_0>, rows_32<4, 34, unpack_q8_0>, quantize_q8_0};
  }
#endif
  (void)portable;
  if (t == Q4_0) return {32, 18, rows_ref<ActQ8_0, dot_q4_0_ref>, nullptr, quantize_q8_0};
  if (t == Q5_0) return {32, 22, rows_ref<ActQ8_0, dot_q5_0_ref>, nullptr, quantize_q8_0};
  return {32, 34, rows_ref<ActQ8_0, dot_q8_0_ref>, nullptr, quantize_q8_0};
}

Kernel<ActQ8_K> kernel_256(int64_t t, bool portable) {
#ifdef EI_AVX2
  if (!portable) {
    if (t == Q4_K) return {256, 144, rows_q45_K<1, false>, rows_q45_K<4, false>, quantize_q8_K};
    if (t == Q5_K) return {256, 176, rows_q45_K<1, true>, rows_q45_K<4, true>, quantize_q8_K};
    return {256, 210, rows_q6_K<1>, rows_q6_K<4>, quantize_q8_K};
  }
#endif
  (void)portable;
  if (t == Q4_K) return {256, 144, rows_ref<ActQ8_K, dot_q4_K_ref>, nullptr, quantize_q8_K};
  if (t == Q5_K) return {256, 176, rows_ref<ActQ8_K, dot_q5_K_ref>, nullptr, quantize_q8_K};
  return {256, 210, rows_ref<ActQ8_K, dot_q6_K_ref>, nullptr, quantize_q8_K};
}

template <typename Act>
at::Tensor run(const at::Tensor& x, const at::Tensor& w, const Kernel<Act>& kern) {
  const int64_t n = x.size(0), k = x.size(1), rows = w.size(0), row_bytes = w.size(1);
  TORCH_CHECK(k % kern.block == 0 && row_bytes == k / kern.block * kern.bytes, "qmatmul: x has ", k,
              " columns but the weight rows hold ", row_bytes, " bytes");
  const int64_t nb = k / kern.block;
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  at::Tensor out = at::empty({n, rows}, x.options());
  float* y = out.data_ptr<float>();
  std::vector<Act> act(static_cast<size_t>(n * nb));
  at::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) kern.quantize(xp + i * k, act.data() + i * nb, k);
  });
  // weight rows in tiles: a tile stays in cache while every activation row passes over it
  constexpr int64_t tile = 16;
  at::parallel_for(0, (rows + tile - 1) / tile, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t r0 = t0 * tile; r0 < std::min(rows, t1 * tile); r0 += tile) {
      const int64_t r1 = std::min(rows, r0 + tile);
      int64_t i = 0;
      if (kern.four != nullptr) {
        for (; i + 4 <= n; i += 4)
          for (int64_t r = r0; r < r1; ++r) kern.four(wp + r * row_bytes, &act[i * nb], nb, y + i * rows + r, rows);
      }
      for (; i < n; ++i)
        for (int64_t r = r0; r < r1; ++r) kern.one(wp + r * row_bytes, &act[i * nb], nb, y + i * rows + r, rows);
    }
  });
  return out;
}

at::Tensor qmatmul_impl(const at::Tensor& x, const at::Tensor& w, int64_t type, bool portable) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "qmatmul: x must be a contiguous float32 matrix [n, k]");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous(),
              "qmatmul: w must be a contiguous uint8 matrix [rows, bytes per row]");
  switch (type) {
    case Q4_0: case Q5_0: case Q8_0: return run(x, w, kernel_32(type, portable));
    case Q4_K: case Q5_K: case Q6_K: return run(x, w, kernel_256(type, portable));
    default: TORCH_CHECK(false, "qmatmul: unsupported GGUF type id ", type);
  }
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
