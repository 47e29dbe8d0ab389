// tokenwire::paged_attention: the attention of a step's tokens, prompt chunks and decode tokens
// alike, over their sequences' blocks of the paged KV cache (service/engine/kv_cache.py: keys
// [block, kv head, head_dim, 32], values [block, kv head, 32, head_dim]; a sequence's block table
// lists its blocks in order). It first writes every token's key and value into its block, then
// attends each token to positions 0..its own.
//
// Each token reads exactly its own positions in place, block after block, with no gather copy;
// the query heads of one kv head share every key and value load (grouped-query attention); the
// softmax stays in float32. A token's result depends on its sequence's cached keys and values and
// its position only: not on the tokens beside it in the step, and not on whether it came as part
// of a prompt chunk or as a decode token. That is what lets the engine reuse cached blocks (and
// recompute preempted sequences) without changing a single output bit.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "simd.h"

namespace tokenwire {
namespace {

constexpr int64_t kBlock = 32;  // positions per cache block: one tile of scores

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

// Where one kv head's keys and values of each block are.
template <typename T, int D>
struct HeadCache {
  const T* keys;
  const T* values;
  int64_t kv_heads;
  int64_t head;
  const int64_t* table;  // the sequence's blocks

  const T* block_keys(int64_t j) const { return keys + (table[j] * kv_heads + head) * D * kBlock; }
  const T* block_values(int64_t j) const { return values + (table[j] * kv_heads + head) * kBlock * D; }
};

// Asks for a block's keys and values in L2 ahead of their use.
template <typename T, int D>
inline void prefetch_block(const HeadCache<T, D>& cache, int64_t j) {
  constexpr int64_t kLine = 64 / sizeof(T);
  const T* k = cache.block_keys(j);
  const T* v = cache.block_values(j);
  for (int64_t i = 0; i < D * kBlock; i += kLine) {
    _mm_prefetch(reinterpret_cast<const char*>(k + i), _MM_HINT_T1);
    _mm_prefetch(reinterpret_cast<const char*>(v + i), _MM_HINT_T1);
  }
}

// H query heads (of one kv head) of R tokens of one sequence over its positions: token r over
// 0..lengths[r]-1. The tokens share every key load (and, while their accumulators fit in
// registers, every value load), and each token's numbers go through exactly the operations, in
// the order, it would alone. `scores` has room for R * H rows of `stride` >= the longest length
// rounded up to kBlock floats.
template <typename T, int D, int H, int R>
TW_AVX512 void attend_heads(const T* const* queries, float scale, const HeadCache<T, D>& cache,
                            const int64_t* lengths, float* scores, int64_t stride, T* const* outs) {
  float q[R][H][D];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < D; ++d) q[r][h][d] = static_cast<float>(queries[r][h * D + d]) * scale;
  int64_t longest = 0;
  for (int r = 0; r < R; ++r) longest = std::max(longest, lengths[r]);
  const int64_t blocks = (longest + kBlock - 1) / kBlock;

