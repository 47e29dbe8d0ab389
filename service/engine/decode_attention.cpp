// tokenwire::decode_attention: attention of decode steps (one new token per sequence) against
// the sequences' own slots of the KV cache (service/engine/kv_cache.py: keys [slot, kv head,
// head_dim, capacity], values [slot, kv head, capacity, head_dim]). It also writes the new
// tokens' keys and values into the cache.
//
// torch's batched products need every sequence of a step cut to one window length, masked, and
// copied out of the strided cache first; at 16 sequences that took ~8 ms of a ~28 ms step. Here
// each sequence reads exactly its own positions in place, the query heads of one kv head share
// every key and value load (grouped-query attention), and the softmax stays in float32. A
// sequence's result depends on its own cache and length only, never on the rows beside it.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "simd.h"

namespace tokenwire {
namespace {

// e^x for x <= 0 (scores minus their largest): 2^k * e^r with |r| <= ln(2) / 2, a degree-6
// polynomial for e^r; relative error ~1e-7.
TW_AVX512 inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-88.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);  // ln 2 in two parts (Cody-Waite)
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  for (const float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, k);
}

TW_AVX512 inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

// H query heads (of one kv head) over positions 0..length-1 of one slot's keys [D, capacity] and
// values [capacity, D]. `scores` has room for H rows of `stride` >= length rounded up to 32.
template <typename T, int D, int H>
TW_AVX512 void attend_heads(const T* query, float scale, const T* keys, const T* values, int64_t capacity,
                            int64_t length, float* scores, int64_t stride, T* out) {
  float q[H][D];
  for (int h = 0; h < H; ++h)
    for (int d = 0; d < D; ++d) q[h][d] = static_cast<float>(query[h * D + d]) * scale;

  // Scores, 32 positions at a time: each key row d is a run of positions.
  for (int64_t t = 0; t < length; t += 32) {
    const __mmask16 low = first_lanes(length - t), high = first_lanes(length - t - 16);
    __m512 lo[H], hi[H];
    for (int h = 0; h < H; ++h) lo[h] = hi[h] = _mm512_setzero_ps();
    for (int d = 0; d < D; ++d) {
      const T* row = keys + d * capacity + t;
      _mm_prefetch(reinterpret_cast<const char*>(row + 64 / sizeof(T) * 2), _MM_HINT_T0);
      const __m512 k0 = load16(row, low), k1 = load16(row + 16, high);
      for (int h = 0; h < H; ++h) {
        const __m512 qd = _mm512_set1_ps(q[h][d]);
        lo[h] = _mm512_fmadd_ps(qd, k0, lo[h]);
        hi[h] = _mm512_fmadd_ps(qd, k1, hi[h]);
      }
    }
    for (int h = 0; h < H; ++h) {
      _mm512_storeu_ps(scores + h * stride + t, lo[h]);
      _mm512_storeu_ps(scores + h * stride + t + 16, hi[h]);
    }
  }

  // Softmax numerators in place; their sums.
  float total[H];
  for (int h = 0; h < H; ++h) {
    float* s = scores + h * stride;
    __m512 largest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t t = 0; t < length; t += 16)
      largest = _mm512_mask_max_ps(largest, first_lanes(length - t), largest, _mm512_loadu_ps(s + t));
    const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(largest));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t t = 0; t < length; t += 16) {
      const __mmask16 lanes = first_lanes(length - t);
      const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + t), shift));
      _mm512_mask_storeu_ps(s + t, lanes, e);
      sum = _mm512_mask_add_ps(sum, lanes, sum, e);
    }
    total[h] = _mm512_reduce_add_ps(sum);
  }

  // Weighted values: each value row is one position's D numbers.
  constexpr int kVectors = D / 16;
  __m512 acc[H][kVectors];
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < kVectors; ++i) acc[h][i] = _mm512_setzero_ps();
  for (int64_t t = 0; t < length; ++t) {
    _mm_prefetch(reinterpret_cast<const char*>(values + (t + 8) * D), _MM_HINT_T0);
    __m512 value[kVectors];
    for (int i = 0; i < kVectors; ++i) value[i] = load16(values + t * D + 16 * i);
    for (int h = 0; h < H; ++h) {
      const __m512 weight = _mm512_set1_ps(scores[h * stride + t]);
      for (int i = 0; i < kVectors; ++i) acc[h][i] = _mm512_fmadd_ps(weight, value[i], acc[h][i]);
    }
  }
  for (int h = 0; h < H; ++h) {
    const __m512 inverse = _mm512_set1_ps(1.0f / total[h]);
    for (int i = 0; i < kVectors; ++i) store16(out + h * D + 16 * i, _mm512_mul_ps(acc[h][i], inverse));
  }
}

