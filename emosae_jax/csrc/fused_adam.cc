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
//
// EmosaeFusedAdamOuter takes a weight's gradient as two factors instead,
// g = a^T b (a [batch, rows], b [batch, cols]: at small batch, a weight
// gradient is a sum of `batch` outer products), and computes each block of
// rows of g just before its Adam update, in cache: the gradient matmul's
// write of g and the update's read of it (2 of 9 passes over memory) go.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>
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

// Rows [r, r + R) of a^T b into out ([R, cols], row stride cols): each entry
// a sum over the batch, in batch order, of fused multiply-adds. The R x kC
// block of sums stays in registers while b's rows stream past, so each load
// of b feeds R multiply-adds. Rows whose a is all zero (W_dec's rows for
// latents that fired on no row of the batch: most of them, in a ReLU SAE)
// are zero without the arithmetic: the same value for a finite b.
template <int R>
void OuterRows(const float* __restrict a, const float* __restrict b,
               int64_t batch, int64_t rows, int64_t cols, int64_t r,
               float* __restrict out) {
  bool zero = true;
  for (int64_t k = 0; k < batch && zero; ++k) {
    for (int i = 0; i < R; ++i) zero &= a[k * rows + r + i] == 0.0f;
  }
  if (zero) {
    for (int i = 0; i < R; ++i) std::fill_n(out + i * cols, cols, 0.0f);
    return;
  }
  constexpr int64_t kC = 32;
  int64_t c = 0;
  for (; c + kC <= cols; c += kC) {
    float acc[R][kC] = {};
    for (int64_t k = 0; k < batch; ++k) {
      const float* bk = b + k * cols + c;
      for (int i = 0; i < R; ++i) {
        const float ak = a[k * rows + r + i];
        for (int64_t j = 0; j < kC; ++j) acc[i][j] = std::fma(ak, bk[j], acc[i][j]);
      }
    }
    for (int i = 0; i < R; ++i) std::copy_n(acc[i], kC, out + i * cols + c);
  }
  for (; c < cols; ++c) {
    for (int i = 0; i < R; ++i) {
      float sum = 0.0f;
      for (int64_t k = 0; k < batch; ++k) {
        sum = std::fma(a[k * rows + r + i], b[k * cols + c], sum);
      }
      out[i * cols + c] = sum;
    }
  }
}

// Rows [first, first + count) of a^T b into out [count, cols].
void OuterBlock(const float* a, const float* b, int64_t batch, int64_t rows,
                int64_t cols, int64_t first, int64_t count, float* out) {
  int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    OuterRows<4>(a, b, batch, rows, cols, first + i, out + i * cols);
  }
  for (; i < count; ++i) {
    OuterRows<1>(a, b, batch, rows, cols, first + i, out + i * cols);
  }
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

// A weight's layout: [members, rows, cols] (any leading axes are members),
// cut into tasks of `block` whole rows (about 128 KiB of each array, a
// multiple of 4 rows where that fits, for OuterBlock), never across members.
struct Layout {
  int64_t members, rows, cols, block, blocks;
  int64_t member(int64_t task) const { return task / blocks; }
  int64_t first_row(int64_t task) const { return (task % blocks) * block; }
  int64_t count(int64_t task) const {
    return std::min(block, rows - first_row(task));
  }
  // offset of the task's first element in a weight-shaped array
  int64_t at(int64_t task) const {
    return (member(task) * rows + first_row(task)) * cols;
  }
};

