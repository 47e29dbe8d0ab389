// What tokenwire's CPU kernels share: the instruction set they are compiled for (only their own
// functions: the library loads on any x86-64 and is asked tokenwire_kernels_supported() first),
// and loads and stores of 16 floats from float32 or bfloat16 memory.
//
// AVX512-BF16 is not required: bfloat16 is converted with integer instructions, rounding to the
// nearest even as torch does, so the kernels also run on AVX512-VNNI CPUs without it.
#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#define TW_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c,fma")))

namespace tokenwire {

TW_AVX512 inline __m512 load16(const float* p, __mmask16 mask = 0xffff) { return _mm512_maskz_loadu_ps(mask, p); }
TW_AVX512 inline __m512 load16(const at::BFloat16* p, __mmask16 mask = 0xffff) {
  const __m256i bits = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}
TW_AVX512 inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
TW_AVX512 inline void store16(at::BFloat16* p, __m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
}

}  // namespace tokenwire