  // Scores, one block (32 positions) at a time: each key row d of a block is a run of positions.
  // Lanes past a token's own length (but within the longest) get scores that are never read.
  for (int64_t j = 0; j < blocks; ++j) {
    const int64_t t = j * kBlock;
    const __mmask16 low = first_lanes(longest - t), high = first_lanes(longest - t - 16);
    const T* keys = cache.block_keys(j);
    const T* next = j + 1 < blocks ? cache.block_keys(j + 1) : keys;
    __m512 lo[R][H], hi[R][H];
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < H; ++h) lo[r][h] = hi[r][h] = _mm512_setzero_ps();
    for (int d = 0; d < D; ++d) {
      const T* row = keys + d * kBlock;
      _mm_prefetch(reinterpret_cast<const char*>(next + d * kBlock), _MM_HINT_T0);
      const __m512 k0 = load16(row, low), k1 = load16(row + 16, high);
      for (int r = 0; r < R; ++r)
        for (int h = 0; h < H; ++h) {
          const __m512 qd = _mm512_set1_ps(q[r][h][d]);
          lo[r][h] = _mm512_fmadd_ps(qd, k0, lo[r][h]);
          hi[r][h] = _mm512_fmadd_ps(qd, k1, hi[r][h]);
        }
    }
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < H; ++h) {
        _mm512_storeu_ps(scores + (r * H + h) * stride + t, lo[r][h]);
        _mm512_storeu_ps(scores + (r * H + h) * stride + t + 16, hi[r][h]);
      }
  }

  // Softmax numerators in place; their sums.
  float total[R][H];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < H; ++h) {
      const int64_t length = lengths[r];
      float* s = scores + (r * H + h) * stride;
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
      total[r][h] = _mm512_reduce_add_ps(sum);
    }

  // Weighted values: each value row is one position's D numbers.
  constexpr int kVectors = D / 16;
  // The tokens share the value loads while their accumulators fit in 24 registers.
  constexpr int kShared = R * H * kVectors <= 24 ? R : 1;
  for (int first = 0; first < R; first += kShared) {
    __m512 acc[kShared][H][kVectors];
    for (int r = 0; r < kShared; ++r)
      for (int h = 0; h < H; ++h)
        for (int v = 0; v < kVectors; ++v) acc[r][h][v] = _mm512_setzero_ps();
    int64_t reach = 0;
    for (int r = 0; r < kShared; ++r) reach = std::max(reach, lengths[first + r]);
    for (int64_t j = 0; j * kBlock < reach; ++j) {
      const T* values = cache.block_values(j);
      const int64_t count = std::min(kBlock, reach - j * kBlock);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t t = j * kBlock + i;
        _mm_prefetch(reinterpret_cast<const char*>(values + (i + 8) * D), _MM_HINT_T0);
        __m512 value[kVectors];
        for (int v = 0; v < kVectors; ++v) value[v] = load16(values + i * D + 16 * v);
        for (int r = 0; r < kShared; ++r) {
          if (t >= lengths[first + r]) continue;
          for (int h = 0; h < H; ++h) {
            const __m512 weight = _mm512_set1_ps(scores[((first + r) * H + h) * stride + t]);
            for (int v = 0; v < kVectors; ++v) acc[r][h][v] = _mm512_fmadd_ps(weight, value[v], acc[r][h][v]);
          }
        }
      }
    }
    for (int r = 0; r < kShared; ++r)
      for (int h = 0; h < H; ++h) {
        const __m512 inverse = _mm512_set1_ps(1.0f / total[first + r][h]);
        for (int v = 0; v < kVectors; ++v)
          store16(outs[first + r] + h * D + 16 * v, _mm512_mul_ps(acc[r][h][v], inverse));
      }
  }
}

// Query heads that share one pass over a kv head's cache: at most 16 accumulators.
template <int D>
constexpr int kHeadBlock = D >= 128 ? 2 : 4;

// All `group` query heads of one kv head, in blocks of kHeadBlock, for R tokens of a sequence.
template <typename T, int D, int R>
TW_AVX512 void attend_group(const T* const* queries, int64_t group, float scale, const HeadCache<T, D>& cache,
                            const int64_t* lengths, float* scores, int64_t stride, T* const* outs) {
  for (int64_t h = 0; h < group; h += kHeadBlock<D>) {
    const T* q[R];
    T* o[R];
    for (int r = 0; r < R; ++r) q[r] = queries[r] + h * D, o[r] = outs[r] + h * D;
    switch (std::min<int64_t>(kHeadBlock<D>, group - h)) {
      case 1: attend_heads<T, D, 1, R>(q, scale, cache, lengths, scores, stride, o); break;
      case 2: attend_heads<T, D, 2, R>(q, scale, cache, lengths, scores, stride, o); break;
      case 3:
        if constexpr (kHeadBlock<D> >= 3) attend_heads<T, D, 3, R>(q, scale, cache, lengths, scores, stride, o);
        break;
      default:
        if constexpr (kHeadBlock<D> >= 4) attend_heads<T, D, 4, R>(q, scale, cache, lengths, scores, stride, o);
        break;
    }
  }
}

