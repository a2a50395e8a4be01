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

// Chunks are claimed from a shared counter by the calling thread and by
// helpers on XLA's intra-op pool; the caller works too and only waits for
// chunks already claimed, so a busy pool cannot deadlock it.
struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                    ffi::Buffer<ffi::F32> m_in, ffi::Buffer<ffi::F32> v_in,
                    ffi::Buffer<ffi::F32> p_in, ffi::Buffer<ffi::F32> coef,
                    float b1, float c1, float b2, float c2, float eps,
                    float max_norm, ffi::ResultBuffer<ffi::F32> p_out,
                    ffi::ResultBuffer<ffi::F32> m_out,
                    ffi::ResultBuffer<ffi::F32> v_out) {
  const int64_t n = p_in.element_count();
  const int64_t members = coef.element_count() / kCoefs;
  if (members < 1 || n % members != 0 || g.element_count() != n) {
    return ffi::Error::InvalidArgument("fused_adam: shapes do not match");
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

  const int64_t per_member = n / members;
  const int64_t chunk = int64_t{1} << 15;  // 128 KiB of each array
  const int64_t chunks_per_member = std::max<int64_t>(
      1, (per_member + chunk - 1) / chunk);
  const int64_t total = chunks_per_member * members;
  auto progress = std::make_shared<Progress>();
  auto work = [=]() {
    for (int64_t c; (c = progress->next.fetch_add(1)) < total;) {
      const int64_t member = c / chunks_per_member;
      const int64_t start = (c % chunks_per_member) * chunk;
      const int64_t size = std::min(per_member - start, chunk);
      const int64_t at = member * per_member + start;
      if (size > 0) {
        AdamRange(grad + at, m + at, v + at, p + at, coefs[member], consts,
                  size);
      }
      progress->done.fetch_add(1);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  while (progress->done.load() < total) std::this_thread::yield();
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
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
