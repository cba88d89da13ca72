// GGUF block formats and the dot products of qmatmul.cpp, free of PyTorch so that they can also be built and
// checked on their own (tests/kernels: the portable paths cross-compiled for ARM and run under qemu).
// Included by one translation unit at a time: everything lives in an anonymous namespace.
//
// Block layouts are those of ggml (see gguf.quants for the reference dequantizers); the AVX2 paths and the
// portable paths compute the same integers.

#pragma once

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define EI_AVX2 1
#endif
#if defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace {

// ggml type ids (gguf.GGMLQuantizationType)
enum : int64_t { F16 = 1, Q4_0 = 2, Q5_0 = 6, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30 };

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
  int32_t sum;  // sum of q
};
struct ActQ8_K {  // one block of 256
  int8_t q[256];
  float d;
  int32_t bsums[16];  // sums of q over each 16 values
};

struct Act16 {  // one value rounded to the weight's 16-bit type (F16 or BF16): rows of any length
  uint16_t h;
};

inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN kept quiet (as ggml)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 64);
  return static_cast<uint16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}
inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <bool Brain>
inline float from_16(uint16_t h) {
  return Brain ? bf16_to_float(h) : c10::detail::fp16_ieee_to_fp32_value(h);
}

template <bool Brain>
void quantize_16(const float* x, Act16* y, int64_t k) {
  for (int64_t j = 0; j < k; ++j)
    y[j].h = Brain ? float_to_bf16(x[j]) : c10::detail::fp16_ieee_from_fp32_value(x[j]);
}

void quantize_q8_0(const float* x, ActQ8_0* y, int64_t k) {
  for (int64_t b = 0; b < k / 32; ++b, x += 32) {
    float amax = 0.f;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.f;
    const float id = amax != 0.f ? 127.f / amax : 0.f;
    y[b].d = round_to_half(d);
    y[b].sum = 0;
    for (int j = 0; j < 32; ++j) {
      y[b].q[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
      y[b].sum += y[b].q[j];
    }
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
// Each unpacks a block into signed bytes, then takes plain integer dot products: loops a compiler vectorizes
// for whatever CPU it targets (NEON dot products on ARMv8.2+, SSE/AVX elsewhere). Same integers as the AVX2
// paths below.

template <int N>  // N: 16 or 32
inline int dot_bytes(const int8_t* a, const int8_t* b) {
#if defined(__ARM_FEATURE_DOTPROD)  // ARMv8.2+ (Pi 5's Cortex-A76, Jetson Orin): 16 products per instruction
  int32x4_t acc = vdotq_s32(vdupq_n_s32(0), vld1q_s8(a), vld1q_s8(b));
  if (N == 32) acc = vdotq_s32(acc, vld1q_s8(a + 16), vld1q_s8(b + 16));
  return vaddvq_s32(acc);
#elif defined(__ARM_NEON) && defined(__aarch64__)  // ARMv8.0 (Pi 4): widening multiplies, pairwise adds
  int32x4_t acc = vdupq_n_s32(0);
  for (int i = 0; i < N; i += 16) {
    const int8x16_t x = vld1q_s8(a + i), y = vld1q_s8(b + i);
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x), vget_low_s8(y)));
    acc = vpadalq_s16(acc, vmull_high_s8(x, y));
  }
  return vaddvq_s32(acc);
#else
  int s = 0;
  for (int i = 0; i < N; ++i) s += a[i] * b[i];
  return s;
#endif
}

// Q4_0 (fp16 d, 16 bytes of nibbles: value j low, j+16 high; minus 8) and Q5_0 (fp16 d, 4 bytes of fifth bits,
// 16 bytes of nibbles; minus 16). Blocks are unpacked eight at a time into bytes, then dotted.
constexpr uint64_t kLow = 0x0F0F0F0F0F0F0F0FULL;

inline uint64_t fifth_bits(uint8_t b) {  // byte t = 0x10 if bit t of b is set (SWAR, no table)
  const uint64_t bits = (b * 0x0101010101010101ULL) & 0x8040201008040201ULL;
  return ((bits + 0x7F7F7F7F7F7F7F7FULL) >> 3) & 0x1010101010101010ULL;
}