// Checks the weight-shaped buffers and coef, fills `layout` and copies the
// inputs to the outputs where XLA could not alias them.
ffi::Error Prepare(ffi::Buffer<ffi::F32>& m_in, ffi::Buffer<ffi::F32>& v_in,
                   ffi::Buffer<ffi::F32>& p_in, ffi::Buffer<ffi::F32>& coef,
                   int32_t unit_axis, ffi::ResultBuffer<ffi::F32>& p_out,
                   ffi::ResultBuffer<ffi::F32>& m_out,
                   ffi::ResultBuffer<ffi::F32>& v_out, Layout* layout) {
  const int64_t n = p_in.element_count();
  const int64_t members = coef.element_count() / kCoefs;
  const auto dims = p_in.dimensions();
  const int64_t cols = dims.size() == 0 ? 1 : dims.back();
  if (members < 1 || n % members != 0 || cols < 1 ||
      (n / members) % cols != 0 || m_in.element_count() != n ||
      v_in.element_count() != n) {
    return ffi::Error::InvalidArgument("fused_adam: shapes do not match");
  }
  if (unit_axis != -1 && (dims.size() < 2 || unit_axis > 1)) {
    return ffi::Error::InvalidArgument("fused_adam: unit_axis needs a matrix");
  }
  // Outputs alias their inputs when XLA can; copy when it could not.
  if (p_out->typed_data() != p_in.typed_data()) {
    std::copy_n(p_in.typed_data(), n, p_out->typed_data());
  }
  if (m_out->typed_data() != m_in.typed_data()) {
    std::copy_n(m_in.typed_data(), n, m_out->typed_data());
  }
  if (v_out->typed_data() != v_in.typed_data()) {
    std::copy_n(v_in.typed_data(), n, v_out->typed_data());
  }
  const int64_t rows = n / members / cols;
  int64_t block = std::max<int64_t>(1, (int64_t{1} << 15) / cols);
  if (block >= 4) block -= block % 4;
  *layout = Layout{members, rows, cols, block, (rows + block - 1) / block};
  return ffi::Error::Success();
}

// Adam on every task's rows, the gradient of a task's rows given by
// grad_rows(task) (not asked for a frozen member, whose gradient is 0),
// then the renormalisation. unit_axis: -1 leaves the weight as Adam makes
// it; 1 rescales each row (the last axis) to unit norm, 0 each column (over
// the other axes), per member: the decoder renormalisations of
// saes.decoder_unit_axis.
template <typename GradRows>
void Update(ffi::ThreadPool& pool, const Layout& at,
            ffi::ResultBuffer<ffi::F32>& p_out,
            ffi::ResultBuffer<ffi::F32>& m_out,
            ffi::ResultBuffer<ffi::F32>& v_out, ffi::Buffer<ffi::F32>& coef,
            Consts consts, int32_t unit_axis, GradRows grad_rows) {
  float* p = p_out->typed_data();
  float* m = m_out->typed_data();
  float* v = v_out->typed_data();
  const Coef* coefs = reinterpret_cast<const Coef*>(coef.typed_data());
  const int64_t cols = at.cols, tasks = at.members * at.blocks;
  std::vector<double> col_sums(unit_axis == 0 ? size_t(tasks * cols) : 0, 0.0);
  ParallelFor(pool, tasks, [&](int64_t task) {
    const int64_t first = at.at(task), count = at.count(task);
    const Coef k = coefs[at.member(task)];
    const float* g = k.keep == 0.0f ? nullptr : grad_rows(task);
    AdamRange(g, m + first, v + first, p + first, k, consts, count * cols);
    if (unit_axis == 1) {  // the rows while still in cache
      std::vector<double> sums(count, 0.0);
      SumSquares(p + first, count, cols, true, sums.data());
      for (int64_t r = 0; r < count; ++r) {
        const float norm = float(std::sqrt(sums[r]));
        for (int64_t c = 0; c < cols; ++c) p[first + r * cols + c] /= norm;
      }
    } else if (unit_axis == 0) {
      SumSquares(p + first, count, cols, false, &col_sums[task * cols]);
    }
  });
  if (unit_axis != 0) return;
  // Column norms: the blocks' sums added in block order (the same bits
  // whichever threads ran them), then a second pass divides.
  std::vector<float> norms(size_t(at.members * cols));
  for (int64_t member = 0; member < at.members; ++member) {
    for (int64_t c = 0; c < cols; ++c) {
      double sum = 0.0;
      for (int64_t b = 0; b < at.blocks; ++b) {
        sum += col_sums[(member * at.blocks + b) * cols + c];
      }
      norms[member * cols + c] = float(std::sqrt(sum));
    }
  }
  ParallelFor(pool, tasks, [&](int64_t task) {
    const float* __restrict norm = &norms[at.member(task) * cols];
    float* __restrict row = p + at.at(task);
    for (int64_t r = 0; r < at.count(task); ++r, row += cols) {
      for (int64_t c = 0; c < cols; ++c) row[c] /= norm[c];
    }
  });
}

ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                    ffi::Buffer<ffi::F32> m_in, ffi::Buffer<ffi::F32> v_in,
                    ffi::Buffer<ffi::F32> p_in, ffi::Buffer<ffi::F32> coef,
                    float b1, float c1, float b2, float c2, float eps,
                    float max_norm, int32_t unit_axis,
                    ffi::ResultBuffer<ffi::F32> p_out,
                    ffi::ResultBuffer<ffi::F32> m_out,
                    ffi::ResultBuffer<ffi::F32> v_out) {
  Layout layout;
  ffi::Error error = Prepare(m_in, v_in, p_in, coef, unit_axis, p_out, m_out,
                             v_out, &layout);
  if (error.failure()) return error;
  if (g.element_count() != p_in.element_count()) {
    return ffi::Error::InvalidArgument("fused_adam: shapes do not match");
  }
  const float* grad = g.typed_data();
  Update(pool, layout, p_out, m_out, v_out, coef,
         Consts{b1, c1, b2, c2, eps, max_norm}, unit_axis,
         [&](int64_t task) { return grad + layout.at(task); });
  return ffi::Error::Success();
}