// Query heads that share one pass over a kv head's cache: at most 16 accumulators.
template <int D>
constexpr int kHeadBlock = D >= 128 ? 2 : 4;

// All `group` query heads of one kv head, in blocks of kHeadBlock.
template <typename T, int D>
TW_AVX512 void attend_group(const T* query, int64_t group, float scale, const T* keys, const T* values,
                            int64_t capacity, int64_t length, float* scores, int64_t stride, T* out) {
  for (int64_t h = 0; h < group; h += kHeadBlock<D>) {
    const T* q = query + h * D;
    T* o = out + h * D;
    switch (std::min<int64_t>(kHeadBlock<D>, group - h)) {
      case 1: attend_heads<T, D, 1>(q, scale, keys, values, capacity, length, scores, stride, o); break;
      case 2: attend_heads<T, D, 2>(q, scale, keys, values, capacity, length, scores, stride, o); break;
      case 3:
        if constexpr (kHeadBlock<D> >= 3) attend_heads<T, D, 3>(q, scale, keys, values, capacity, length, scores, stride, o);
        break;
      default:
        if constexpr (kHeadBlock<D> >= 4) attend_heads<T, D, 4>(q, scale, keys, values, capacity, length, scores, stride, o);
        break;
    }
  }
}

// Asks for one slot's first keys and values in L2, ahead of their use: up to 256 positions (64 KiB
// of bf16 keys and values at head_dim 64); the loops' own prefetches stream the rest.
template <typename T, int D>
inline void prefetch_slot(const T* keys, const T* values, int64_t capacity, int64_t length) {
  constexpr int64_t kLine = 64 / sizeof(T);
  length = std::min<int64_t>(length, 256);
  for (int d = 0; d < D; ++d)
    for (int64_t t = 0; t < length; t += kLine)
      _mm_prefetch(reinterpret_cast<const char*>(keys + d * capacity + t), _MM_HINT_T1);
  for (int64_t i = 0; i < length * D; i += kLine) _mm_prefetch(reinterpret_cast<const char*>(values + i), _MM_HINT_T1);
}