template <bool Five>
float dot_q45_0_ref(const uint8_t* w, const ActQ8_0* a, int64_t nb) {
  constexpr int bytes = Five ? 22 : 18, offset = Five ? 16 : 8;
  float s = 0.f;
  uint64_t words[8][4];  // eight blocks of 32 values, unsigned
  for (int64_t b0 = 0; b0 < nb; b0 += 8) {
    const int64_t n = std::min<int64_t>(8, nb - b0);
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* blk = w + (b0 + i) * bytes;
      uint64_t q0, q1;
      std::memcpy(&q0, blk + bytes - 16, 8);
      std::memcpy(&q1, blk + bytes - 8, 8);
      words[i][0] = q0 & kLow;
      words[i][1] = q1 & kLow;
      words[i][2] = (q0 >> 4) & kLow;
      words[i][3] = (q1 >> 4) & kLow;
      if (Five)
        for (int k = 0; k < 4; ++k) words[i][k] |= fifth_bits(blk[2 + k]);
    }
    for (int64_t i = 0; i < n; ++i) {
      const ActQ8_0& x = a[b0 + i];
      const int dot = dot_bytes<32>(reinterpret_cast<const int8_t*>(words[i]), x.q) - offset * x.sum;
      s += half_to_float(w + (b0 + i) * bytes) * x.d * static_cast<float>(dot);
    }
  }
  return s;
}

float dot_q8_0_ref(const uint8_t* w, const ActQ8_0* a, int64_t nb) {
  float s = 0.f;
  for (int64_t b = 0; b < nb; ++b, w += 34) {
    const int8_t* qs = reinterpret_cast<const int8_t*>(w + 2);
    s += half_to_float(w) * a[b].d * static_cast<float>(dot_bytes<32>(qs, a[b].q));
  }
  return s;
}

// Q4_K (Five = false): d, dmin (fp16), 12 bytes of scales/mins, 128 bytes of nibbles; value = d*sc*q - dmin*m.
// Q5_K: the same with a fifth bit per value in 32 bytes of qh before the nibbles.
template <bool Five>
float dot_q45_K_ref(const uint8_t* w, const ActQ8_K* a, int64_t nb) {
  float s = 0.f;
  int8_t v[256];
  for (int64_t b = 0; b < nb; ++b, w += Five ? 176 : 144) {
    const uint8_t* qh = w + 16;
    const uint8_t* qs = w + (Five ? 48 : 16);
    for (int c = 0; c < 4; ++c) {  // 64 values: low nibbles = sub-block 2c, high nibbles = sub-block 2c+1
      for (int l = 0; l < 32; ++l) {
        v[64 * c + l] = static_cast<int8_t>(qs[32 * c + l] & 0xF);
        v[64 * c + 32 + l] = static_cast<int8_t>(qs[32 * c + l] >> 4);
        if (Five) {
          v[64 * c + l] = static_cast<int8_t>(v[64 * c + l] | (((qh[l] >> (2 * c)) & 1) << 4));
          v[64 * c + 32 + l] = static_cast<int8_t>(v[64 * c + 32 + l] | (((qh[l] >> (2 * c + 1)) & 1) << 4));
        }
      }
    }
    int sumi = 0, summ = 0;
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      scale_min_k4(j, w + 4, sc, m);
      sumi += sc * dot_bytes<32>(v + 32 * j, a[b].q + 32 * j);
      summ += m * (a[b].bsums[2 * j] + a[b].bsums[2 * j + 1]);
    }
    s += a[b].d * (half_to_float(w) * sumi - half_to_float(w + 2) * summ);
  }
  return s;
}

// Q6_K: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales (one per 16 values), fp16 d;
// value = d*sc*(q - 32), the -32 applied through the activation sums
float dot_q6_K_ref(const uint8_t* w, const ActQ8_K* a, int64_t nb) {
  constexpr uint64_t two = 0x0303030303030303ULL;
  float s = 0.f;
  uint64_t u[32];  // 256 unsigned values, 8 per word
  for (int64_t b = 0; b < nb; ++b, w += 210) {
    for (int h = 0; h < 2; ++h) {
      for (int l = 0; l < 32; l += 8) {
        uint64_t l0, l1, hb;
        std::memcpy(&l0, w + 64 * h + l, 8);
        std::memcpy(&l1, w + 64 * h + 32 + l, 8);
        std::memcpy(&hb, w + 128 + 32 * h + l, 8);
        uint64_t* o = u + 16 * h + l / 8;  // values 128h + l .. (+32, +64, +96)
        o[0] = (l0 & kLow) | ((hb & two) << 4);
        o[4] = (l1 & kLow) | (((hb >> 2) & two) << 4);
        o[8] = ((l0 >> 4) & kLow) | (((hb >> 4) & two) << 4);
        o[12] = ((l1 >> 4) & kLow) | (((hb >> 6) & two) << 4);
      }
    }
    const int8_t* sc = reinterpret_cast<const int8_t*>(w + 192);
    const int8_t* v = reinterpret_cast<const int8_t*>(u);
    int sumi = 0;
    for (int g = 0; g < 16; ++g)
      sumi += sc[g] * (dot_bytes<16>(v + 16 * g, a[b].q + 16 * g) - 32 * a[b].bsums[g]);
    s += a[b].d * half_to_float(w + 208) * static_cast<float>(sumi);
  }
  return s;
}

