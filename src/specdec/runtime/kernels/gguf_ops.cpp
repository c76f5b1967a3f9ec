// GGUF blocks -> GroupQuantized arrays, and GroupQuantized -> the product's tiled layout, in
// one multithreaded pass each (loading a model: the numpy and torch versions in
// models/gguf_blocks.py and runtime/group_pack.py give the same bytes and are the reference).
//
// Decoding rounds nothing: values are the blocks' integers, scales are the blocks' float16
// numbers (times their small integer sub-scales, exact in float32), minimums likewise.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

// ggml's type ids
constexpr int64_t Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q6_K = 14;

float half(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

struct Format {
  int64_t block;  // inputs per block
  int64_t bytes;  // bytes per block
  int64_t group;  // inputs per scale
  bool mins;
};

Format format_of(int64_t type) {
  switch (type) {
    case Q4_0: return {32, 18, 32, false};
    case Q4_1: return {32, 20, 32, true};
    case Q5_0: return {32, 22, 32, false};
    case Q5_1: return {32, 24, 32, true};
    case Q8_0: return {32, 34, 32, false};
    case Q4_K: return {256, 144, 32, true};
    case Q6_K: return {256, 210, 16, false};
    default: TORCH_CHECK(false, "gguf_decode: unsupported block type ", type);
  }
}

// one block's values, scales (and mins) at v, s, m
void decode_block(int64_t type, const uint8_t* b, int8_t* v, float* s, float* m) {
  switch (type) {
    case Q8_0:
      s[0] = half(b);
      std::memcpy(v, b + 2, 32);
      return;
    case Q4_0:
    case Q4_1: {
      const bool one = type == Q4_1;
      const uint8_t* qs = b + (one ? 4 : 2);
      s[0] = half(b);
      if (one) m[0] = -half(b + 2);
      for (int j = 0; j < 16; ++j) {
        v[j] = static_cast<int8_t>((qs[j] & 0x0F) - (one ? 0 : 8));
        v[j + 16] = static_cast<int8_t>((qs[j] >> 4) - (one ? 0 : 8));
      }
      return;
    }
    case Q5_0:
    case Q5_1: {
      const bool one = type == Q5_1;
      uint32_t qh;
      std::memcpy(&qh, b + (one ? 4 : 2), 4);
      const uint8_t* qs = b + (one ? 8 : 6);
      s[0] = half(b);
      if (one) m[0] = -half(b + 2);
      for (int j = 0; j < 16; ++j) {
        const int high0 = ((qh >> j) << 4) & 0x10, high1 = (qh >> (j + 12)) & 0x10;
        v[j] = static_cast<int8_t>(((qs[j] & 0x0F) | high0) - (one ? 0 : 16));
        v[j + 16] = static_cast<int8_t>(((qs[j] >> 4) | high1) - (one ? 0 : 16));
      }
      return;
    }
    case Q4_K: {
      const float d = half(b), dmin = half(b + 2);
      const uint8_t* sc = b + 4;
      const uint8_t* q = b + 16;
      for (int j = 0; j < 8; ++j) {
        int scale, min;
        if (j < 4) {
          scale = sc[j] & 63;
          min = sc[j + 4] & 63;
        } else {
          scale = (sc[j + 4] & 0x0F) | ((sc[j - 4] >> 6) << 4);
          min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
        }
        s[j] = d * static_cast<float>(scale);
        m[j] = dmin * static_cast<float>(min);
      }
      for (int c = 0; c < 4; ++c)  // 32 bytes: low nibbles sub-block 2c, high ones 2c + 1
        for (int l = 0; l < 32; ++l) {
          v[64 * c + l] = static_cast<int8_t>(q[32 * c + l] & 0x0F);
          v[64 * c + 32 + l] = static_cast<int8_t>(q[32 * c + l] >> 4);
        }
      return;
    }
    case Q6_K: {
      const uint8_t* ql = b;
      const uint8_t* qh = b + 128;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
      const float d = half(b + 208);
      for (int j = 0; j < 16; ++j) s[j] = d * static_cast<float>(sc[j]);
      for (int n = 0; n < 2; ++n) {
        int8_t* y = v + 128 * n;
        const uint8_t* l0 = ql + 64 * n;
        const uint8_t* h0 = qh + 32 * n;
        for (int l = 0; l < 32; ++l) {
          y[l] = static_cast<int8_t>(((l0[l] & 0x0F) | ((h0[l] & 3) << 4)) - 32);
          y[l + 32] = static_cast<int8_t>(((l0[l + 32] & 0x0F) | (((h0[l] >> 2) & 3) << 4)) - 32);
          y[l + 64] = static_cast<int8_t>(((l0[l] >> 4) | (((h0[l] >> 4) & 3) << 4)) - 32);
          y[l + 96] = static_cast<int8_t>(((l0[l + 32] >> 4) | (((h0[l] >> 6) & 3) << 4)) - 32);
        }
      }
      return;
    }
  }
}

// raw [n, row bytes] uint8 -> (values int8 [n, k], scales float32 [n, k / group],
// mins float32 [n, k / group] or an empty tensor)
std::tuple<at::Tensor, at::Tensor, at::Tensor> gguf_decode(const at::Tensor& raw_in,
                                                           int64_t type, int64_t k) {
  TORCH_CHECK(raw_in.scalar_type() == at::kByte && raw_in.dim() == 2, "raw must be uint8 [n, bytes]");
  const Format f = format_of(type);
  TORCH_CHECK(k % f.block == 0 && raw_in.size(1) == k / f.block * f.bytes,
              "row bytes do not match ", k, " inputs");
  auto raw = raw_in.contiguous();
  const int64_t n = raw.size(0), blocks = k / f.block, per_block = f.block / f.group;
  auto values = at::empty({n, k}, at::kChar);
  auto scales = at::empty({n, k / f.group}, at::kFloat);
  auto mins = f.mins ? at::empty({n, k / f.group}, at::kFloat) : at::empty({0}, at::kFloat);
  const uint8_t* rp = raw.data_ptr<uint8_t>();
  int8_t* vp = values.data_ptr<int8_t>();
  float *sp = scales.data_ptr<float>(), *mp = f.mins ? mins.data_ptr<float>() : nullptr;
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t i = 0; i < blocks; ++i)
        decode_block(type, rp + (r * blocks + i) * f.bytes, vp + r * k + i * f.block,
                     sp + (r * blocks + i) * per_block,
                     mp ? mp + (r * blocks + i) * per_block : nullptr);
  });
  return {values, scales, mins};
}

