// Fused multi-step LIF for CPU training: spikeforge.sw.neurons' _LIFSequence in one pass.
//
// Built at first use by spikeforge/sw/lif_kernel.py and registered as the ops
// torch.ops.spikeforge_lif.forward / .backward.  The maths is that of
// _LIFSequence (sw/neurons.py), which stays the reference and the fallback:
//
//   u[t] = f(u[t-1], o[t-1]) + I[t],  o[t] = [u[t] >= theta]   (or the hybrid leaky ReLU)
//   (strict neurons: [u[t] > theta], computed as [u[t] >= fire] with fire the
//   next value of T above theta: the same comparison, exactly)
//   go[t] = dL/do[t] + gu[t+1] * df/do(u[t], o[t])
//   gu[t] = go[t] * g'(u[t]) + gu[t+1] * df/du(u[t], o[t]),     dL/dI[t] = gu[t]
//
// Each neuron's T steps run inside one loop with u and o held in a small
// per-block buffer, so memory is read and written once per call.  The forward
// stores nothing extra: the backward recomputes u from I (kept by autograd),
// which costs a few flops per step and saves writing and reading u.
//
// Two options avoid memory traffic that the surrounding layers would cost:
//   steps > 0  the current I is static ([N], the same at every step; e.g. a
//              conv of a direct-encoded image): read once, and the gradient is
//              summed over t in the kernel ([N]).
//   pool  > 1  max pooling (kernel = stride = pool, no padding, floor) of the
//              output over the last two axes, fused: only the pooled output is
//              written.  The backward routes each pooled gradient to the first
//              maximum of its window in row-major order, as ATen's CPU
//              max_pool2d does; the maxima are recomputed from u.
//
// The build disables FMA contraction (-ffp-contract=off) so that the forward
// rounds exactly as the PyTorch reference does (equal spikes).  The reverse
// pass flushes subnormal values to zero (see FlushSubnormals); gradients then
// equal the reference's up to rounding and up to magnitudes below FLT_MIN.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define SPIKEFORGE_HAS_MXCSR 1
#endif

