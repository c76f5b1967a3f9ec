// y[R, N] = x[R, K] . W^T for W stored as small integers with a scale (and a minimum) per
// group of 16 or 32 inputs, read in the tiled layout that specdec/runtime/group_pack.py writes.
//
// Numerics (every path, and the pure-torch fallback in group_fallback.py, computes exactly this):
//   - each row of x is quantized per block of 32 inputs: d = max|x| / 127, q = nearbyint(x / d)
//     (x times 1/d), clamped to [-127, 127];
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

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

// x quantized once per call, shared by every tile (and every path).
struct Activations {
  std::vector<int8_t> q;         // [R, K]
  std::vector<float> scale;      // [R, K / 32]
  std::vector<int32_t> sum;      // [R, groups]: sum of q over each weight group
  std::vector<float> min_term;   // [R, groups]: scale * float(sum), what minimums multiply
};

void quantize(const float* x, int64_t rows, const Layout& L, Activations& a) {
  const int64_t blocks = L.k / kBlock;
  a.q.resize(rows * L.k);
  a.scale.resize(rows * blocks);
  a.sum.resize(rows * L.groups);
  a.min_term.resize(rows * L.groups);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + r * L.k + b * kBlock;
      int8_t* qb = a.q.data() + r * L.k + b * kBlock;
      float amax = 0.0f;
      for (int64_t i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      for (int64_t i = 0; i < kBlock; ++i) {
        const float v = std::nearbyint(xb[i] * id);
        qb[i] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
      }
      a.scale[r * blocks + b] = d;
    }
    for (int64_t g = 0; g < L.groups; ++g) {
      const int8_t* qg = a.q.data() + r * L.k + g * L.group;
      int32_t s = 0;
      for (int64_t i = 0; i < L.group; ++i) s += qg[i];
      a.sum[r * L.groups + g] = s;
      const float d = a.scale[r * blocks + g * L.group / kBlock];
      a.min_term[r * L.groups + g] = d * static_cast<float>(s);
    }
  }
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

// One tile (16 outputs) for rows [r0, r0 + rows): adds into acc[rows][16].
using TileFn = void (*)(const uint8_t*, const Activations&, int64_t, int64_t, const Layout&,
                        float*);

void tile_portable(const uint8_t* tile, const Activations& a, int64_t r0, int64_t rows,
                   const Layout& L, float* acc) {
  const int64_t blocks = L.k / kBlock;
  for (int64_t g = 0; g < L.groups; ++g) {
    const uint8_t* w = tile + g * L.block_bytes();
    const uint8_t* sc = w + L.weight_bytes();
    float sw[kTile], mw[kTile];
    for (int64_t j = 0; j < kTile; ++j) {
      if (L.scale_bytes == 2) {
        uint16_t h;
        std::memcpy(&h, sc + 2 * j, 2);
        sw[j] = half_to_float(h);
      } else {
        std::memcpy(&sw[j], sc + 4 * j, 4);
      }
      mw[j] = 0.0f;
      if (L.mins) std::memcpy(&mw[j], sc + kTile * L.scale_bytes + 4 * j, 4);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = r0 + r;
      const int8_t* qx = a.q.data() + row * L.k + g * L.group;
      const int32_t off = kOffset * a.sum[row * L.groups + g];
      const float sx = a.scale[row * blocks + g * L.group / kBlock];
      const float mx = a.min_term[row * L.groups + g];
      for (int64_t j = 0; j < kTile; ++j) {
        int32_t s = -off;
        for (int64_t c = 0; c < L.group / 4; ++c)
          for (int64_t b = 0; b < 4; ++b)
            s += static_cast<int32_t>(w[c * 64 + j * 4 + b]) * qx[c * 4 + b];
        float v = std::fma(static_cast<float>(s), sw[j] * sx, acc[r * kTile + j]);
        if (L.mins) v = std::fma(-mw[j], mx, v);
        acc[r * kTile + j] = v;
      }
    }
  }
}

