// y[R, N] = x[R, K] . W^T for W stored as small integers with a scale (and a minimum) per
// group of 16 or 32 inputs, read in the tiled layout that specdec/runtime/group_pack.py writes.
//
// Numerics (every path, and the pure-torch fallback in group_fallback.py, computes exactly this):
//   - each row of x is quantized per block of 32 inputs: d = max|x| / 127,
//     q = nearbyint(x * (1 / d)) (ties to even; 0 where d is 0), clamped to [-127, 127];
//   - per output, per weight group g (in order 0, 1, ...): isum = sum q * value (int32, exact),
//     acc = fma(float(isum), scale_w * d, acc), then with minimums
//     acc = fma(-min_w, d * float(sum q over the group), acc).
// So row r of any call is bit-identical to that row computed alone, whatever the thread count.
//
// Packed layout: outputs in tiles of 16 (N padded); per tile, per group, one block of
//   [group/4 chunks x 16 outputs x 4 bytes: value + 128 as u8]
//   [16 scales: fp16 or fp32] [16 minimums: fp32, only when the weight has them]
// so a tile's bytes are one forward stream, and a broadcast 4-byte activation chunk times one
// 64-byte weight chunk (AVX512-VNNI vpdpbusd) gives 16 outputs' partial sums at once.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(__i386__)
#define SPECDEC_X86 1  // the vector paths; elsewhere only the portable one is built
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr int64_t kTile = 16;     // outputs per tile
constexpr int64_t kBlock = 32;    // activation inputs per activation scale
constexpr int64_t kMaxRows = 64;  // rows whose accumulators one tile pass keeps
constexpr int32_t kOffset = 128;  // stored weight byte = value + kOffset

struct Layout {
  int64_t n, k, group, groups, scale_bytes;
  bool mins;
  int64_t weight_bytes() const { return group * kTile; }
  int64_t block_bytes() const {
    return weight_bytes() + kTile * scale_bytes + (mins ? kTile * 4 : 0);
  }
  int64_t tile_bytes() const { return groups * block_bytes(); }
  int64_t tiles() const { return (n + kTile - 1) / kTile; }
};

// x quantized once per call, shared by every tile. Per-group numbers are [groups, R] so that a
// tile's inner loop over rows walks them contiguously.
struct Activations {
  std::unique_ptr<int8_t[]> q;         // [R, K]
  std::unique_ptr<float[]> scale;      // [groups, R]: the scale of the 32-block holding the group
  std::unique_ptr<int32_t[]> offset;   // [groups, R]: -128 * sum of q over the group
  std::unique_ptr<float[]> min_term;   // [groups, R]: scale * float(sum of q over the group)
};

// Quantizes 32 inputs into q, writes the sums of q over each half (16), returns the scale.
// Every path's version gives the same bits: the same IEEE division and product, round to
// nearest even, clamp (never active for finite x).
using BlockFn = float (*)(const float* x, int8_t* q, int32_t* half_sums);

float block_portable(const float* x, int8_t* q, int32_t* half_sums) {
  float amax = 0.0f;
  for (int64_t i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  half_sums[0] = half_sums[1] = 0;
  for (int64_t i = 0; i < kBlock; ++i) {
    q[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, std::nearbyint(x[i] * id))));
    half_sums[i / 16] += q[i];
  }
  return d;
}

#ifdef SPECDEC_X86
__attribute__((target("avx512f")))
float block_avx512(const float* x, int8_t* q, int32_t* half_sums) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  const __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(
      _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), abs_mask)),
      _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(b), abs_mask))));
  const float d = amax / 127.0f;
  const __m512 id = _mm512_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int h = 0; h < 2; ++h) {
    const __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(h ? b : a, id),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i i = _mm512_cvtps_epi32(_mm512_min_ps(hi, _mm512_max_ps(lo, v)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * h), _mm512_cvtsepi32_epi8(i));
    half_sums[h] = _mm512_reduce_add_epi32(i);
  }
  return d;
}