namespace {

// While alive, this thread flushes subnormal floats to zero (FTZ and DAZ).
// The backward uses it: the Gaussian surrogate makes many gradients of
// magnitude below FLT_MIN, which would be kept as subnormals, cost a slow
// microcode path here and in every matrix product downstream (a 10x slower
// FC backward was measured), and carry no information.  The forward does not
// use it, so that spikes are exactly those of the reference.
struct FlushSubnormals {
#ifdef SPIKEFORGE_HAS_MXCSR
  unsigned int saved;
  FlushSubnormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
  ~FlushSubnormals() { _mm_setcsr(saved); }
#endif
};

enum Mode : int64_t { ZERO = 0, SUBTRACT = 1, NONE = 2, HYBRID = 3 };
enum Surrogate : int64_t { GAUSSIAN = 0, RECT = 1, FAST_SIGMOID = 2, BPSA = 3 };

template <typename T>
struct Params {
  int64_t mode, surrogate;
  T decay, theta, beta;
  T fire;   // the least u that spikes: theta, or (strict) the next T above theta
  T dfdo;   // SUBTRACT/NONE: the constant df/do; ZERO: the constant part (decay * bpta)
  T neg_decay;
  T s_den, s_scale;  // surrogate constants (see surrogate_derivative)
  T width;
};

// exp for x <= 0 in float, vectorisable (Cephes-style reduction and polynomial,
// about 1 ulp); arguments below -87 give 0.  Only for the Gaussian surrogate.
inline float exp_neg(float x) {
  const float xc = std::max(x, -87.0f);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -87.0f ? 0.0f : y * scale;
}
inline double exp_neg(double x) { return std::exp(x); }

// One step of the forward recurrence for n neurons; x is the input current.
template <typename T>
inline void step(const Params<T>& p, T* __restrict u, T* __restrict o, const T* __restrict x,
                 int64_t n) {
  const T d = p.decay, th = p.theta, beta = p.beta, fire = p.fire;
  switch (p.mode) {
    case ZERO:
      for (int64_t j = 0; j < n; ++j) {
        const T v = d * (u[j] * (T(1) - o[j])) + x[j];
        u[j] = v;
        o[j] = v >= fire ? T(1) : T(0);
      }
      break;
    case SUBTRACT:
      for (int64_t j = 0; j < n; ++j) {
        const T v = (d * u[j] - th * o[j]) + x[j];
        u[j] = v;
        o[j] = v >= fire ? T(1) : T(0);
      }
      break;
    case NONE:
      for (int64_t j = 0; j < n; ++j) {
        const T v = d * u[j] + x[j];
        u[j] = v;
        o[j] = v >= fire ? T(1) : T(0);
      }
      break;
    default:  // HYBRID: shifted leaky ReLU, no reset
      for (int64_t j = 0; j < n; ++j) {
        const T v = d * u[j] + x[j];
        u[j] = v;
        o[j] = v >= fire ? v : beta * v;
      }
  }
}

// The output o from u (as step computes it).
template <typename T>
inline void output_of(const Params<T>& p, const T* __restrict u, T* __restrict o, int64_t n) {
  const T fire = p.fire, beta = p.beta;
  if (p.mode == HYBRID) {
    for (int64_t j = 0; j < n; ++j) o[j] = u[j] >= fire ? u[j] : beta * u[j];
  } else {
    for (int64_t j = 0; j < n; ++j) o[j] = u[j] >= fire ? T(1) : T(0);
  }
}

// g'(u) of the surrogate, as sw/surrogate.py's derivative() computes it.
template <typename T>
inline void surrogate_derivative(const Params<T>& p, const T* __restrict u, T* __restrict g,
                                 int64_t n) {
  // divisions by constants are multiplications by their reciprocals, as in ATen
  const T th = p.theta, fire = p.fire, w = p.width, inv_den = T(1) / p.s_den,
          inv_scale = T(1) / p.s_scale;
  switch (p.surrogate) {
    case GAUSSIAN:  // exp(-(x*x) / (2 w^2)) / sqrt(2 pi w)
      for (int64_t j = 0; j < n; ++j) {
        const T x = u[j] - th;
        g[j] = exp_neg(-(x * x) * inv_den) * inv_scale;
      }
      break;
    case RECT:  // [|x| < w] / (2 w)
      for (int64_t j = 0; j < n; ++j) {
        const T x = u[j] - th;
        g[j] = std::abs(x) < w ? inv_den : T(0);
      }
      break;
    case FAST_SIGMOID:  // 1 / (1 + w |x|)^2
      for (int64_t j = 0; j < n; ++j) {
        const T x = u[j] - th;
        const T y = T(1) + w * std::abs(x);
        g[j] = T(1) / (y * y);
      }
      break;
    default:  // BPSA: 1/u where the neuron spiked (u >= fire), else 0
      for (int64_t j = 0; j < n; ++j) {
        const bool s = u[j] >= fire;
        g[j] = s ? T(1) / (s ? u[j] : T(1)) : T(0);
      }
  }
}

// One reverse step for n neurons: gn holds gu[t+1] on entry and gu[t] on exit.
template <typename T>
inline void back_step(const Params<T>& p, const T* __restrict u, const T* __restrict go,
                      const T* __restrict sg, T* __restrict gn, int64_t n) {
  const T d = p.decay, fire = p.fire, beta = p.beta;
  switch (p.mode) {
    case HYBRID:
      for (int64_t j = 0; j < n; ++j) {
        const T dodu = u[j] >= fire ? T(1) : beta;
        gn[j] = go[j] * dodu + gn[j] * d;
      }
      break;
    case ZERO: {
      const T nd = p.neg_decay, c = p.dfdo;
      for (int64_t j = 0; j < n; ++j) {
        const T o = u[j] >= fire ? T(1) : T(0);
        const T dfdu = d * (T(1) - o);
        const T dfdo = nd * u[j] + c;
        const T g = go[j] + gn[j] * dfdo;
        gn[j] = g * sg[j] + gn[j] * dfdu;
      }
      break;
    }
    default: {  // SUBTRACT, NONE: constant df/du = decay, df/do = p.dfdo
      const T c = p.dfdo;
      for (int64_t j = 0; j < n; ++j) {
        const T g = go[j] + gn[j] * c;
        gn[j] = g * sg[j] + gn[j] * d;
      }
    }
  }
}

// Block geometry: a block is a contiguous run of neurons (pool == 1) or `rows`
// consecutive pooled output rows of one plane (pool > 1), whose inputs are
// rows*pool full rows, also contiguous.
struct Geometry {
  int64_t T, N;              // steps, neurons per step
  int64_t pool, H, W, Ho, Wo, planes;
  int64_t block, rows;       // neurons per block (pool == 1) / out rows per block
  int64_t blocks, per_plane;