template <int kGroup>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))
void tile_avx512vnni_g(const uint8_t* tile, const Activations& a, int64_t r0, int64_t rows,
                       const Layout& L, float* acc) {
  constexpr int kChunks = kGroup / 4;
  const int64_t blocks = L.k / kBlock;
  const int64_t block_bytes = L.block_bytes();
  for (int64_t g = 0; g < L.groups; ++g) {
    const uint8_t* w = tile + g * block_bytes;
    const uint8_t* sc = w + kGroup * kTile;
    __m512i wv[kChunks];
    for (int c = 0; c < kChunks; ++c) wv[c] = _mm512_loadu_si512(w + 64 * c);
    const __m512 sw = L.scale_bytes == 2
        ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)))
        : _mm512_loadu_ps(reinterpret_cast<const float*>(sc));
    const __m512 nmw = L.mins
        ? _mm512_castsi512_ps(_mm512_xor_si512(  // -min, as the portable path's negation
              _mm512_castps_si512(_mm512_loadu_ps(reinterpret_cast<const float*>(sc + kTile * L.scale_bytes))),
              _mm512_set1_epi32(INT32_MIN)))
        : _mm512_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = r0 + r;
      const int8_t* qx = a.q.data() + row * L.k + g * kGroup;
      // two independent chains halve the vpdpbusd latency a single row waits on
      __m512i s0 = _mm512_set1_epi32(-kOffset * a.sum[row * L.groups + g]);
      __m512i s1 = _mm512_setzero_si512();
      for (int c = 0; c < kChunks; c += 2) {
        s0 = _mm512_dpbusd_epi32(s0, wv[c], _mm512_set1_epi32(chunk(qx + 4 * c)));
        s1 = _mm512_dpbusd_epi32(s1, wv[c + 1], _mm512_set1_epi32(chunk(qx + 4 * c + 4)));
      }
      const __m512 d = _mm512_mul_ps(sw, _mm512_set1_ps(a.scale[row * blocks + g * kGroup / kBlock]));
      float* out = acc + r * kTile;
      __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), d,
                                 _mm512_loadu_ps(out));
      if (L.mins) v = _mm512_fmadd_ps(nmw, _mm512_set1_ps(a.min_term[row * L.groups + g]), v);
      _mm512_storeu_ps(out, v);
    }
  }
}

void tile_avx512vnni(const uint8_t* tile, const Activations& a, int64_t r0, int64_t rows,
                     const Layout& L, float* acc) {
  if (L.group == 16) tile_avx512vnni_g<16>(tile, a, r0, rows, L, acc);
  else tile_avx512vnni_g<32>(tile, a, r0, rows, L, acc);
}

