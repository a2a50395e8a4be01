// One-pass Adam for XLA:CPU, called from emosae_jax/fused_adam.py.
//
// Reads a weight, its gradient and Adam's two moments once, and writes the
// weight and the moments once (7 passes over memory). XLA:CPU, without
// multi-output fusion, runs optax's Adam as three loops per weight (10
// passes), which made Adam about half of the reference preset's batch-16 step.
//
// The arithmetic is optax's, in its order, in IEEE float32: built with
// -ffp-contract=off (no fused multiply-adds) and without fast-math, so it
// equals a numpy float32 evaluation of the same formula bit for bit.
//
// Arrays may carry leading member axes (a vmapped sweep): `coef` then holds
// one row of coefficients per member, in the same order.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// One member's per-step coefficients, as fused_adam.py packs them.
struct Coef {
  float keep;  // 0: the member is frozen (failed or stopped): gradient 0
  float clip;  // 1: the gradient is rescaled to max_norm (optax's clip)
  float g_norm;  // the gradient's global norm
  float bc1;  // 1 - b1^t, Adam's bias corrections
  float bc2;  // 1 - b2^t
  float lr;
};
constexpr int64_t kCoefs = sizeof(Coef) / sizeof(float);

struct Consts {
  float b1, c1, b2, c2, eps, max_norm;  // c1 = 1 - b1, c2 = 1 - b2
};

enum class Grad { kZero, kPlain, kClipped };

// A template on how the gradient enters, so each loop has no branch inside
// and vectorises (the divisions and the square root bound it otherwise).
template <Grad kGrad>
void AdamLoop(const float* __restrict g, float* __restrict m,
              float* __restrict v, float* __restrict p, Coef k, Consts c,
              int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = 0.0f;
    if constexpr (kGrad == Grad::kPlain) gi = g[i];
    if constexpr (kGrad == Grad::kClipped) gi = (g[i] / k.g_norm) * c.max_norm;
    float mi = c.c1 * gi + c.b1 * m[i];
    float vi = c.c2 * (gi * gi) + c.b2 * v[i];
    m[i] = mi;
    v[i] = vi;
    float update = (mi / k.bc1) / (std::sqrt(vi / k.bc2) + c.eps);
    p[i] = p[i] - k.lr * update;
  }
}

void AdamRange(const float* g, float* m, float* v, float* p, Coef k,
               Consts c, int64_t n) {
  if (k.keep == 0.0f) {
    AdamLoop<Grad::kZero>(g, m, v, p, k, c, n);
  } else if (k.clip != 0.0f) {
    AdamLoop<Grad::kClipped>(g, m, v, p, k, c, n);
  } else {
    AdamLoop<Grad::kPlain>(g, m, v, p, k, c, n);
  }
}

