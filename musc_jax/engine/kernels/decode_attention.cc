// Decode attention over the slot cache on CPU, as an XLA FFI custom call.
//
// One query token per slot. Each (slot, kv head) streams its own keys and values once, from
// the window's start up to its own position, with an online softmax in float32: the cost of a
// step follows each row's length, where the XLA version reads every slot up to the longest
// live row. (slot, kv head) items are shared out over XLA's intra-op thread pool
// (parallel_for.h).
//
// Shapes (float32): q [R, H, D] (already multiplied by the softmax scale), k/v [R, KV, L, D],
// pos [R] int32 (the query's cache position; its own key is already written there; a slot at
// pos >= L is idle and gets zeros), out [R, H, D]. Attribute window: 0 for none, else a key
// at position p is seen only when pos - p < window.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Positions per block: the block's scores for all query heads of a group stay in L1.
constexpr int64_t kBlock = 128;

struct Problem {
  const float* q;
  const float* k;
  const float* v;
  const int32_t* pos;
  float* out;
  int64_t kv, length, dim, group, window;
};

// One (slot, kv head): q [group, dim] against k/v [length, dim]; writes out [group, dim].
// scratch holds group * (kBlock + dim + 2) floats.
void AttendOne(const Problem& p, int64_t slot, int64_t head, float* scratch) {
  const int64_t g = p.group, d = p.dim;
  const float* q = p.q + (slot * p.kv + head) * g * d;
  float* out = p.out + (slot * p.kv + head) * g * d;
  const int64_t position = p.pos[slot];
  if (position < 0 || position >= p.length) {
    std::fill(out, out + g * d, 0.0f);
    return;
  }
  const int64_t hi = position + 1;
  const int64_t lo = p.window > 0 ? std::max<int64_t>(0, position - p.window + 1) : 0;
  const float* k = p.k + (slot * p.kv + head) * p.length * d;
  const float* v = p.v + (slot * p.kv + head) * p.length * d;

  float* scores = scratch;                 // [g, kBlock]
  float* acc = scores + g * kBlock;        // [g, d]
  float* run_max = acc + g * d;            // [g]
  float* total = run_max + g;              // [g]
  std::fill(acc, acc + g * d, 0.0f);
  std::fill(run_max, run_max + g, -std::numeric_limits<float>::infinity());
  std::fill(total, total + g, 0.0f);

  for (int64_t b0 = lo; b0 < hi; b0 += kBlock) {
    const int64_t n = std::min(kBlock, hi - b0);
    const float* kb = k + b0 * d;
    for (int64_t i = 0; i < n; ++i) {
      const float* key = kb + i * d;
      for (int64_t j = 0; j < g; ++j) {
        const float* qj = q + j * d;
        float s = 0.0f;
        for (int64_t e = 0; e < d; ++e) s += qj[e] * key[e];
        scores[j * kBlock + i] = s;
      }
    }
    for (int64_t j = 0; j < g; ++j) {
      float* s = scores + j * kBlock;
      float block_max = s[0];
      for (int64_t i = 1; i < n; ++i) block_max = std::max(block_max, s[i]);
      const float new_max = std::max(run_max[j], block_max);
      const float rescale = std::exp(run_max[j] - new_max);   // 0 on the first block
      float sum = 0.0f;
      for (int64_t i = 0; i < n; ++i) {
        s[i] = std::exp(s[i] - new_max);
        sum += s[i];
      }
      total[j] = total[j] * rescale + sum;
      run_max[j] = new_max;
      float* a = acc + j * d;
      for (int64_t e = 0; e < d; ++e) a[e] *= rescale;
    }
    const float* vb = v + b0 * d;
    for (int64_t i = 0; i < n; ++i) {
      const float* value = vb + i * d;
      for (int64_t j = 0; j < g; ++j) {
        const float w = scores[j * kBlock + i];
        float* a = acc + j * d;
        for (int64_t e = 0; e < d; ++e) a[e] += w * value[e];
      }
    }
  }
  for (int64_t j = 0; j < g; ++j) {
    const float inv = 1.0f / total[j];
    for (int64_t e = 0; e < d; ++e) out[j * d + e] = acc[j * d + e] * inv;
  }
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                           ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                           ffi::Buffer<ffi::S32> pos, ffi::ResultBuffer<ffi::F32> out,
                           int64_t window) {
  const auto qd = q.dimensions();
  const auto kd = k.dimensions();
  const auto vd = v.dimensions();
  if (qd.size() != 3 || kd.size() != 4 || !std::equal(kd.begin(), kd.end(), vd.begin(), vd.end()) ||
      pos.dimensions().size() != 1 || pos.dimensions()[0] != qd[0] || kd[0] != qd[0] ||
      kd[3] != qd[2] || kd[1] <= 0 || qd[1] % kd[1] != 0) {
    return ffi::Error::InvalidArgument(
        "musc_decode_attention: expected q [R, H, D], k/v [R, KV, L, D] with H a multiple of "
        "KV, pos [R]");
  }
  const Problem problem{q.typed_data(), k.typed_data(), v.typed_data(), pos.typed_data(),
                        out->typed_data(), kd[1], kd[2], kd[3], qd[1] / kd[1], window};
  musc::ParallelFor(pool, qd[0] * kd[1], [problem] {
    return [problem, scratch = std::vector<float>(problem.group * (kBlock + problem.dim + 2))](
               int64_t i) mutable {
      AttendOne(problem, i / problem.kv, i % problem.kv, scratch.data());
    };
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MuscDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("window"));