  Geometry(int64_t T_, const at::Tensor& i, bool static_input, int64_t pool_, size_t elem)
      : T(T_), pool(pool_) {
    N = static_input ? i.numel() : i.numel() / std::max<int64_t>(T, 1);
    const int64_t target = std::max<int64_t>(64, std::min<int64_t>(
        2048, (int64_t)(32768 / (std::max<int64_t>(T, 1) * (int64_t)elem))));
    if (pool > 1) {
      H = i.size(-2);
      W = i.size(-1);
      Ho = H / pool;
      Wo = W / pool;
      planes = N / (H * W);
      rows = std::max<int64_t>(1, std::min<int64_t>(Ho, target / (pool * W)));
      per_plane = Ho > 0 ? (Ho + rows - 1) / rows : 0;
      blocks = planes * per_plane;
      block = rows * pool * W;
    } else {
      H = W = Ho = Wo = planes = per_plane = 1;
      rows = 1;
      block = (target + 15) / 16 * 16;
      blocks = (N + block - 1) / block;
    }
  }
  int64_t out_numel() const { return pool > 1 ? planes * Ho * Wo : N; }
  // first input element, number of neurons and first output element of block b
  void locate(int64_t b, int64_t& in0, int64_t& n, int64_t& out0, int64_t& nrows) const {
    if (pool > 1) {
      const int64_t plane = b / per_plane, r0 = (b % per_plane) * rows;
      nrows = std::min(rows, Ho - r0);
      in0 = plane * H * W + r0 * pool * W;
      n = nrows * pool * W;
      out0 = plane * Ho * Wo + r0 * Wo;
    } else {
      in0 = out0 = b * block;
      n = std::min(block, N - in0);
      nrows = 0;
    }
  }
};

// 2x2 windows of rows a, b (stride 2): y[c] = max of the window
template <typename T>
void pool2_forward_row(const T* __restrict a, const T* __restrict b, T* __restrict y, int64_t Wo) {
  for (int64_t c = 0; c < Wo; ++c) {
    const T x0 = a[2 * c], x1 = a[2 * c + 1], x2 = b[2 * c], x3 = b[2 * c + 1];
    const T m01 = x1 > x0 ? x1 : x0, m23 = x3 > x2 ? x3 : x2;
    y[c] = m23 > m01 ? m23 : m01;
  }
}

// 2x2 windows of rows a, b: the window's gradient y[c] to its first maximum
// (row-major), 0 to the other three
template <typename T>
void pool2_backward_row(const T* __restrict a, const T* __restrict b, const T* __restrict y,
                        T* __restrict ga, T* __restrict gb, int64_t Wo) {
  for (int64_t c = 0; c < Wo; ++c) {
    const T x0 = a[2 * c], x1 = a[2 * c + 1], x2 = b[2 * c], x3 = b[2 * c + 1];
    const T m01 = x1 > x0 ? x1 : x0, m23 = x3 > x2 ? x3 : x2, m = m23 > m01 ? m23 : m01;
    const bool s0 = x0 == m;
    const bool s1 = !s0 & (x1 == m);
    const bool s2 = !(s0 | s1) & (x2 == m);
    const bool s3 = !(s0 | s1 | s2);
    const T v = y[c];
    ga[2 * c] = s0 ? v : T(0);
    ga[2 * c + 1] = s1 ? v : T(0);
    gb[2 * c] = s2 ? v : T(0);
    gb[2 * c + 1] = s3 ? v : T(0);
  }
}

// pooled[r, c] = max over the window of o (window k x k, stride k)
template <typename T>
inline void pool_forward(const Geometry& g, const T* o, int64_t nrows, T* out) {
  const int64_t k = g.pool, W = g.W, Wo = g.Wo;
  for (int64_t r = 0; r < nrows; ++r) {
    const T* a = o + r * k * W;
    T* y = out + r * Wo;
    if (k == 2) {
      pool2_forward_row(a, a + W, y, Wo);
      continue;
    }
    for (int64_t c = 0; c < Wo; ++c) {
      const T* w0 = a + c * k;
      T m = w0[0];
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j) {
          const T v = w0[i * W + j];
          m = v > m ? v : m;
        }
      y[c] = m;
    }
  }
}

