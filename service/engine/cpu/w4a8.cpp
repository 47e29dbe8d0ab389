// tokenwire::w4a8_linear: 4-bit weights times 8-bit activations, for the rows of CPU decode steps.
//
// torch's int4 kernel (_weight_int4pack_mm_for_cpu) dequantizes the weights to floats again for
// every 4 rows and multiplies in floats, so 16 rows cost 4 to 6 times one. This kernel does what
// llama.cpp does for Q4_1 weights: each row's activations are quantized to int8 per group of 32
// (a step and the sum of the codes), and the 4-bit codes meet them in AVX512-VNNI integer dot
// products. A weight tile is unpacked once and serves up to 8 rows. 2.5 to 3 times faster than
// torch's kernel from 1 to 16 rows (the microbenchmark in BENCHMARKS.md).
//
// Weights come packed by service/engine/quantized.py, one 320-byte block per 16 output channels
// and 32 inputs (channels c..c+15, inputs k..k+31):
//   bytes 0..255    four 64-byte vectors; vector i holds the codes of inputs k+8i..k+8i+3 in its
//                   low nibbles and k+8i+4..k+8i+7 in its high ones, 4 bytes per channel, so each
//                   unpacked vector is one VNNI operand (channel = 32-bit lane);
//   bytes 256..287  the 16 channels' scales, float16;
//   bytes 288..319  the 16 channels' minimums, float16 (weight = scale * code + minimum).
// Blocks are ordered [channel block][input group], so one channel block streams contiguously.
//
// A row's output is the same whatever the other rows: the integer sums are exact and every row
// goes through the same float operations in the same order.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "simd.h"

namespace tokenwire {
namespace {

constexpr int64_t kGroup = 32;  // inputs per scale
constexpr int64_t kLanes = 16;  // output channels per block
constexpr int64_t kCodeBytes = kGroup * kLanes / 2;
constexpr int64_t kBlockBytes = kCodeBytes + 2 * kLanes * sizeof(uint16_t);
constexpr int kMaxRows = 8;  // rows sharing one unpacked tile (registers: 8 tiles + 8 sums)

// Per row and group of 32: int8 codes (x / step, step = max |x| / 127), the step, and
// step * sum(codes), which carries the weights' minimums.
template <typename T>
TW_AVX512 void quantize_rows(const T* x, int64_t rows, int64_t width, int8_t* codes, float* step,
                             float* step_times_sum) {
  const int64_t groups = width / kGroup;
  const __m512 magnitude = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const T* in = x + r * width + g * kGroup;
      const __m512 a = load16(in), b = load16(in + 16);
      const float largest =
          _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(a, magnitude), _mm512_and_ps(b, magnitude)));
      const __m512 inverse = _mm512_set1_ps(largest > 0.0f ? 127.0f / largest : 0.0f);
      const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inverse));
      const __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inverse));
      int8_t* out = codes + r * width + g * kGroup;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi32_epi8(qa));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm512_cvtepi32_epi8(qb));
      const float s = largest / 127.0f;
      step[r * groups + g] = s;
      step_times_sum[r * groups + g] = s * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)));
    }
  }
}

// R rows (R <= kMaxRows) times one block of 16 channels, over all input groups.
template <int R, typename T>
TW_AVX512 void multiply_tile(const uint8_t* blocks, int64_t groups, const int8_t* codes, int64_t width,
                             const float* step, const float* step_times_sum, T* out, int64_t out_stride) {
  __m512 sums[R];
  for (int r = 0; r < R; ++r) sums[r] = _mm512_setzero_ps();
  const __m512i low_nibble = _mm512_set1_epi8(0x0f);
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* block = blocks + g * kBlockBytes;
    __m512i weights[8];
    for (int i = 0; i < 4; ++i) {
      const __m512i packed = _mm512_loadu_si512(block + 64 * i);
      weights[2 * i] = _mm512_and_si512(packed, low_nibble);
      weights[2 * i + 1] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_nibble);
    }
    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + kCodeBytes)));
    const __m512 minimum =
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + kCodeBytes + 32)));
    for (int r = 0; r < R; ++r) {
      int32_t quads[8];  // the row's 32 codes, 4 to a VNNI broadcast
      std::memcpy(quads, codes + r * width + g * kGroup, sizeof(quads));
      // Two independent chains, so the dot products overlap.
      __m512i even = _mm512_setzero_si512(), odd = _mm512_setzero_si512();
      for (int j = 0; j < 8; j += 2) {
        even = _mm512_dpbusd_epi32(even, weights[j], _mm512_set1_epi32(quads[j]));
        odd = _mm512_dpbusd_epi32(odd, weights[j + 1], _mm512_set1_epi32(quads[j + 1]));
      }
      const __m512 dot = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(even, odd)),
                                       _mm512_set1_ps(step[r * groups + g]));
      sums[r] = _mm512_fmadd_ps(scale, dot, sums[r]);
      sums[r] = _mm512_fmadd_ps(minimum, _mm512_set1_ps(step_times_sum[r * groups + g]), sums[r]);
    }
  }
  for (int r = 0; r < R; ++r) store16(out + r * out_stride, sums[r]);
}