__attribute__((target("avx2")))
float block_avx2(const float* x, int8_t* q, int32_t* half_sums) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 v[4];
  __m256 m = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(x + 8 * i);
    m = _mm256_max_ps(m, _mm256_and_ps(v[i], abs_mask));
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float d = amax / 127.0f;
  const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  __m256i n[4];
  for (int i = 0; i < 4; ++i) {
    const __m256 r = _mm256_round_ps(_mm256_mul_ps(v[i], id),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    n[i] = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, r)));
  }
  for (int h = 0; h < 2; ++h) {
    const __m256i s8 = _mm256_add_epi32(n[2 * h], n[2 * h + 1]);
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    half_sums[h] = _mm_cvtsi128_si32(s4);
  }
  // packs interleave 128-bit lanes: bytes come out as 4-value runs of n0 n1 n2 n3 per lane
  const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]),
                                            _mm256_packs_epi32(n[2], n[3]));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_permutevar8x32_epi32(packed, order));
  return d;
}

#endif  // SPECDEC_X86

void quantize(const float* x, int64_t rows, const Layout& L, BlockFn block, Activations& a) {
  const int64_t blocks = L.k / kBlock;
  a.q.reset(new int8_t[rows * L.k]);
  a.scale.reset(new float[L.groups * rows]);
  a.offset.reset(new int32_t[L.groups * rows]);
  a.min_term.reset(new float[L.groups * rows]);
  // rows in parallel only where there are many inputs: waking the pool costs microseconds
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / L.k), [&](int64_t r0, int64_t r1) {
    std::vector<float> block_scale(blocks);
    std::vector<int32_t> half_sums(2 * blocks);  // sums of q per 16 inputs
    for (int64_t r = r0; r < r1; ++r) {
      int8_t* qr = a.q.get() + r * L.k;
      for (int64_t b = 0; b < blocks; ++b)
        block_scale[b] = block(x + r * L.k + b * kBlock, qr + b * kBlock, &half_sums[2 * b]);
      for (int64_t g = 0; g < L.groups; ++g) {
        const int32_t s = L.group == 16 ? half_sums[g] : half_sums[2 * g] + half_sums[2 * g + 1];
        const float d = block_scale[g * L.group / kBlock];
        a.scale[g * rows + r] = d;
        a.offset[g * rows + r] = -kOffset * s;
        a.min_term[g * rows + r] = d * static_cast<float>(s);
      }
    }
  });
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    const float f = std::ldexp(static_cast<float>(mant), -24);  // zero or subnormal
    return sign ? -f : f;
  }
  const uint32_t bits = exp == 31 ? (sign | 0x7f800000u | (mant << 13))
                                  : (sign | ((exp + 112) << 23) | (mant << 13));
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

int32_t chunk(const int8_t* q) {  // 4 activation bytes as one int32 (to broadcast)
  int32_t v;
  std::memcpy(&v, q, 4);
  return v;
}

// One tile (16 outputs) for `rows` rows starting at row r0: adds into acc[rows][16].
struct TileArgs {
  const uint8_t* tile;
  const int8_t* q;          // row r0's activations; row r at q + r * k
  const float* scale;       // group g, row r at [g * stride + r] (pointers start at row r0)
  const int32_t* offset;
  const float* min_term;
  int64_t rows, k, stride, groups, block_bytes;
  float* acc;
};
using TileFn = void (*)(const TileArgs&);

template <int kGroup, bool kMins, bool kHalf>
void tile_portable_t(const TileArgs& t) {
  constexpr int64_t kScaleBytes = kHalf ? 2 : 4;
  for (int64_t g = 0; g < t.groups; ++g) {
    const uint8_t* w = t.tile + g * t.block_bytes;
    const uint8_t* sc = w + kGroup * kTile;
    float sw[kTile], nmw[kTile];
    for (int64_t j = 0; j < kTile; ++j) {
      if (kHalf) {
        uint16_t h;
        std::memcpy(&h, sc + 2 * j, 2);
        sw[j] = half_to_float(h);
      } else {
        std::memcpy(&sw[j], sc + 4 * j, 4);
      }
      float m = 0.0f;
      if (kMins) std::memcpy(&m, sc + kTile * kScaleBytes + 4 * j, 4);
      nmw[j] = -m;
    }
    for (int64_t r = 0; r < t.rows; ++r) {
      const int8_t* qx = t.q + r * t.k + g * kGroup;
      const int64_t i = g * t.stride + r;
      for (int64_t j = 0; j < kTile; ++j) {
        int32_t s = t.offset[i];
        for (int64_t c = 0; c < kGroup / 4; ++c)
          for (int64_t b = 0; b < 4; ++b)
            s += static_cast<int32_t>(w[c * 64 + j * 4 + b]) * qx[c * 4 + b];
        float v = std::fma(static_cast<float>(s), sw[j] * t.scale[i], t.acc[r * kTile + j]);
        if (kMins) v = std::fma(nmw[j], t.min_term[i], v);
        t.acc[r * kTile + j] = v;
      }
    }
  }
}

