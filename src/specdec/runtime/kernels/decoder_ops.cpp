// The static runner's per-layer work besides the products, fused: RMS norm, rotary embedding
// with the cache write, and attention over the cache.
//
// Every output row is computed by one thread from that row's inputs alone, in a fixed order
// (dot products in 16 lanes reduced pairwise, keys visited in slot order, sums accumulated
// sequentially), so a row is the same bits whatever else shares the call and whatever the
// thread count. Attention visits exactly a query's visible keys in increasing slot order:
// a tree node (its committed context, then its ancestors) and the same token in a line
// extend of its root path (the same keys, at consecutive slots) see the same sequence of
// keys and values, hence give the same bits.
//
// The hot loops are cloned per instruction set (x86-64-v4 / v3 / portable) and chosen at
// load time; every multiply-add is an explicit fma, so the clones round alike.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace {

constexpr int LANES = 16;

#if defined(__x86_64__) && defined(__GNUC__)
#define SPECDEC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SPECDEC_CLONES
#endif

// sum of a[i] * b[i]: 16 lanes over the whole multiples of LANES, a fixed pairwise
// reduction, then the rest in order
SPECDEC_CLONES
float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float acc[LANES] = {0};
  const int64_t whole = n / LANES * LANES;
  for (int64_t i = 0; i < whole; i += LANES)
    for (int l = 0; l < LANES; ++l) acc[l] = std::fma(a[i + l], b[i + l], acc[l]);
  for (int s = LANES / 2; s > 0; s >>= 1)
    for (int l = 0; l < s; ++l) acc[l] += acc[l + s];
  float sum = acc[0];
  for (int64_t i = whole; i < n; ++i) sum = std::fma(a[i], b[i], sum);
  return sum;
}

// acc[d] += p * v[d]
SPECDEC_CLONES
void axpy(float* __restrict acc, float p, const float* __restrict v, int64_t n) {
  for (int64_t d = 0; d < n; ++d) acc[d] = std::fma(p, v[d], acc[d]);
}

SPECDEC_CLONES
void scale_row(float* __restrict out, const float* __restrict x, const float* __restrict w,
               float inv, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * inv) * w[i];
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32");
}

// x [..., H] -> x / sqrt(mean(x^2) + eps) * weight, row by row
at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& weight_in, double eps) {
  check_float(x_in, "x");
  check_float(weight_in, "weight");
  auto x = x_in.contiguous();
  auto weight = weight_in.contiguous();
  const int64_t h = x.size(-1);
  TORCH_CHECK(weight.numel() == h, "weight has ", weight.numel(), " values for ", h, " inputs");
  auto out = at::empty_like(x);
  const int64_t rows = h ? x.numel() / h : 0;
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = xp + r * h;
      const float squares = dot(row, row, h);
      const float inv = 1.0f / std::sqrt(squares / static_cast<float>(h) + static_cast<float>(eps));
      scale_row(op + r * h, row, wp, inv, h);
    }
  });
  return out;
}

// q, k, v [R, W, heads * D] (last dim contiguous; views of one product are fine), cos and sin
// [Rc, W, D] (Rc 1 or R), slots [Rs, W] (Rs 1 or R): k rotated and v written into the caches
// [R', kv_heads, C, D] at their slots; returns q rotated as [R, kv_heads, groups * W, D]
// (query g * W + w: query head h * groups + g of token w), the layout attention reads.
at::Tensor rotary_write(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& cos_in, const at::Tensor& sin_in, at::Tensor keys,
                        at::Tensor values, const at::Tensor& slots_in, int64_t head_dim) {
  for (const at::Tensor* t : {&q, &k, &v, &cos_in, &sin_in}) check_float(*t, "q, k, v, cos, sin");
  check_float(keys, "keys");
  check_float(values, "values");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "q, k, v must be [R, W, heads*D]");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1,
              "q, k, v need a contiguous last dimension");
  TORCH_CHECK(keys.is_contiguous() && values.is_contiguous(), "caches must be contiguous");
  const int64_t rows = q.size(0), width = q.size(1), d = head_dim;
  const int64_t heads = q.size(2) / d, kv_heads = k.size(2) / d, groups = heads / kv_heads;
  TORCH_CHECK(d % 2 == 0 && heads % kv_heads == 0 && keys.size(1) == kv_heads &&
              keys.size(3) == d && keys.size(0) >= rows, "shapes do not match");
  auto cos = cos_in.contiguous(), sin = sin_in.contiguous();
  auto slots = slots_in.to(at::kLong).contiguous();
  const int64_t cos_rows = cos.size(0), slot_rows = slots.size(0);
  TORCH_CHECK(cos.numel() == cos_rows * width * d && (cos_rows == 1 || cos_rows == rows),
              "cos and sin must be [1 or R, W, D]");
  TORCH_CHECK(slots.numel() == slot_rows * width && (slot_rows == 1 || slot_rows == rows),
              "slots must be [1 or R, W]");
  const int64_t capacity = keys.size(2), half = d / 2;
  auto out = at::empty({rows, kv_heads, groups * width, d}, q.options());
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  float *kp = keys.data_ptr<float>(), *vp = values.data_ptr<float>(), *op = out.data_ptr<float>();
  const float *qp = q.data_ptr<float>(), *kin = k.data_ptr<float>(), *vin = v.data_ptr<float>();
  auto rotate = [&](const float* x, const float* c, const float* s, float* y) {
    for (int64_t i = 0; i < half; ++i) y[i] = x[i] * c[i] + (-x[i + half]) * s[i];
    for (int64_t i = half; i < d; ++i) y[i] = x[i] * c[i] + x[i - half] * s[i];
  };
  at::parallel_for(0, rows * width, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / width, w = t % width;
      const float* c = cp + ((cos_rows == 1 ? 0 : r) * width + w) * d;
      const float* s = sp + ((cos_rows == 1 ? 0 : r) * width + w) * d;
      const int64_t at = slot[(slot_rows == 1 ? 0 : r) * width + w];
      TORCH_CHECK(at >= 0 && at < capacity, "slot ", at, " outside the cache");
      for (int64_t h = 0; h < heads; ++h)
        rotate(qp + r * q.stride(0) + w * q.stride(1) + h * d, c, s,
               op + ((r * kv_heads + h / groups) * groups * width + (h % groups) * width + w) * d);
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t cell = ((r * kv_heads + h) * capacity + at) * d;
        rotate(kin + r * k.stride(0) + w * k.stride(1) + h * d, c, s, kp + cell);
        const float* src = vin + r * v.stride(0) + w * v.stride(1) + h * d;
        for (int64_t i = 0; i < d; ++i) vp[cell + i] = src[i];
      }
    }
  });
  return out;
}