template <typename T>
TW_AVX512 void multiply_rows(const uint8_t* blocks, int64_t groups, const int8_t* codes, int64_t width,
                             const float* step, const float* step_times_sum, T* out, int64_t out_stride,
                             int64_t rows) {
  for (int64_t first = 0; first < rows; first += kMaxRows) {
    const int8_t* c = codes + first * width;
    const float* s = step + first * groups;
    const float* ss = step_times_sum + first * groups;
    T* o = out + first * out_stride;
    switch (std::min<int64_t>(kMaxRows, rows - first)) {
      case 1: multiply_tile<1>(blocks, groups, c, width, s, ss, o, out_stride); break;
      case 2: multiply_tile<2>(blocks, groups, c, width, s, ss, o, out_stride); break;
      case 3: multiply_tile<3>(blocks, groups, c, width, s, ss, o, out_stride); break;
      case 4: multiply_tile<4>(blocks, groups, c, width, s, ss, o, out_stride); break;
      case 5: multiply_tile<5>(blocks, groups, c, width, s, ss, o, out_stride); break;
      case 6: multiply_tile<6>(blocks, groups, c, width, s, ss, o, out_stride); break;
      case 7: multiply_tile<7>(blocks, groups, c, width, s, ss, o, out_stride); break;
      default: multiply_tile<8>(blocks, groups, c, width, s, ss, o, out_stride); break;
    }
  }
}

template <typename T>
void linear(const at::Tensor& x, const at::Tensor& packed, at::Tensor& out) {
  const int64_t rows = x.size(0), width = x.size(1);
  const int64_t channel_blocks = packed.size(0), groups = packed.size(1);
  at::Tensor codes = at::empty({rows, width}, x.options().dtype(at::kChar));
  at::Tensor steps = at::empty({2, rows, groups}, x.options().dtype(at::kFloat));
  float* step = steps.data_ptr<float>();
  float* step_times_sum = step + rows * groups;
  quantize_rows(x.data_ptr<T>(), rows, width, codes.data_ptr<int8_t>(), step, step_times_sum);
  const uint8_t* blocks = packed.data_ptr<uint8_t>();
  const int8_t* c = codes.data_ptr<int8_t>();
  T* o = out.data_ptr<T>();
  const int64_t n = out.size(1);
  at::parallel_for(0, channel_blocks, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      multiply_rows(blocks + b * groups * kBlockBytes, groups, c, width, step, step_times_sum, o + b * kLanes, n,
                    rows);
  });
}

at::Tensor w4a8_linear(const at::Tensor& x, const at::Tensor& packed) {
  TORCH_CHECK(x.dim() == 2, "w4a8_linear: x must be [rows, inputs]");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kBlockBytes && packed.scalar_type() == at::kByte &&
                  packed.is_contiguous(),
              "w4a8_linear: weights must be packed as contiguous uint8 [channels/16, inputs/32, 320]");
  TORCH_CHECK(x.size(1) == packed.size(1) * kGroup, "w4a8_linear: x has ", x.size(1), " inputs, the weights ",
              packed.size(1) * kGroup);
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty({input.size(0), packed.size(0) * kLanes}, input.options());
  if (input.scalar_type() == at::kFloat) {
    linear<float>(input, packed, out);
  } else {
    TORCH_CHECK(input.scalar_type() == at::kBFloat16, "w4a8_linear: x must be float32 or bfloat16");
    linear<at::BFloat16>(input, packed, out);
  }
  return out;
}

}  // namespace
}  // namespace tokenwire

// Whether this CPU runs the library's kernels; asked (through ctypes) before anything calls them.
extern "C" int tokenwire_kernels_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
}

// The schemas are defined in Python (service/engine/native.py), so that TorchScript can compile
// calls to them where this library is not built.
TORCH_LIBRARY_IMPL(tokenwire, CPU, m) { m.impl("w4a8_linear", &tokenwire::w4a8_linear); }