#ifdef SPECDEC_X86
// sum += w[c] . broadcast(4 bytes at q + 4c) for every chunk c of a group, the broadcasts
// embedded in vpdpbusd: GCC emits a separate vpbroadcastd for _mm512_set1_epi32 (one more
// vector uop per 64 multiply-adds). The bytes read are not named as a memory operand: GCC
// would then keep every accumulator array in memory too (vector types may alias anything),
// and nothing needs ordering: the activations are written before the tile loops start.
template <int kGroup>
__attribute__((target("avx512f,avx512vnni")))
inline void dpbusd_group(__m512i& sum, const __m512i* w, const int8_t* q) {
  if constexpr (kGroup == 16) {
    __asm__("vpdpbusd 0(%[q])%{1to16%}, %[w0], %[s]\n\t"
            "vpdpbusd 4(%[q])%{1to16%}, %[w1], %[s]\n\t"
            "vpdpbusd 8(%[q])%{1to16%}, %[w2], %[s]\n\t"
            "vpdpbusd 12(%[q])%{1to16%}, %[w3], %[s]"
            : [s] "+v"(sum)
            : [q] "r"(q), [w0] "v"(w[0]),
              [w1] "v"(w[1]), [w2] "v"(w[2]), [w3] "v"(w[3]));
  } else {
    __asm__("vpdpbusd 0(%[q])%{1to16%}, %[w0], %[s]\n\t"
            "vpdpbusd 4(%[q])%{1to16%}, %[w1], %[s]\n\t"
            "vpdpbusd 8(%[q])%{1to16%}, %[w2], %[s]\n\t"
            "vpdpbusd 12(%[q])%{1to16%}, %[w3], %[s]\n\t"
            "vpdpbusd 16(%[q])%{1to16%}, %[w4], %[s]\n\t"
            "vpdpbusd 20(%[q])%{1to16%}, %[w5], %[s]\n\t"
            "vpdpbusd 24(%[q])%{1to16%}, %[w6], %[s]\n\t"
            "vpdpbusd 28(%[q])%{1to16%}, %[w7], %[s]"
            : [s] "+v"(sum)
            : [q] "r"(q), [w0] "v"(w[0]),
              [w1] "v"(w[1]), [w2] "v"(w[2]), [w3] "v"(w[3]), [w4] "v"(w[4]),
              [w5] "v"(w[5]), [w6] "v"(w[6]), [w7] "v"(w[7]));
  }
}