template <typename T, int D>
void attend_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& keys,
                 at::Tensor& values, const int64_t* slots, const int64_t* positions, float scale, at::Tensor& out) {
  const int64_t rows = q.size(0), heads = q.size(1), kv_heads = keys.size(1), capacity = keys.size(3);
  const int64_t group = heads / kv_heads;
  int64_t longest = 0;
  for (int64_t r = 0; r < rows; ++r) longest = std::max(longest, positions[r] + 1);
  const int64_t stride = (longest + 31) / 32 * 32;
  at::Tensor scratch = at::empty({rows, std::min<int64_t>(group, kHeadBlock<D>) * stride}, q.options().dtype(at::kFloat));
  const T* q_data = q.data_ptr<T>();
  const T* k_data = k.data_ptr<T>();
  const T* v_data = v.data_ptr<T>();
  T* key_cache = keys.data_ptr<T>();
  T* value_cache = values.data_ptr<T>();
  T* o = out.data_ptr<T>();
  float* scores = scratch.data_ptr<float>();
  auto slot_keys = [&](int64_t r, int64_t h) { return key_cache + (slots[r] * kv_heads + h) * D * capacity; };
  auto slot_values = [&](int64_t r, int64_t h) { return value_cache + (slots[r] * kv_heads + h) * capacity * D; };
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t position = positions[r];
      for (int64_t h = 0; h < kv_heads; ++h) {
        T* key_rows = slot_keys(r, h);
        T* value_rows = slot_values(r, h);
        const T* new_key = k_data + r * k.stride(0) + h * D;
        for (int d = 0; d < D; ++d) key_rows[d * capacity + position] = new_key[d];
        std::copy_n(v_data + r * v.stride(0) + h * D, D, value_rows + position * D);
        // The next kv head's cache streams in while this one computes.
        if (h + 1 < kv_heads) prefetch_slot<T, D>(slot_keys(r, h + 1), slot_values(r, h + 1), capacity, position + 1);
        else if (r + 1 < end)
          prefetch_slot<T, D>(slot_keys(r + 1, 0), slot_values(r + 1, 0), capacity, positions[r + 1] + 1);
        attend_group<T, D>(q_data + r * q.stride(0) + h * group * D, group, scale, key_rows, value_rows, capacity,
                           position + 1, scores + r * scratch.size(1), stride, o + (r * heads + h * group) * D);
      }
    }
  });
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& keys,
                            at::Tensor& values, const at::Tensor& slots, const at::Tensor& positions, double scale) {
  const int64_t rows = q.size(0), heads = q.size(1), dim = q.size(2);
  TORCH_CHECK(keys.dim() == 4 && values.dim() == 4 && keys.is_contiguous() && values.is_contiguous(),
              "decode_attention: caches must be contiguous [slots, kv_heads, head_dim, capacity] and "
              "[slots, kv_heads, capacity, head_dim]");
  const int64_t kv_heads = keys.size(1), capacity = keys.size(3);
  TORCH_CHECK(keys.size(2) == dim && values.size(1) == kv_heads && values.size(2) == capacity &&
                  values.size(3) == dim && heads % kv_heads == 0,
              "decode_attention: cache shapes do not match the queries");
  for (const at::Tensor* t : {&q, &k, &v})
    TORCH_CHECK(t->dim() == 3 && t->size(0) == rows && t->size(2) == dim && t->stride(2) == 1 &&
                    t->stride(1) == dim && t->scalar_type() == keys.scalar_type(),
                "decode_attention: q, k and v must be [rows, heads, head_dim] in the cache's dtype, "
                "rows possibly strided");
  TORCH_CHECK(k.size(1) == kv_heads && v.size(1) == kv_heads, "decode_attention: k and v need kv_heads heads");
  const at::Tensor slot_index = slots.to(at::kLong).contiguous(), position_index = positions.to(at::kLong).contiguous();
  TORCH_CHECK(slot_index.numel() == rows && position_index.numel() == rows,
              "decode_attention: one slot and position per row");
  const int64_t* slot = slot_index.data_ptr<int64_t>();
  const int64_t* position = position_index.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(slot[r] >= 0 && slot[r] < keys.size(0) && position[r] >= 0 && position[r] < capacity,
                "decode_attention: slot or position out of the cache");
  at::Tensor out = at::empty({rows, heads, dim}, q.options());
  const float s = static_cast<float>(scale);
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || q.scalar_type() == at::kFloat, "decode_attention: float32 or bfloat16 only");
  switch (dim) {
#define TW_HEAD_DIM(D)                                                                             \
  case D:                                                                                          \
    if (bf16) attend_rows<at::BFloat16, D>(q, k, v, keys, values, slot, position, s, out);         \
    else attend_rows<float, D>(q, k, v, keys, values, slot, position, s, out);                     \
    break;
    TW_HEAD_DIM(32)
    TW_HEAD_DIM(64)
    TW_HEAD_DIM(128)
#undef TW_HEAD_DIM
    default:
      TORCH_CHECK(false, "decode_attention: head_dim must be 32, 64 or 128, not ", dim);
  }
  return out;
}

}  // namespace
}  // namespace tokenwire

TORCH_LIBRARY_IMPL(tokenwire, CPU, m) { m.impl("decode_attention", &tokenwire::decode_attention); }
