// out [M, N] = x [M, K] @ W [K, N] on CPU for the few rows of a decode step, as an XLA FFI
// custom call.
//
// A decode step multiplies a handful of rows (its slots) by every weight matrix, so its cost is
// reading the weights once. XLA:CPU's library dots pack the weight matrix on every call and
// reach 8 GB/s at 16 rows (bench/decode_floor.py); here the weights are packed once, ahead of
// the decode loop (cpu_kernels.pack), into panels of kPanel columns:
//   wp [P, K, kPanel], wp[p, k, j] = W[k, p * kPanel + j] (zero where p * kPanel + j >= N),
// so each panel is one contiguous stream. A panel is multiplied by blocks of up to kRows rows
// held in registers (kRows x kPanel accumulators), so it is read from memory once and from
// cache for the other row blocks. Panels are shared out over XLA's intra-op thread pool.
//
// Shapes (float32): x [M, K], wp [P, K, kPanel] with P * kPanel >= N; out [M, N]; attribute n.

#include <cstdint>
#include <cstring>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 16;               // floats per vector (one AVX-512 register)
constexpr int64_t kVectors = 4;              // vectors per panel row
constexpr int64_t kPanel = kLanes * kVectors;
constexpr int64_t kRows = 6;                 // rows per register block: 24 accumulators

// GCC/Clang vector type: AVX-512 where the CPU has it, else split into narrower registers.
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

// out[0:R, 0:cols] = x[0:R, :] @ panel, x rows `ldx` apart, out rows `ldo` apart.
template <int R>
void Block(const float* x, int64_t ldx, const float* panel, int64_t k_size, float* out,
           int64_t ldo, int64_t cols) {
  Vec acc[R][kVectors];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kVectors; ++j) acc[r][j] = Vec{};
  for (int64_t k = 0; k < k_size; ++k) {
    const float* w = panel + k * kPanel;
    Vec b[kVectors];
    for (int j = 0; j < kVectors; ++j) std::memcpy(&b[j], w + j * kLanes, sizeof(Vec));
    for (int r = 0; r < R; ++r) {
      const float a = x[r * ldx + k];
      for (int j = 0; j < kVectors; ++j) acc[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < R; ++r) {
    if (cols == kPanel) {
      for (int j = 0; j < kVectors; ++j)
        std::memcpy(out + r * ldo + j * kLanes, &acc[r][j], sizeof(Vec));
    } else {  // the last panel of an N that is not a multiple of kPanel
      float row[kPanel];
      for (int j = 0; j < kVectors; ++j) std::memcpy(row + j * kLanes, &acc[r][j], sizeof(Vec));
      std::memcpy(out + r * ldo, row, cols * sizeof(float));
    }
  }
}

// The last rows (fewer than kRows) of a panel: R is the count.
template <int R>
void Tail(int64_t rows, const float* x, int64_t ldx, const float* panel, int64_t k_size,
          float* out, int64_t ldo, int64_t cols) {
  if constexpr (R > 0) {
    if (rows == R) return Block<R>(x, ldx, panel, k_size, out, ldo, cols);
    Tail<R - 1>(rows, x, ldx, panel, k_size, out, ldo, cols);
  }
}

ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> wp,
                        ffi::ResultBuffer<ffi::F32> out, int64_t n) {
  const auto xd = x.dimensions();
  const auto wd = wp.dimensions();
  const auto od = out->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || wd[1] != xd[1] || wd[2] != kPanel || od.size() != 2 ||
      od[0] != xd[0] || od[1] != n || n > wd[0] * kPanel) {
    return ffi::Error::InvalidArgument(
        "musc_packed_matmul: expected x [M, K], wp [P, K, 64] with P * 64 >= n, out [M, n]");
  }
  const int64_t m = xd[0], k = xd[1];
  const float* xs = x.typed_data();
  const float* ws = wp.typed_data();
  float* os = out->typed_data();
  musc::ParallelFor(pool, (n + kPanel - 1) / kPanel, [=] {
    return [=](int64_t p) {
      const float* panel = ws + p * k * kPanel;
      const int64_t col = p * kPanel;
      const int64_t cols = n - col < kPanel ? n - col : kPanel;
      int64_t r = 0;
      for (; r + kRows <= m; r += kRows)
        Block<kRows>(xs + r * k, k, panel, k, os + r * n + col, n, cols);
      Tail<kRows - 1>(m - r, xs + r * k, k, panel, k, os + r * n + col, n, cols);
    };
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MuscPackedMatmul, PackedMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("n"));