// kRows rows [r0, r0 + kRows) of one tile, their accumulators in registers through all groups
// (the tile's weights are re-read from cache per block of rows, not from memory).
template <int kGroup, bool kMins, bool kHalf, int kRows>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))
void rows_avx512vnni(const TileArgs& t, int64_t r0) {
  constexpr int kChunks = kGroup / 4;
  constexpr int64_t kScaleBytes = kHalf ? 2 : 4;
  const uint8_t* __restrict w = t.tile;
  const int8_t* __restrict q = t.q + r0 * t.k;
  const float* __restrict scale = t.scale + r0;
  const int32_t* __restrict offset = t.offset + r0;
  const float* __restrict min_term = t.min_term + r0;
  const int64_t k = t.k, stride = t.stride, groups = t.groups, block_bytes = t.block_bytes;
  __m512 acc[kRows];
  const int8_t* qx[kRows];  // each row's activations of the current group: one register each
  for (int i = 0; i < kRows; ++i) {
    acc[i] = _mm512_setzero_ps();
    qx[i] = q + i * k;
  }
  for (int64_t g = 0; g < groups; ++g, w += block_bytes, scale += stride, offset += stride,
               min_term += stride) {
    const uint8_t* sc = w + kGroup * kTile;
    __m512i wv[kChunks];
    for (int c = 0; c < kChunks; ++c) wv[c] = _mm512_loadu_si512(w + 64 * c);
    const __m512 sw = kHalf
        ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)))
        : _mm512_loadu_ps(reinterpret_cast<const float*>(sc));
    __m512 nmw = _mm512_setzero_ps();
    if (kMins)  // -min, as the portable path's negation
      nmw = _mm512_castsi512_ps(_mm512_xor_si512(
          _mm512_castps_si512(_mm512_loadu_ps(reinterpret_cast<const float*>(sc + kTile * kScaleBytes))),
          _mm512_set1_epi32(INT32_MIN)));
#pragma GCC unroll 8  // fully: the accumulators must stay in registers
    for (int i = 0; i < kRows; ++i) {
      // one chain per row when there are several: they overlap out of order
      __m512i sum = _mm512_set1_epi32(offset[i]);
      if constexpr (kRows == 1) {
        // one row alone is bound by memory, and a chain of dependent vpdpbusd fills the
        // scheduler and holds back the next groups' loads: independent products, then a tree
        __m512i part[kChunks];
        for (int c = 0; c < kChunks; ++c)
          part[c] = _mm512_dpbusd_epi32(c == 0 ? sum : _mm512_setzero_si512(), wv[c],
                                        _mm512_set1_epi32(chunk(qx[i] + 4 * c)));
        for (int step = 1; step < kChunks; step *= 2)
          for (int c = 0; c + step < kChunks; c += 2 * step)
            part[c] = _mm512_add_epi32(part[c], part[c + step]);
        sum = part[0];
      } else {
        dpbusd_group<kGroup>(sum, wv, qx[i]);
      }
      qx[i] += kGroup;
      const __m512 d = _mm512_mul_ps(sw, _mm512_set1_ps(scale[i]));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, acc[i]);
      if (kMins) acc[i] = _mm512_fmadd_ps(nmw, _mm512_set1_ps(min_term[i]), acc[i]);
    }
  }
  for (int i = 0; i < kRows; ++i) _mm512_storeu_ps(t.acc + (r0 + i) * kTile, acc[i]);
}

template <int kGroup, bool kMins, bool kHalf>
void tile_avx512vnni_t(const TileArgs& t) {
  // blocks of 8 rows, then the rest in ONE block: each block re-reads the tile's weights, so
  // 7 rows as 4 + 2 + 1 cost three passes where one does (integer sums are exact and each
  // row's float steps are its own: the blocking changes no bit)
  int64_t r = 0;
  for (; r + 8 <= t.rows; r += 8) rows_avx512vnni<kGroup, kMins, kHalf, 8>(t, r);
  switch (t.rows - r) {
    case 7: rows_avx512vnni<kGroup, kMins, kHalf, 7>(t, r); break;
    case 6: rows_avx512vnni<kGroup, kMins, kHalf, 6>(t, r); break;
    case 5: rows_avx512vnni<kGroup, kMins, kHalf, 5>(t, r); break;
    case 4: rows_avx512vnni<kGroup, kMins, kHalf, 4>(t, r); break;
    case 3: rows_avx512vnni<kGroup, kMins, kHalf, 3>(t, r); break;
    case 2: rows_avx512vnni<kGroup, kMins, kHalf, 2>(t, r); break;
    case 1: rows_avx512vnni<kGroup, kMins, kHalf, 1>(t, r); break;
    default: break;
  }
}

