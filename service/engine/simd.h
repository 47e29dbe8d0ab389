// What tokenwire's CPU kernels share: the instruction set they are compiled for (only their own
// functions: the library loads on any x86-64 and is asked tokenwire_kernels_supported() first),
// and loads and stores of 16 floats from float32 or bfloat16 memory.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#define TW_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512bf16,f16c,fma")))

namespace tokenwire {

TW_AVX512 inline __m512 load16(const float* p, __mmask16 mask = 0xffff) { return _mm512_maskz_loadu_ps(mask, p); }
TW_AVX512 inline __m512 load16(const at::BFloat16* p, __mmask16 mask = 0xffff) {
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
TW_AVX512 inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
TW_AVX512 inline void store16(at::BFloat16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

}  // namespace tokenwire