// Gradient of the unpooled output: each pooled gradient goes to its window's
// first maximum in row-major order (ATen's CPU max_pool2d); 0 elsewhere.
template <typename T>
inline void pool_backward(const Geometry& g, const T* o, const T* gp, int64_t nrows, T* go,
                          int64_t n) {
  const int64_t k = g.pool, W = g.W, Wo = g.Wo;
  if (k == 2) {
    if (2 * Wo != W) std::fill(go, go + n, T(0));
    for (int64_t r = 0; r < nrows; ++r) {
      const T* a = o + 2 * r * W;
      T* ga = go + 2 * r * W;
      pool2_backward_row(a, a + W, gp + r * Wo, ga, ga + W, Wo);
    }
    return;
  }
  std::fill(go, go + n, T(0));
  for (int64_t r = 0; r < nrows; ++r) {
    for (int64_t c = 0; c < Wo; ++c) {
      const int64_t base = r * k * W + c * k;
      int64_t best = base;
      T m = o[base];
      for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < k; ++j) {
          const int64_t idx = base + i * W + j;
          if (o[idx] > m) {
            m = o[idx];
            best = idx;
          }
        }
      go[best] = gp[r * Wo + c];
    }
  }
}

template <typename T>
Params<T> make_params(int64_t mode, int64_t surrogate, double decay, double theta, double beta,
                      bool strict, double bpta, double width) {
  Params<T> p;
  p.mode = mode;
  p.surrogate = surrogate;
  p.decay = T(decay);
  p.theta = T(theta);
  // u > theta  <=>  u >= the next representable T above theta (finite theta)
  p.fire = strict ? std::nextafter(p.theta, std::numeric_limits<T>::infinity()) : p.theta;
  p.beta = T(beta);
  p.neg_decay = T(-decay);
  if (mode == ZERO) p.dfdo = T(decay * bpta);
  else if (mode == SUBTRACT) p.dfdo = T(-theta + decay * bpta);
  else p.dfdo = T(0.0 + decay * bpta);
  p.width = T(width);
  if (surrogate == GAUSSIAN) {
    p.s_den = T(2.0 * width * width);
    p.s_scale = T(std::sqrt(2.0 * M_PI * width));
  } else {
    p.s_den = T(2.0 * width);
    p.s_scale = T(1);
  }
  return p;
}

template <typename T>
void forward_impl(const Params<T>& p, const Geometry& g, const T* in, bool static_input, T* out) {
  at::parallel_for(0, g.blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> buf(2 * g.block);
    T* u = buf.data();
    T* o = u + g.block;
    for (int64_t b = b0; b < b1; ++b) {
      int64_t in0, n, out0, nrows;
      g.locate(b, in0, n, out0, nrows);
      std::fill(u, u + n, T(0));
      std::fill(o, o + n, T(0));
      const int64_t on = g.out_numel();
      for (int64_t t = 0; t < g.T; ++t) {
        const T* x = in + (static_input ? 0 : t * g.N) + in0;
        step(p, u, o, x, n);
        if (g.pool > 1) pool_forward(g, o, nrows, out + t * on + out0);
        else std::memcpy(out + t * on + out0, o, n * sizeof(T));
      }
    }
  });
}

template <typename T>
void backward_impl(const Params<T>& p, const Geometry& g, const T* in, bool static_input,
                   const T* grad_out, T* grad_in) {
  at::parallel_for(0, g.blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t B = g.block;
    std::vector<T> buf((g.T + 6) * B);
    T* us = buf.data();          // u[t] for the block, T * B
    T* u = us + g.T * B;         // running u (forward recompute)
    T* o = u + B;                // running o / o[t] (pooling)
    T* sg = o + B;               // g'(u[t])
    T* gn = sg + B;              // gu[t+1] -> gu[t]
    T* go = gn + B;              // dL/do[t] (pooling: unpooled)
    T* acc = go + B;             // static input: sum_t gu[t]
    const int64_t on = g.out_numel();
    for (int64_t b = b0; b < b1; ++b) {
      int64_t in0, n, out0, nrows;
      g.locate(b, in0, n, out0, nrows);
      std::fill(u, u + n, T(0));
      std::fill(o, o + n, T(0));
      for (int64_t t = 0; t < g.T; ++t) {
        step(p, u, o, in + (static_input ? 0 : t * g.N) + in0, n);
        std::memcpy(us + t * B, u, n * sizeof(T));
      }
      const FlushSubnormals ftz;   // the reverse pass only (see FlushSubnormals)
      std::fill(gn, gn + n, T(0));
      if (static_input) std::fill(acc, acc + n, T(0));
      for (int64_t t = g.T - 1; t >= 0; --t) {
        const T* ut = us + t * B;
        const T* gt;
        if (g.pool > 1) {
          output_of(p, ut, o, n);
          pool_backward(g, o, grad_out + t * on + out0, nrows, go, n);
          gt = go;
        } else {
          gt = grad_out + t * on + out0;
        }
        if (p.mode != HYBRID) surrogate_derivative(p, ut, sg, n);
        back_step(p, ut, gt, sg, gn, n);
        if (static_input) {
          for (int64_t j = 0; j < n; ++j) acc[j] += gn[j];
        } else {
          std::memcpy(grad_in + t * g.N + in0, gn, n * sizeof(T));
        }
      }
      if (static_input) std::memcpy(grad_in + in0, acc, n * sizeof(T));
    }
  });
}