template <int kGroup, bool kMins, bool kHalf>
__attribute__((target("avx2,fma,f16c")))
void tile_avx2_t(const TileArgs& t) {
  constexpr int kChunks = kGroup / 4;
  constexpr int64_t kScaleBytes = kHalf ? 2 : 4;
  const uint8_t* __restrict w = t.tile;
  const int8_t* __restrict q = t.q;
  const float* __restrict scale = t.scale;
  const float* __restrict min_term = t.min_term;
  float* __restrict acc = t.acc;
  const int64_t rows = t.rows, k = t.k, stride = t.stride, groups = t.groups;
  const int64_t block_bytes = t.block_bytes;
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t g = 0; g < groups; ++g, w += block_bytes, q += kGroup, scale += stride,
               min_term += stride) {
    const uint8_t* sc = w + kGroup * kTile;
    // signed values, as |value| (u8) and the value itself (for its sign): with activations in
    // [-127, 127] a pair of products is at most 2 * 128 * 127, so vpmaddubsw never saturates
    __m256i ws[2 * kChunks], wa[2 * kChunks];
    for (int c = 0; c < 2 * kChunks; ++c) {
      ws[c] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * c)), flip);
      wa[c] = _mm256_abs_epi8(ws[c]);
    }
    __m256 sw_lo, sw_hi;
    if (kHalf) {
      sw_lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
      sw_hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 16)));
    } else {
      sw_lo = _mm256_loadu_ps(reinterpret_cast<const float*>(sc));
      sw_hi = _mm256_loadu_ps(reinterpret_cast<const float*>(sc + 32));
    }
    __m256 nm_lo = _mm256_setzero_ps(), nm_hi = _mm256_setzero_ps();
    if (kMins) {
      const float* mn = reinterpret_cast<const float*>(sc + kTile * kScaleBytes);
      nm_lo = _mm256_xor_ps(_mm256_loadu_ps(mn), sign);
      nm_hi = _mm256_xor_ps(_mm256_loadu_ps(mn + 8), sign);
    }
    const int8_t* qx = q;
    for (int64_t r = 0; r < rows; ++r, qx += k) {
      __m256i s_lo = _mm256_setzero_si256(), s_hi = _mm256_setzero_si256();
      for (int c = 0; c < kChunks; ++c) {
        const __m256i xb = _mm256_set1_epi32(chunk(qx + 4 * c));
        s_lo = _mm256_add_epi32(s_lo, _mm256_madd_epi16(
            _mm256_maddubs_epi16(wa[2 * c], _mm256_sign_epi8(xb, ws[2 * c])), ones));
        s_hi = _mm256_add_epi32(s_hi, _mm256_madd_epi16(
            _mm256_maddubs_epi16(wa[2 * c + 1], _mm256_sign_epi8(xb, ws[2 * c + 1])), ones));
      }
      const __m256 sx = _mm256_set1_ps(scale[r]);
      float* out = acc + r * kTile;
      __m256 lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_lo), _mm256_mul_ps(sw_lo, sx),
                                  _mm256_loadu_ps(out));
      __m256 hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_hi), _mm256_mul_ps(sw_hi, sx),
                                  _mm256_loadu_ps(out + 8));
      if (kMins) {
        const __m256 mx = _mm256_set1_ps(min_term[r]);
        lo = _mm256_fmadd_ps(nm_lo, mx, lo);
        hi = _mm256_fmadd_ps(nm_hi, mx, hi);
      }
      _mm256_storeu_ps(out, lo);
      _mm256_storeu_ps(out + 8, hi);
    }
  }
}

#endif  // SPECDEC_X86

// The instantiation for a layout: [group 16 / 32][minimums][float16 scales].
template <template <int, bool, bool> class Kernel>
TileFn pick(const Layout& L) {
  const bool half = L.scale_bytes == 2;
  if (L.group == 16) {
    if (L.mins) return half ? Kernel<16, true, true>::fn : Kernel<16, true, false>::fn;
    return half ? Kernel<16, false, true>::fn : Kernel<16, false, false>::fn;
  }
  if (L.mins) return half ? Kernel<32, true, true>::fn : Kernel<32, true, false>::fn;
  return half ? Kernel<32, false, true>::fn : Kernel<32, false, false>::fn;
}