// As AdamImpl, the gradient given as a [members, batch, rows] and
// b [members, batch, cols], g = a^T b per member.
ffi::Error OuterImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a,
                     ffi::Buffer<ffi::F32> b, ffi::Buffer<ffi::F32> m_in,
                     ffi::Buffer<ffi::F32> v_in, ffi::Buffer<ffi::F32> p_in,
                     ffi::Buffer<ffi::F32> coef, float b1, float c1, float b2,
                     float c2, float eps, float max_norm, int32_t unit_axis,
                     ffi::ResultBuffer<ffi::F32> p_out,
                     ffi::ResultBuffer<ffi::F32> m_out,
                     ffi::ResultBuffer<ffi::F32> v_out) {
  Layout layout;
  ffi::Error error = Prepare(m_in, v_in, p_in, coef, unit_axis, p_out, m_out,
                             v_out, &layout);
  if (error.failure()) return error;
  const auto a_dims = a.dimensions();
  const int64_t batch = a_dims.size() < 2 ? 0 : a_dims[a_dims.size() - 2];
  const int64_t rows = layout.rows, cols = layout.cols;
  if (batch < 1 || a.element_count() != layout.members * batch * rows ||
      b.element_count() != layout.members * batch * cols) {
    return ffi::Error::InvalidArgument(
        "fused_adam: factors do not match the weight");
  }
  const float* a_data = a.typed_data();
  const float* b_data = b.typed_data();
  Update(pool, layout, p_out, m_out, v_out, coef,
         Consts{b1, c1, b2, c2, eps, max_norm}, unit_axis,
         [&](int64_t task) {
           // one block of g per thread, reused across tasks and calls
           thread_local std::vector<float> block;
           const int64_t count = layout.count(task), member = layout.member(task);
           block.resize(size_t(layout.block * cols));
           OuterBlock(a_data + member * batch * rows,
                      b_data + member * batch * cols, batch, rows, cols,
                      layout.first_row(task), count, block.data());
           return static_cast<const float*>(block.data());
         });
  return ffi::Error::Success();
}

}  // namespace

// Both handlers' arguments after the gradient's: m, v, p, coef, the
// attributes, and the updated p, m, v.
template <typename Binding>
auto AdamTail(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Attr<float>("b1")
      .template Attr<float>("c1")
      .template Attr<float>("b2")
      .template Attr<float>("c2")
      .template Attr<float>("eps")
      .template Attr<float>("max_norm")
      .template Attr<int32_t>("unit_axis")
      .template Ret<ffi::Buffer<ffi::F32>>()
      .template Ret<ffi::Buffer<ffi::F32>>()
      .template Ret<ffi::Buffer<ffi::F32>>();
}

// the gradient
XLA_FFI_DEFINE_HANDLER_SYMBOL(EmosaeFusedAdam, AdamImpl,
                              AdamTail(ffi::Ffi::Bind()
                                           .Ctx<ffi::ThreadPool>()
                                           .Arg<ffi::Buffer<ffi::F32>>()));

// the gradient's factors a and b
XLA_FFI_DEFINE_HANDLER_SYMBOL(EmosaeFusedAdamOuter, OuterImpl,
                              AdamTail(ffi::Ffi::Bind()
                                           .Ctx<ffi::ThreadPool>()
                                           .Arg<ffi::Buffer<ffi::F32>>()
                                           .Arg<ffi::Buffer<ffi::F32>>()));