// Runs task(0..n-1) on the calling thread and on helpers from XLA's
// intra-op pool. Tasks are claimed from a shared counter; the caller works
// too and only waits for tasks already claimed, so a busy pool cannot
// deadlock it. Which thread runs a task never changes its result.
template <typename Task>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, Task task) {
  struct Progress {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto progress = std::make_shared<Progress>();
  auto work = [progress, n, task]() {
    for (int64_t i; (i = progress->next.fetch_add(1)) < n;) {
      task(i);
      progress->done.fetch_add(1);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  while (progress->done.load() < n) std::this_thread::yield();
}

// Sums of squares of a [rows, cols] block, accumulated in double, added
// into `into` (per row when `per_row`, else per column).
void SumSquares(const float* p, int64_t rows, int64_t cols, bool per_row,
                double* into) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = p + r * cols;
    if (per_row) {
      // Eight running sums, one per lane, so the loop vectorises while the
      // order of additions stays fixed.
      double lanes[8] = {0.0};
      int64_t c = 0;
      for (; c + 8 <= cols; c += 8) {
        for (int j = 0; j < 8; ++j) lanes[j] += double(row[c + j]) * row[c + j];
      }
      for (; c < cols; ++c) lanes[0] += double(row[c]) * row[c];
      double sum = 0.0;
      for (double lane : lanes) sum += lane;
      into[r] += sum;
    } else {
      for (int64_t c = 0; c < cols; ++c) into[c] += double(row[c]) * row[c];
    }
  }
}

// unit_axis: -1 leaves the weight as Adam makes it; 1 rescales each row (the
// last axis) to unit norm, 0 each column (over the other axes), per member:
// the decoder renormalisations of saes.decoder_unit_axis.
ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                    ffi::Buffer<ffi::F32> m_in, ffi::Buffer<ffi::F32> v_in,
                    ffi::Buffer<ffi::F32> p_in, ffi::Buffer<ffi::F32> coef,
                    float b1, float c1, float b2, float c2, float eps,
                    float max_norm, int32_t unit_axis,
                    ffi::ResultBuffer<ffi::F32> p_out,
                    ffi::ResultBuffer<ffi::F32> m_out,
                    ffi::ResultBuffer<ffi::F32> v_out) {
  const int64_t n = p_in.element_count();
  const int64_t members = coef.element_count() / kCoefs;
  const auto dims = p_in.dimensions();
  const int64_t cols = dims.size() == 0 ? 1 : dims.back();
  if (members < 1 || n % members != 0 || g.element_count() != n ||
      cols < 1 || (n / members) % cols != 0) {
    return ffi::Error::InvalidArgument("fused_adam: shapes do not match");
  }
  if (unit_axis != -1 && (dims.size() < 2 || unit_axis > 1)) {
    return ffi::Error::InvalidArgument("fused_adam: unit_axis needs a matrix");
  }
  float* p = p_out->typed_data();
  float* m = m_out->typed_data();
  float* v = v_out->typed_data();
  // Outputs alias their inputs when XLA can; copy when it could not.
  if (p != p_in.typed_data()) std::copy_n(p_in.typed_data(), n, p);
  if (m != m_in.typed_data()) std::copy_n(m_in.typed_data(), n, m);
  if (v != v_in.typed_data()) std::copy_n(v_in.typed_data(), n, v);
  const float* grad = g.typed_data();
  const Coef* coefs = reinterpret_cast<const Coef*>(coef.typed_data());
  const Consts consts{b1, c1, b2, c2, eps, max_norm};

  // Tasks are blocks of whole rows (about 128 KiB of each array), never
  // across members, so a row is renormalised while still in cache.
  const int64_t rows = n / members / cols;
  const int64_t block = std::max<int64_t>(1, (int64_t{1} << 15) / cols);
  const int64_t blocks = (rows + block - 1) / block;
  std::vector<double> col_sums(
      unit_axis == 0 ? size_t(members * blocks * cols) : 0, 0.0);
  auto first_row = [=](int64_t task) {
    return (task / blocks) * rows + (task % blocks) * block;
  };
  auto block_rows = [=](int64_t task) {
    return std::min(block, rows - (task % blocks) * block);
  };
  ParallelFor(pool, members * blocks, [&](int64_t task) {
    const int64_t at = first_row(task) * cols, count = block_rows(task);
    AdamRange(grad + at, m + at, v + at, p + at, coefs[task / blocks], consts,
              count * cols);
    if (unit_axis == 1) {
      std::vector<double> sums(count, 0.0);
      SumSquares(p + at, count, cols, true, sums.data());
      for (int64_t r = 0; r < count; ++r) {
        const float norm = float(std::sqrt(sums[r]));
        for (int64_t c = 0; c < cols; ++c) p[at + r * cols + c] /= norm;
      }
    } else if (unit_axis == 0) {
      SumSquares(p + at, count, cols, false, &col_sums[task * cols]);
    }
  });
  if (unit_axis != 0) return ffi::Error::Success();
  // Column norms: the blocks' sums added in block order (the same bits
  // whichever threads ran them), then a second pass divides.
  std::vector<float> norms(size_t(members * cols));
  for (int64_t member = 0; member < members; ++member) {
    for (int64_t c = 0; c < cols; ++c) {
      double sum = 0.0;
      for (int64_t b = 0; b < blocks; ++b) {
        sum += col_sums[(member * blocks + b) * cols + c];
      }
      norms[member * cols + c] = float(std::sqrt(sum));
    }
  }
  ParallelFor(pool, members * blocks, [&](int64_t task) {
    const float* __restrict norm = &norms[(task / blocks) * cols];
    float* __restrict row = p + first_row(task) * cols;
    for (int64_t r = 0; r < block_rows(task); ++r, row += cols) {
      for (int64_t c = 0; c < cols; ++c) row[c] /= norm[c];
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EmosaeFusedAdam, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("b1")
                                  .Attr<float>("c1")
                                  .Attr<float>("b2")
                                  .Attr<float>("c2")
                                  .Attr<float>("eps")
                                  .Attr<float>("max_norm")
                                  .Attr<int32_t>("unit_axis")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