constexpr int64_t TILE = 16, CHUNK = 4;

// values int8 [N, K] (N a multiple of TILE), scales float32 [N, G] stored as 2 (float16) or 4
// bytes, mins float32 [N, G] or empty -> per tile, per group: [group / 4 chunks x 16 outputs x
// 4 inputs: value + 128 as uint8][16 scales][16 mins, if any] (runtime/group_pack.py)
at::Tensor pack_tiles(const at::Tensor& values_in, const at::Tensor& scales_in,
                      const at::Tensor& mins_in, int64_t scale_bytes) {
  TORCH_CHECK(values_in.scalar_type() == at::kChar && scales_in.scalar_type() == at::kFloat,
              "values int8 and scales float32");
  TORCH_CHECK(scale_bytes == 2 || scale_bytes == 4, "scale_bytes is 2 or 4");
  auto values = values_in.contiguous();
  auto scales = scales_in.contiguous();
  const bool with_mins = mins_in.numel() > 0;
  auto mins = with_mins ? mins_in.contiguous() : mins_in;
  const int64_t n = values.size(0), k = values.size(1), groups = scales.size(1);
  TORCH_CHECK(n % TILE == 0 && k % groups == 0, "N a multiple of 16, K of the groups");
  const int64_t group = k / groups, tiles = n / TILE;
  const int64_t block = group * TILE + TILE * scale_bytes + (with_mins ? TILE * 4 : 0);
  auto data = at::empty({tiles * groups * block}, at::kByte);
  const int8_t* vp = values.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  const float* mp = with_mins ? mins.data_ptr<float>() : nullptr;
  uint8_t* out = data.data_ptr<uint8_t>();
  at::parallel_for(0, tiles, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t g = 0; g < groups; ++g) {
        uint8_t* o = out + (t * groups + g) * block;
        for (int64_t c = 0; c < group / CHUNK; ++c)
          for (int64_t row = 0; row < TILE; ++row) {
            const int8_t* src = vp + (t * TILE + row) * k + g * group + c * CHUNK;
            for (int64_t i = 0; i < CHUNK; ++i)
              *o++ = static_cast<uint8_t>(static_cast<uint8_t>(src[i]) ^ 0x80);
          }
        for (int64_t row = 0; row < TILE; ++row) {
          const float scale = sp[(t * TILE + row) * groups + g];
          if (scale_bytes == 2) {
            const uint16_t bits = c10::Half(scale).x;
            std::memcpy(o, &bits, 2);
          } else {
            std::memcpy(o, &scale, 4);
          }
          o += scale_bytes;
        }
        if (with_mins)
          for (int64_t row = 0; row < TILE; ++row, o += 4)
            std::memcpy(o, mp + (t * TILE + row) * groups + g, 4);
      }
  });
  return data;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(specdec, m) {
  m.def("gguf_decode(Tensor raw, int type, int k) -> (Tensor, Tensor, Tensor)", gguf_decode);
  m.def("pack_tiles(Tensor values, Tensor scales, Tensor mins, int scale_bytes) -> Tensor",
        pack_tiles);
}