template <int kGroup>
__attribute__((target("avx2,fma,f16c")))
void tile_avx2_g(const uint8_t* tile, const Activations& a, int64_t r0, int64_t rows,
                 const Layout& L, float* acc) {
  constexpr int kChunks = kGroup / 4;
  const int64_t blocks = L.k / kBlock;
  const int64_t block_bytes = L.block_bytes();
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < L.groups; ++g) {
    const uint8_t* w = tile + g * block_bytes;
    const uint8_t* sc = w + kGroup * kTile;
    // signed values, as |value| (u8) and the value itself (for its sign): with activations in
    // [-127, 127] a pair of products is at most 2 * 128 * 127, so vpmaddubsw never saturates
    __m256i ws[2 * kChunks], wa[2 * kChunks];
    for (int c = 0; c < 2 * kChunks; ++c) {
      ws[c] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * c)), flip);
      wa[c] = _mm256_abs_epi8(ws[c]);
    }
    __m256 sw_lo, sw_hi;
    if (L.scale_bytes == 2) {
      sw_lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
      sw_hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 16)));
    } else {
      sw_lo = _mm256_loadu_ps(reinterpret_cast<const float*>(sc));
      sw_hi = _mm256_loadu_ps(reinterpret_cast<const float*>(sc + 32));
    }
    const float* mn = reinterpret_cast<const float*>(sc + kTile * L.scale_bytes);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 nm_lo = L.mins ? _mm256_xor_ps(_mm256_loadu_ps(mn), sign) : _mm256_setzero_ps();
    const __m256 nm_hi = L.mins ? _mm256_xor_ps(_mm256_loadu_ps(mn + 8), sign) : _mm256_setzero_ps();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = r0 + r;
      const int8_t* qx = a.q.data() + row * L.k + g * kGroup;
      __m256i s_lo = _mm256_setzero_si256(), s_hi = _mm256_setzero_si256();
      for (int c = 0; c < kChunks; ++c) {
        const __m256i xb = _mm256_set1_epi32(chunk(qx + 4 * c));
        s_lo = _mm256_add_epi32(s_lo, _mm256_madd_epi16(
            _mm256_maddubs_epi16(wa[2 * c], _mm256_sign_epi8(xb, ws[2 * c])), ones));
        s_hi = _mm256_add_epi32(s_hi, _mm256_madd_epi16(
            _mm256_maddubs_epi16(wa[2 * c + 1], _mm256_sign_epi8(xb, ws[2 * c + 1])), ones));
      }
      const __m256 sx = _mm256_set1_ps(a.scale[row * blocks + g * kGroup / kBlock]);
      float* out = acc + r * kTile;
      __m256 lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_lo), _mm256_mul_ps(sw_lo, sx),
                                  _mm256_loadu_ps(out));
      __m256 hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s_hi), _mm256_mul_ps(sw_hi, sx),
                                  _mm256_loadu_ps(out + 8));
      if (L.mins) {
        const __m256 mx = _mm256_set1_ps(a.min_term[row * L.groups + g]);
        lo = _mm256_fmadd_ps(nm_lo, mx, lo);
        hi = _mm256_fmadd_ps(nm_hi, mx, hi);
      }
      _mm256_storeu_ps(out, lo);
      _mm256_storeu_ps(out + 8, hi);
    }
  }
}

void tile_avx2(const uint8_t* tile, const Activations& a, int64_t r0, int64_t rows,
               const Layout& L, float* acc) {
  if (L.group == 16) tile_avx2_g<16>(tile, a, r0, rows, L, acc);
  else tile_avx2_g<32>(tile, a, r0, rows, L, acc);
}

struct Path {
  const char* name;
  TileFn fn;
  bool (*supported)();
};

bool has_avx512vnni() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("fma");
}
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
bool always() { return true; }

// fastest first: "auto" takes the first this CPU supports
constexpr Path kPaths[] = {{"avx512vnni", tile_avx512vnni, has_avx512vnni},
                           {"avx2", tile_avx2, has_avx2},
                           {"portable", tile_portable, always}};

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

at::Tensor group_gemm(const at::Tensor& x, const at::Tensor& packed, int64_t n, int64_t group,
                      int64_t scale_bytes, bool mins, c10::string_view path) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 [R, K] tensor");
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
  const TileFn fn = resolve(std::string(path)).fn;
  const int64_t rows = x.size(0);
  at::Tensor y = at::empty({rows, n}, x.options());
  if (rows == 0 || n == 0) return y;
  Activations a;
  quantize(x.data_ptr<float>(), rows, L, a);
  const uint8_t* base = packed.data_ptr<uint8_t>();
  float* out = y.data_ptr<float>();
  at::parallel_for(0, L.tiles(), 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> acc(kMaxRows * kTile);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t cols = std::min(kTile, n - t * kTile);
      for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows) {
        const int64_t nr = std::min(kMaxRows, rows - r0);
        std::fill(acc.begin(), acc.begin() + nr * kTile, 0.0f);
        fn(base + t * L.tile_bytes(), a, r0, nr, L, acc.data());
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