template <int G, bool M, bool H> struct Portable { static constexpr TileFn fn = tile_portable_t<G, M, H>; };
#ifdef SPECDEC_X86
template <int G, bool M, bool H> struct Avx512 { static constexpr TileFn fn = tile_avx512vnni_t<G, M, H>; };
template <int G, bool M, bool H> struct Avx2 { static constexpr TileFn fn = tile_avx2_t<G, M, H>; };
#endif

struct Path {
  const char* name;
  TileFn (*pick)(const Layout&);
  BlockFn block;
  bool (*supported)();
};

#ifdef SPECDEC_X86
bool has_avx512vnni() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("fma");
}
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
#endif
bool always() { return true; }

// fastest first: "auto" takes the first this CPU supports
constexpr Path kPaths[] = {
#ifdef SPECDEC_X86
    {"avx512vnni", pick<Avx512>, block_avx512, has_avx512vnni},
    {"avx2", pick<Avx2>, block_avx2, has_avx2},
#endif
    {"portable", pick<Portable>, block_portable, always}};

const Path& resolve(const std::string& name) {
  for (const Path& p : kPaths) {
    if (name == "auto" ? p.supported() : name == p.name) {
      TORCH_CHECK(p.supported(), "kernel path ", name, " is not supported by this CPU");
      return p;
    }
  }
  TORCH_CHECK(false, "unknown kernel path '", name, "' (auto, avx512vnni, avx2, portable)");
}

std::string group_gemm_path(c10::string_view name) {
  return resolve(std::string(name)).name;
}

// x [..., K] (any floating dtype; converted to float32 here, one op fewer per call) -> [..., N]
at::Tensor group_gemm(const at::Tensor& input, const at::Tensor& packed, int64_t n,
                      int64_t group, int64_t scale_bytes, bool mins, c10::string_view path) {
  TORCH_CHECK(input.dim() >= 1 && input.is_floating_point() && input.device().is_cpu(),
              "x must be a floating CPU tensor");
  const at::Tensor x = input.reshape({-1, input.size(-1)}).to(at::kFloat).contiguous();
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous(),
              "packed must be a contiguous uint8 tensor");
  TORCH_CHECK(group == 16 || group == 32, "group must be 16 or 32");
  TORCH_CHECK(scale_bytes == 2 || scale_bytes == 4, "scale_bytes must be 2 or 4");
  const int64_t k = x.size(1);
  TORCH_CHECK(k % kBlock == 0, "K (", k, ") must be a multiple of ", kBlock);
  const Layout L{n, k, group, k / group, scale_bytes, mins};
  TORCH_CHECK(packed.numel() == L.tiles() * L.tile_bytes(),
              "packed holds ", packed.numel(), " bytes, the layout needs ",
              L.tiles() * L.tile_bytes());
  const Path& chosen = resolve(std::string(path));
  const TileFn fn = chosen.pick(L);
  const int64_t rows = x.size(0);
  std::vector<int64_t> shape = input.sizes().vec();
  shape.back() = n;
  at::Tensor y = at::empty(shape, x.options());
  if (rows == 0 || n == 0) return y;
  Activations a;
  quantize(x.data_ptr<float>(), rows, L, chosen.block, a);
  const uint8_t* base = packed.data_ptr<uint8_t>();
  float* out = y.data_ptr<float>();
  at::parallel_for(0, L.tiles(), 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> acc(kMaxRows * kTile);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t cols = std::min(kTile, n - t * kTile);
      for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows) {
        const int64_t nr = std::min(kMaxRows, rows - r0);
        std::fill(acc.begin(), acc.begin() + nr * kTile, 0.0f);
        fn(TileArgs{base + t * L.tile_bytes(), a.q.get() + r0 * k, a.scale.get() + r0,
                    a.offset.get() + r0, a.min_term.get() + r0, nr, k, rows, L.groups,
                    L.block_bytes(), acc.data()});
        for (int64_t r = 0; r < nr; ++r)
          std::memcpy(out + (r0 + r) * n + t * kTile, acc.data() + r * kTile, cols * 4);
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(specdec, m) {
  m.def("group_gemm(Tensor x, Tensor packed, int n, int group, int scale_bytes, bool mins, "
        "str path) -> Tensor", group_gemm);
  m.def("group_gemm_path(str path) -> str", group_gemm_path);
}
