// tokenwire::dense_linear: x @ W.T for float32 or bfloat16 weights, each row computed alike.
//
// torch's matrix products pick their kernels by the number of rows, and on some CPUs a row's
// result then depends on how many rows share the product (with MKL, 2 or 3 float32 rows round
// differently from 4 or more). The engine needs a token's numbers to be the same in any step, as
// a prompt token or a decode token, so this kernel gives every output element one fixed order:
// a single float32 accumulator over the inputs in order, whatever the tile it is computed in.
//
// Weights come packed by service/engine/quantized.py as [channels / 16, inputs, 16]: for each
// input, the 16 channels of a block side by side (one vector).

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "simd.h"

namespace tokenwire {
namespace {

constexpr int64_t kLanes = 16;  // output channels per block
constexpr int kMaxRows = 6;     // rows sharing each weight load: 2 blocks x 6 rows = 12 accumulators

// R rows (float32, [R][width]) times C consecutive channel blocks.
template <int R, int C, typename W, typename O>
TW_AVX512 void multiply_tile(const W* blocks, int64_t width, const float* x, O* out, int64_t out_stride) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t k = 0; k < width; ++k) {
    __m512 w[C];
    for (int c = 0; c < C; ++c) w[c] = load16(blocks + (c * width + k) * kLanes);
    for (int r = 0; r < R; ++r) {
      const __m512 xr = _mm512_set1_ps(x[r * width + k]);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(xr, w[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) store16(out + r * out_stride + c * kLanes, acc[r][c]);
}

template <int C, typename W, typename O>
TW_AVX512 void multiply_rows(const W* blocks, int64_t width, const float* x, int64_t rows, O* out, int64_t out_stride) {
  for (int64_t first = 0; first < rows; first += kMaxRows) {
    const float* xr = x + first * width;
    O* o = out + first * out_stride;
    switch (std::min<int64_t>(kMaxRows, rows - first)) {
      case 1: multiply_tile<1, C>(blocks, width, xr, o, out_stride); break;
      case 2: multiply_tile<2, C>(blocks, width, xr, o, out_stride); break;
      case 3: multiply_tile<3, C>(blocks, width, xr, o, out_stride); break;
      case 4: multiply_tile<4, C>(blocks, width, xr, o, out_stride); break;
      case 5: multiply_tile<5, C>(blocks, width, xr, o, out_stride); break;
      default: multiply_tile<6, C>(blocks, width, xr, o, out_stride); break;
    }
  }
}

template <typename W, typename O>
void linear(const at::Tensor& x, const at::Tensor& packed, at::Tensor& out) {
  const int64_t rows = x.size(0), width = x.size(1), blocks = packed.size(0), n = out.size(1);
  const at::Tensor inputs = x.to(at::kFloat).contiguous();
  const float* xf = inputs.data_ptr<float>();
  const W* w = packed.data_ptr<W>();
  O* o = out.data_ptr<O>();
  // Pairs of channel blocks (two accumulator chains per row); a lone last block alone.
  const int64_t pairs = (blocks + 1) / 2;
  at::parallel_for(0, pairs, 4, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const int64_t block = 2 * pair;
      const W* weights = w + block * width * kLanes;
      if (block + 1 < blocks) multiply_rows<2>(weights, width, xf, rows, o + block * kLanes, n);
      else multiply_rows<1>(weights, width, xf, rows, o + block * kLanes, n);
    }
  });
}

at::Tensor dense_linear(const at::Tensor& x, const at::Tensor& packed) {
  TORCH_CHECK(x.dim() == 2, "dense_linear: x must be [rows, inputs]");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kLanes && packed.is_contiguous(),
              "dense_linear: weights must be packed as contiguous [channels/16, inputs, 16]");
  TORCH_CHECK(x.size(1) == packed.size(1), "dense_linear: x has ", x.size(1), " inputs, the weights ",
              packed.size(1));
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "dense_linear: x must be float32 or bfloat16");
  at::Tensor out = at::empty({x.size(0), packed.size(0) * kLanes}, x.options());
  const bool bf16_weights = packed.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16_weights || packed.scalar_type() == at::kFloat, "dense_linear: weights must be float32 or bfloat16");
  if (bf16_weights) {
    if (dtype == at::kFloat) linear<at::BFloat16, float>(x, packed, out);
    else linear<at::BFloat16, at::BFloat16>(x, packed, out);
  } else {
    if (dtype == at::kFloat) linear<float, float>(x, packed, out);
    else linear<float, at::BFloat16>(x, packed, out);
  }
  return out;
}

}  // namespace
}  // namespace tokenwire

TORCH_LIBRARY_IMPL(tokenwire, CPU, m) { m.impl("dense_linear", &tokenwire::dense_linear); }