template <typename T, int D>
void attend_rows(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& key_cache,
                 at::Tensor& value_cache, const int64_t* tables, int64_t table_width, const int64_t* row_tables,
                 const int64_t* positions, float scale, at::Tensor& out) {
  const int64_t rows = q.size(0), heads = q.size(1), kv_heads = key_cache.size(1);
  const int64_t group = heads / kv_heads;
  T* keys = key_cache.data_ptr<T>();
  T* values = value_cache.data_ptr<T>();
  auto table_of = [&](int64_t r) { return tables + row_tables[r] * table_width; };

  // Every token's key and value first: the tokens of a prompt chunk attend to each other's.
  const T* k_data = k.data_ptr<T>();
  const T* v_data = v.data_ptr<T>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t block = table_of(r)[positions[r] / kBlock], offset = positions[r] % kBlock;
      for (int64_t h = 0; h < kv_heads; ++h) {
        T* key_column = keys + (block * kv_heads + h) * D * kBlock + offset;
        const T* new_key = k_data + r * k.stride(0) + h * D;
        for (int d = 0; d < D; ++d) key_column[d * kBlock] = new_key[d];
        std::copy_n(v_data + r * v.stride(0) + h * D, D, values + ((block * kv_heads + h) * kBlock + offset) * D);
      }
    }
  });

  int64_t longest = 0;
  for (int64_t r = 0; r < rows; ++r) longest = std::max(longest, positions[r] + 1);
  const int64_t stride = (longest + kBlock - 1) / kBlock * kBlock;
  // Pairs of consecutive tokens of one sequence (a prompt chunk's) attend together; others alone.
  std::vector<int64_t> firsts;
  for (int64_t r = 0; r < rows; ++r) {
    firsts.push_back(r);
    if (r + 1 < rows && row_tables[r + 1] == row_tables[r] && positions[r + 1] == positions[r] + 1) ++r;
  }
  const int64_t pairs = static_cast<int64_t>(firsts.size());
  auto size_of = [&](int64_t p) { return (p + 1 < pairs ? firsts[p + 1] : rows) - firsts[p]; };
  const T* q_data = q.data_ptr<T>();
  T* o = out.data_ptr<T>();
  // One work item per kv head and pair, so that a single decode token uses every thread too.
  // Head-major: the tokens of a prompt chunk go through one kv head's keys and values one after
  // another, while they are still in the core's cache.
  at::parallel_for(0, pairs * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(2 * std::min<int64_t>(group, kHeadBlock<D>) * stride);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / pairs, p = item % pairs, r = firsts[p];
      const HeadCache<T, D> cache{keys, values, kv_heads, h, table_of(r)};
      if (item + 1 < end) {  // the next item's first block streams in while this one computes
        const int64_t next_h = (item + 1) / pairs, next_r = firsts[(item + 1) % pairs];
        prefetch_block(HeadCache<T, D>{keys, values, kv_heads, next_h, table_of(next_r)}, 0);
      }
      const T* queries[2] = {q_data + r * q.stride(0) + h * group * D, nullptr};
      T* outs[2] = {o + (r * heads + h * group) * D, nullptr};
      const int64_t lengths[2] = {positions[r] + 1, r + 1 < rows ? positions[r + 1] + 1 : 0};
      if (size_of(p) == 2) {
        queries[1] = queries[0] + q.stride(0);
        outs[1] = outs[0] + heads * D;
        attend_group<T, D, 2>(queries, group, scale, cache, lengths, scores.data(), stride, outs);
      } else {
        attend_group<T, D, 1>(queries, group, scale, cache, lengths, scores.data(), stride, outs);
      }
    }
  });
}