// q [R, kv_heads, groups * W, D] (from rotary_write); keys and values [R', kv_heads, C, D].
// Query (r, w) sees slots j < upto[r or 0, w] and, with a tree, slots tree_start[r] + t where
// tree_mask[r, w, t]. Returns [R, W, kv_heads * groups * D] (query head h * groups + g).
at::Tensor attention(const at::Tensor& q_in, const at::Tensor& keys, const at::Tensor& values,
                     const at::Tensor& upto_in, const c10::optional<at::Tensor>& tree_mask_in,
                     const c10::optional<at::Tensor>& tree_start_in, double scale,
                     int64_t width) {
  for (const at::Tensor* t : {&q_in, &keys, &values}) check_float(*t, "q, keys and values");
  TORCH_CHECK(keys.is_contiguous() && values.is_contiguous(), "caches must be contiguous");
  auto q = q_in.contiguous();
  auto upto = upto_in.to(at::kLong).contiguous();
  const int64_t rows = q.size(0), kv_heads = q.size(1), d = q.size(3);
  const int64_t groups = q.size(2) / width, capacity = keys.size(2);
  const int64_t upto_rows = upto.size(0);
  TORCH_CHECK(upto.numel() == upto_rows * width && (upto_rows == 1 || upto_rows == rows),
              "upto must be [1 or R, W]");
  const bool tree = tree_mask_in.has_value() && tree_mask_in->defined();
  at::Tensor mask, start;
  int64_t nodes = 0;
  if (tree) {
    mask = tree_mask_in->to(at::kBool).contiguous();
    start = tree_start_in.value().to(at::kLong).contiguous();
    nodes = mask.size(2);
    TORCH_CHECK(mask.size(0) == rows && mask.size(1) == width && start.numel() == rows,
                "tree_mask must be [R, W, N] and tree_start [R]");
  }
  auto out = at::empty({rows, width, kv_heads * groups * d}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = keys.data_ptr<float>(),
              *vp = values.data_ptr<float>();
  const int64_t* up = upto.data_ptr<int64_t>();
  const bool* mp = tree ? mask.data_ptr<bool>() : nullptr;
  const int64_t* stp = tree ? start.data_ptr<int64_t>() : nullptr;
  float* op = out.data_ptr<float>();
  const float fscale = static_cast<float>(scale);
  at::parallel_for(0, rows * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> visible;
    std::vector<float> scores;
    std::vector<float> acc(d);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / kv_heads, h = task % kv_heads;
      const float* kh = kp + (r * kv_heads + h) * capacity * d;
      const float* vh = vp + (r * kv_heads + h) * capacity * d;
      for (int64_t w = 0; w < width; ++w) {
        visible.clear();
        const int64_t limit = up[(upto_rows == 1 ? 0 : r) * width + w];
        TORCH_CHECK(limit >= 0 && limit <= capacity, "upto ", limit, " outside the cache");
        for (int64_t j = 0; j < limit; ++j) visible.push_back(j);
        if (tree)
          for (int64_t t = 0; t < nodes; ++t)
            if (mp[(r * width + w) * nodes + t]) visible.push_back(stp[r] + t);
        scores.resize(visible.size());
        for (int64_t g = 0; g < groups; ++g) {
          const float* qv = qp + ((r * kv_heads + h) * groups * width + g * width + w) * d;
          float peak = -INFINITY;
          for (size_t i = 0; i < visible.size(); ++i) {
            scores[i] = dot(qv, kh + visible[i] * d, d) * fscale;
            peak = scores[i] > peak ? scores[i] : peak;
          }
          float total = 0.0f;
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (size_t i = 0; i < visible.size(); ++i) {
            const float p = std::exp(scores[i] - peak);
            total += p;
            axpy(acc.data(), p, vh + visible[i] * d, d);
          }
          float* o = op + (r * width + w) * kv_heads * groups * d + (h * groups + g) * d;
          for (int64_t i = 0; i < d; ++i) o[i] = acc[i] / total;
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(specdec, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor", rms_norm);
  m.def("rotary_write(Tensor q, Tensor k, Tensor v, Tensor cos, Tensor sin, Tensor(a!) keys, "
        "Tensor(b!) values, Tensor slots, int head_dim) -> Tensor", rotary_write);
  m.def("attention(Tensor q, Tensor keys, Tensor values, Tensor upto, Tensor? tree_mask, "
        "Tensor? tree_start, float scale, int width) -> Tensor", attention);
}