template <bool Brain>  // n values (the 16-bit "blocks" are single values)
float dot_16_ref(const uint8_t* w, const Act16* a, int64_t n) {
  float s = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    uint16_t h;
    std::memcpy(&h, w + 2 * j, 2);
    s += from_16<Brain>(h) * from_16<Brain>(a[j].h);
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

template <bool Brain>
inline __m256 load8_16(const void* p) {  // eight F16 / BF16 values -> float32
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (Brain) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  return _mm256_cvtph_ps(v);
}

template <int R, bool Brain>  // n values: runs of 8 through the vector unit, the rest one by one
void rows_16(const uint8_t* w, const Act16* a, int64_t n, float* y, int64_t ys) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 wv = load8_16<Brain>(w + 2 * j);
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(wv, load8_16<Brain>(&a[r * n + j].h), acc[r]);
  }
  for (int r = 0; r < R; ++r) y[r * ys] = hsum(acc[r]) + dot_16_ref<Brain>(w + 2 * j, a + r * n + j, n - j);
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
  RowsFn<Act> two;       // two and three activation rows (the rest of n after the fours; nullptr: `one`)
  RowsFn<Act> three;
  void (*quantize)(const float*, Act*, int64_t);
};

Kernel<ActQ8_0> kernel_32(int64_t t, bool portable) {
#ifdef EI_AVX2
  if (!portable) {
    if (t == Q4_0) return {32, 18, rows_32<1, 18, unpack_q4_0>, rows_32<4, 18, unpack_q4_0>,
                           rows_32<2, 18, unpack_q4_0>, rows_32<3, 18, unpack_q4_0>, quantize_q8_0};
    if (t == Q5_0) return {32, 22, rows_32<1, 22, unpack_q5_0>, rows_32<4, 22, unpack_q5_0>,
                           rows_32<2, 22, unpack_q5_0>, rows_32<3, 22, unpack_q5_0>, quantize_q8_0};
    return {32, 34, rows_32<1, 34, unpack_q8_0>, rows_32<4, 34, unpack_q8_0>,
            rows_32<2, 34, unpack_q8_0>, rows_32<3, 34, unpack_q8_0>, quantize_q8_0};
  }
#endif
  (void)portable;
  if (t == Q4_0) return {32, 18, rows_ref<ActQ8_0, dot_q45_0_ref<false>>,
                   nullptr, nullptr, nullptr, quantize_q8_0};
  if (t == Q5_0) return {32, 22, rows_ref<ActQ8_0, dot_q45_0_ref<true>>,
                   nullptr, nullptr, nullptr, quantize_q8_0};
  return {32, 34, rows_ref<ActQ8_0, dot_q8_0_ref>, nullptr, nullptr, nullptr, quantize_q8_0};
}

Kernel<ActQ8_K> kernel_256(int64_t t, bool portable) {
#ifdef EI_AVX2
  if (!portable) {
    if (t == Q4_K) return {256, 144, rows_q45_K<1, false>, rows_q45_K<4, false>, rows_q45_K<2, false>,
                            rows_q45_K<3, false>, quantize_q8_K};
    if (t == Q5_K) return {256, 176, rows_q45_K<1, true>, rows_q45_K<4, true>, rows_q45_K<2, true>,
                            rows_q45_K<3, true>, quantize_q8_K};
    return {256, 210, rows_q6_K<1>, rows_q6_K<4>, rows_q6_K<2>, rows_q6_K<3>, quantize_q8_K};
  }
#endif
  (void)portable;
  if (t == Q4_K) return {256, 144, rows_ref<ActQ8_K, dot_q45_K_ref<false>>,
                   nullptr, nullptr, nullptr, quantize_q8_K};
  if (t == Q5_K) return {256, 176, rows_ref<ActQ8_K, dot_q45_K_ref<true>>,
                   nullptr, nullptr, nullptr, quantize_q8_K};
  return {256, 210, rows_ref<ActQ8_K, dot_q6_K_ref>, nullptr, nullptr, nullptr, quantize_q8_K};
}

Kernel<Act16> kernel_16(int64_t t, bool portable) {
#ifdef EI_AVX2
  if (!portable) {
    if (t == F16) return {1, 2, rows_16<1, false>, rows_16<4, false>, rows_16<2, false>, rows_16<3, false>,
                          quantize_16<false>};
    return {1, 2, rows_16<1, true>, rows_16<4, true>, rows_16<2, true>, rows_16<3, true>, quantize_16<true>};
  }
#endif
  (void)portable;
  if (t == F16) return {1, 2, rows_ref<Act16, dot_16_ref<false>>,
                   nullptr, nullptr, nullptr, quantize_16<false>};
  return {1, 2, rows_ref<Act16, dot_16_ref<true>>, nullptr, nullptr, nullptr, quantize_16<true>};
}

}  // namespace