at::Tensor paged_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& key_cache,
                           at::Tensor& value_cache, const at::Tensor& block_tables, const at::Tensor& row_tables,
                           const at::Tensor& positions, double scale) {
  const int64_t rows = q.size(0), heads = q.size(1), dim = q.size(2);
  TORCH_CHECK(key_cache.dim() == 4 && value_cache.dim() == 4 && key_cache.is_contiguous() &&
                  value_cache.is_contiguous(),
              "paged_attention: caches must be contiguous [blocks, kv_heads, head_dim, 32] and "
              "[blocks, kv_heads, 32, head_dim]");
  const int64_t blocks = key_cache.size(0), kv_heads = key_cache.size(1);
  TORCH_CHECK(key_cache.size(2) == dim && key_cache.size(3) == kBlock && value_cache.size(0) == blocks &&
                  value_cache.size(1) == kv_heads && value_cache.size(2) == kBlock && value_cache.size(3) == dim &&
                  heads % kv_heads == 0,
              "paged_attention: cache shapes do not match the queries (blocks of 32 positions)");
  for (const at::Tensor* t : {&q, &k, &v})
    TORCH_CHECK(t->dim() == 3 && t->size(0) == rows && t->size(2) == dim && t->stride(2) == 1 &&
                    t->stride(1) == dim && t->scalar_type() == key_cache.scalar_type(),
                "paged_attention: q, k and v must be [rows, heads, head_dim] in the cache's dtype, "
                "rows possibly strided");
  TORCH_CHECK(k.size(1) == kv_heads && v.size(1) == kv_heads, "paged_attention: k and v need kv_heads heads");
  TORCH_CHECK(block_tables.dim() == 2, "paged_attention: block_tables must be [tables, width]");
  const at::Tensor table = block_tables.to(at::kLong).contiguous();
  const at::Tensor row_table = row_tables.to(at::kLong).contiguous();
  const at::Tensor position = positions.to(at::kLong).contiguous();
  TORCH_CHECK(row_table.numel() == rows && position.numel() == rows,
              "paged_attention: one table row and one position per token");
  const int64_t tables = table.size(0), width = table.size(1);
  const int64_t* table_data = table.data_ptr<int64_t>();
  const int64_t* row_data = row_table.data_ptr<int64_t>();
  const int64_t* position_data = position.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(row_data[r] >= 0 && row_data[r] < tables && position_data[r] >= 0 &&
                    position_data[r] < width * kBlock,
                "paged_attention: a token's table row or position is out of its block table");
    for (int64_t j = 0; j <= position_data[r] / kBlock; ++j) {
      const int64_t block = table_data[row_data[r] * width + j];
      TORCH_CHECK(block >= 0 && block < blocks, "paged_attention: block ", block, " is not in the cache");
    }
  }
  at::Tensor out = at::empty({rows, heads, dim}, q.options());
  const float s = static_cast<float>(scale);
  const bool bf16 = q.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || q.scalar_type() == at::kFloat, "paged_attention: float32 or bfloat16 only");
  switch (dim) {
#define TW_HEAD_DIM(D)                                                                                       \
  case D:                                                                                                    \
    if (bf16)                                                                                                \
      attend_rows<at::BFloat16, D>(q, k, v, key_cache, value_cache, table_data, width, row_data, position_data, \
                                   s, out);                                                                  \
    else                                                                                                     \
      attend_rows<float, D>(q, k, v, key_cache, value_cache, table_data, width, row_data, position_data, s, out); \
    break;
    TW_HEAD_DIM(32)
    TW_HEAD_DIM(64)
    TW_HEAD_DIM(128)
#undef TW_HEAD_DIM
    default:
      TORCH_CHECK(false, "paged_attention: head_dim must be 32, 64 or 128, not ", dim);
  }
  return out;
}

}  // namespace
}  // namespace tokenwire

TORCH_LIBRARY_IMPL(tokenwire, CPU, m) { m.impl("paged_attention", &tokenwire::paged_attention); }
