// The sampler's draw on CPU, as an XLA FFI custom call: per row, the index of the largest
// logits[i] + g[i] with g[i] = -log(-log(u[i])) the Gumbel noise jax.random.gumbel(key, (V,))
// draws for the row's key (threefry2x32, partitionable counters, "low" mode: u = the 23-bit
// uniform in (0, 1), tiny for 0). The bits and uniforms are jax's, bit for bit; the logarithms
// are a vectorised float32 log (Cephes' polynomial, within about 1 ulp of XLA's), so a draw can
// differ from XLA's only where two noisy logits tie within float32 rounding. XLA:CPU runs
// threefry as a scalar loop (4 ms a step for 64 rows of 8192); this is the same work in
// vector registers, fused with the argmax. Rows are shared out over XLA's thread pool.
//
// Shapes: logits [R, V] float32 (filtered: -inf never wins), keys [R, 2] uint32 (the row's
// key data, already folded with its step); out [R] int32 (first index of the maximum).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
typedef uint32_t U __attribute__((vector_size(kLanes * 4)));
typedef int32_t I __attribute__((vector_size(kLanes * 4)));
typedef float F __attribute__((vector_size(kLanes * 4)));

inline U Rotl(U x, int r) { return (x << r) | (x >> (32 - r)); }

// threefry2x32 (20 rounds) of counters (0, lo) under key (k0, k1); returns x0 ^ x1, which is
// jax's 32-bit random_bits for flat index lo.
inline U Threefry(uint32_t k0, uint32_t k1, U lo) {
  static constexpr int kRot[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
  const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ 0x1BD11BDAu};
  U x0 = U{} + k0;
  U x1 = lo + k1;
  for (int g = 0; g < 5; ++g) {
    for (int r = 0; r < 4; ++r) {
      x0 += x1;
      x1 = Rotl(x1, kRot[g % 2][r]);
      x1 ^= x0;
    }
    x0 += ks[(g + 1) % 3];
    x1 += ks[(g + 2) % 3] + static_cast<uint32_t>(g + 1);
  }
  return x0 ^ x1;
}

// Natural log of x > 0 (normal floats), Cephes logf: frexp, then a degree-9 polynomial.
inline F Log(F x) {
  U bits;
  std::memcpy(&bits, &x, sizeof(F));
  I e = (I)((bits >> 23) & 0xffu) - 126;
  bits = (bits & 0x807fffffu) | 0x3f000000u;        // mantissa in [0.5, 1)
  F m;
  std::memcpy(&m, &bits, sizeof(F));
  const I small = m < 0.70710678118654752f;          // then 2m - 1, exponent - 1
  e += small;                                         // true lanes are -1
  m = m + (small ? m : F{} ) - 1.0f;
  const F z = m * m;
  F y = 7.0376836292E-2f * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  const F ef = __builtin_convertvector(e, F);
  y += -2.12194440E-4f * ef;
  y += -0.5f * z;
  return m + y + 0.693359375f * ef;
}

int32_t DrawRow(const float* logits, int64_t v, uint32_t k0, uint32_t k1) {
  constexpr float kTiny = std::numeric_limits<float>::min();
  const F neg_inf = F{} - std::numeric_limits<float>::infinity();
  F best = neg_inf;
  I best_at = I{} + std::numeric_limits<int32_t>::max();
  U lane;
  for (int l = 0; l < kLanes; ++l) lane[l] = l;
  for (int64_t i0 = 0; i0 < v; i0 += kLanes) {
    const U index = lane + static_cast<uint32_t>(i0);
    const U bits = Threefry(k0, k1, index);
    F u;
    const U fbits = (bits >> 9) | 0x3f800000u;
    std::memcpy(&u, &fbits, sizeof(F));
    u -= 1.0f;
    u = u > kTiny ? u : F{} + kTiny;                 // max(tiny, u + tiny) for u in [0, 1)
    const F noise = -Log(-Log(u));
    F x;
    if (i0 + kLanes <= v) {
      std::memcpy(&x, logits + i0, sizeof(F));
    } else {                                          // the row's tail: past V never wins
      x = neg_inf;
      std::memcpy(&x, logits + i0, (v - i0) * sizeof(float));
    }
    const F score = x + noise;
    const I better = score > best;                    // strict: each lane keeps its first max
    best = better ? score : best;
    best_at = better ? (I)index : best_at;
  }
  float top = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < kLanes; ++l) top = best[l] > top ? best[l] : top;
  int32_t at = std::numeric_limits<int32_t>::max();
  for (int l = 0; l < kLanes; ++l)
    if (best[l] == top && best_at[l] < at) at = best_at[l];
  return at == std::numeric_limits<int32_t>::max() ? 0 : at;
}

ffi::Error GumbelArgmax(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits,
                        ffi::Buffer<ffi::U32> keys, ffi::ResultBuffer<ffi::S32> out) {
  const auto ld = logits.dimensions();
  const auto kd = keys.dimensions();
  if (ld.size() != 2 || kd.size() != 2 || kd[0] != ld[0] || kd[1] != 2 ||
      ld[1] >= (int64_t{1} << 31)) {
    return ffi::Error::InvalidArgument(
        "musc_gumbel_argmax: expected logits [R, V] (V < 2^31), keys [R, 2]");
  }
  const int64_t v = ld[1];
  const float* ls = logits.typed_data();
  const uint32_t* ks = keys.typed_data();
  int32_t* os = out->typed_data();
  musc::ParallelFor(pool, ld[0], [=] {
    return [=](int64_t r) { os[r] = DrawRow(ls + r * v, v, ks[2 * r], ks[2 * r + 1]); };
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MuscGumbelArgmax, GumbelArgmax,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