void check_input(const at::Tensor& i, int64_t steps, int64_t pool) {
  TORCH_CHECK(i.device().is_cpu(), "spikeforge_lif: CPU tensors only");
  TORCH_CHECK(i.scalar_type() == at::kFloat || i.scalar_type() == at::kDouble,
              "spikeforge_lif: float32 or float64 only");
  TORCH_CHECK(steps > 0 || i.dim() >= 1, "spikeforge_lif: input needs a time axis");
  TORCH_CHECK(pool >= 1, "spikeforge_lif: pool must be >= 1");
  TORCH_CHECK(pool == 1 || i.dim() >= (steps > 0 ? 2 : 3),
              "spikeforge_lif: pooling needs [..., H, W]");
}

std::vector<int64_t> out_shape(const at::Tensor& i, int64_t steps, int64_t pool) {
  std::vector<int64_t> s;
  if (steps > 0) s.push_back(steps);
  for (int64_t d = 0; d < i.dim(); ++d) s.push_back(i.size(d));
  if (pool > 1) {
    s[s.size() - 2] /= pool;
    s[s.size() - 1] /= pool;
  }
  return s;
}

// i: [T, ...] currents, or (steps > 0) the static current [...] for `steps` steps.
at::Tensor lif_forward(const at::Tensor& i_, int64_t steps, int64_t pool, int64_t mode,
                       double decay, double theta, double beta, bool strict) {
  check_input(i_, steps, pool);
  const at::Tensor i = i_.contiguous();
  const bool st = steps > 0;
  const int64_t T = st ? steps : i.size(0);
  at::Tensor out = at::empty(out_shape(i, steps, pool), i.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(i.scalar_type(), "spikeforge_lif_forward", [&] {
    const auto p = make_params<scalar_t>(mode, GAUSSIAN, decay, theta, beta, strict, 0.0, 1.0);
    const Geometry g(T, i, st, pool, sizeof(scalar_t));
    forward_impl<scalar_t>(p, g, i.data_ptr<scalar_t>(), st, out.data_ptr<scalar_t>());
  });
  return out;
}

// grad of the input (shape of i) for grad of the output (shape of lif_forward's output).
at::Tensor lif_backward(const at::Tensor& grad_, const at::Tensor& i_, int64_t steps, int64_t pool,
                        int64_t mode, double decay, double theta, double beta, bool strict,
                        int64_t surrogate, double width, double bpta) {
  check_input(i_, steps, pool);
  const at::Tensor i = i_.contiguous();
  const at::Tensor grad = grad_.to(i.scalar_type()).contiguous();
  const bool st = steps > 0;
  const int64_t T = st ? steps : i.size(0);
  TORCH_CHECK(grad.sizes().vec() == out_shape(i, steps, pool), "spikeforge_lif: bad grad shape");
  at::Tensor gi = at::empty(i.sizes(), i.options());
  if (gi.numel() == 0) return gi;
  if (grad.numel() == 0 || T == 0) return gi.zero_();
  AT_DISPATCH_FLOATING_TYPES(i.scalar_type(), "spikeforge_lif_backward", [&] {
    const auto p = make_params<scalar_t>(mode, surrogate, decay, theta, beta, strict, bpta, width);
    const Geometry g(T, i, st, pool, sizeof(scalar_t));
    if (pool > 1 && (g.Ho * g.pool < g.H || g.Wo * g.pool < g.W)) gi.zero_();
    backward_impl<scalar_t>(p, g, i.data_ptr<scalar_t>(), st, grad.data_ptr<scalar_t>(),
                            gi.data_ptr<scalar_t>());
  });
  return gi;
}

}  // namespace

TORCH_LIBRARY(spikeforge_lif, m) {
  m.def("forward(Tensor i, int steps, int pool, int mode, float decay, float theta, float beta, "
        "bool strict) -> Tensor",
        &lif_forward);
  m.def("backward(Tensor grad, Tensor i, int steps, int pool, int mode, float decay, float theta, "
        "float beta, bool strict, int surrogate, float width, float bpta) -> Tensor",
        &lif_backward);
}
