// The top-k / top-p threshold of the sampler on CPU, as an XLA FFI custom call.
//
// Per row r: the largest uint32 t such that the weights of the keys >= t sum to at least
// target[r] (0 when even all keys fall short); keys are the logits' order-preserving bit
// patterns (sampling._sortable), weights the probabilities (top-p) or, with `counts`, 1 per key
// (top-k). The answer is one of the row's keys, so `keys >= t` is an exact top set.
// sampling._largest_threshold finds it on any backend by bisection: 32 passes over the row.
// Here, a radix select: three passes, each a histogram of the weights over one digit of the
// keys (11, 11 and 10 bits, high to low) among the keys that share the digits chosen so far,
// scanned from the top. Rows are shared out over XLA's intra-op thread pool.
//
// Shapes: keys [R, V] uint32, weights [R, V] float32 (not read with counts), target [R]
// float32; out [R] uint32. Attribute counts: 1 for top-k, 0 for top-p.

#include <cstdint>
#include <vector>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Digit {
  int shift;
  int bits;
};
constexpr Digit kDigits[] = {{21, 11}, {10, 11}, {0, 10}};

uint32_t Threshold(const uint32_t* keys, const float* weights, float target, int64_t v,
                   bool counts, std::vector<double>& hist) {
  uint32_t prefix = 0, prefix_mask = 0;
  double above = 0.0;  // weight of the keys above the bin chosen so far
  bool first = true;
  for (const Digit& dg : kDigits) {
    const int64_t bins = int64_t{1} << dg.bits;
    const uint32_t mask = static_cast<uint32_t>(bins - 1);
    hist.assign(bins, 0.0);
    for (int64_t j = 0; j < v; ++j) {
      const uint32_t k = keys[j];
      if ((k & prefix_mask) == prefix) hist[(k >> dg.shift) & mask] += counts ? 1.0 : weights[j];
    }
    int64_t b = bins - 1;
    for (; b >= 0; --b) {
      if (above + hist[b] >= target) break;
      above += hist[b];
    }
    if (b < 0) {
      // the whole row falls short of the target: keep every key (as the bisection does);
      // below the first digit only rounding can get here: keep the whole bin
      if (first) return 0;
      b = 0;
    }
    prefix |= static_cast<uint32_t>(b) << dg.shift;
    prefix_mask |= mask << dg.shift;
    first = false;
  }
  return prefix;
}

ffi::Error LargestThreshold(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> keys,
                            ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> target,
                            ffi::ResultBuffer<ffi::U32> out, int64_t counts) {
  const auto kd = keys.dimensions();
  const auto wd = weights.dimensions();
  if (kd.size() != 2 || target.dimensions().size() != 1 || target.dimensions()[0] != kd[0] ||
      (!counts && (wd.size() != 2 || wd[0] != kd[0] || wd[1] != kd[1]))) {
    return ffi::Error::InvalidArgument(
        "musc_largest_threshold: expected keys [R, V], weights [R, V] (or counts), target [R]");
  }
  const int64_t v = kd[1];
  const uint32_t* ks = keys.typed_data();
  const float* ws = weights.typed_data();
  const float* ts = target.typed_data();
  uint32_t* os = out->typed_data();
  const bool by_count = counts != 0;
  musc::ParallelFor(pool, kd[0], [=] {
    return [=, hist = std::vector<double>()](int64_t r) mutable {
      os[r] = Threshold(ks + r * v, by_count ? nullptr : ws + r * v, ts[r], v, by_count, hist);
    };
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MuscLargestThreshold, LargestThreshold,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Attr<int64_t>("counts"));
