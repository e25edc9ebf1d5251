// The MLP activations and their derivatives, fp32 math (spec: vtkernels/reference/activation.py).
// No torch headers.
#pragma once

#include <type_traits>

namespace vtk {

// Codes in the order of vtkernels.reference.activation.ACTIVATIONS (the bindings pass them on).
enum class Activation : int { kGelu = 0, kGeluTanh = 1, kQuickGelu = 2, kRelu = 3 };

constexpr float kQuickGeluAlpha = 1.702f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;
// tanh(u) = 2 sigmoid(2u) - 1, so 0.5 x (1 + tanh(u)) = x sigmoid(2u); kTanhScale = 2 sqrt(2 / pi).
constexpr float kTanhScale = 1.5957691216057308f;
constexpr float kTanhCubic = 0.044715f;

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

// Phi(-a) = exp2(P(a)) on [0, kTailLimit), P(a) = sum_k kTailP[k] a^k, fitted by
// tools/fit_gelu_tail.py (relative error <= 6e-6 in fp32); 0 past kTailLimit, where Phi(-a) < 1e-10.
// The same coefficients as the Triton GELU (vtkernels/triton/activation.py; a test compares them).
constexpr float kTailLimit = 6.375f;
__device__ constexpr float kTailP[10] = {-1.0f,           -1.15115356f,    -0.458875209f,  -0.0532747805f, 0.00793254189f,
                                         -0.000659412297f, -1.32707637e-05f, 1.01839614e-05f, -1.03788761e-06f, 3.72624065e-08f};

// Phi(x), the standard normal CDF (exact GELU = x Phi(x)): Phi(-|x|) from the polynomial and one
// exp2, Phi(x) = 1 - Phi(-x). About half the instructions of 0.5 (1 + erff(x / sqrt 2)), whose
// two polynomials select their coefficients per element.
__device__ __forceinline__ float normal_cdf(float x) {
  const float a = fabsf(x);
  float p = kTailP[9];
#pragma unroll
  for (int k = 8; k >= 0; --k) p = fmaf(p, a, kTailP[k]);
  // (a NaN fails the comparison: tail 0, and x * Phi(x) stays NaN)
  const float tail = a < kTailLimit ? exp2f(p) : 0.f;
  return x < 0.f ? tail : 1.f - tail;
}

template <Activation A>
__device__ __forceinline__ float activate(float x) {
  if constexpr (A == Activation::kGelu) {
    return x * normal_cdf(x);
  } else if constexpr (A == Activation::kGeluTanh) {
    return x * sigmoid(kTanhScale * (x + kTanhCubic * x * x * x));
  } else if constexpr (A == Activation::kQuickGelu) {
    return x * sigmoid(kQuickGeluAlpha * x);
  } else {
    return x < 0.f ? 0.f : x;  // NaN stays NaN, as in torch (fmaxf would drop it)
  }
}

// d activate / dx.
template <Activation A>
__device__ __forceinline__ float activation_grad(float x) {
  if constexpr (A == Activation::kGelu) {
    return normal_cdf(x) + x * kInvSqrt2Pi * __expf(-0.5f * x * x);
  } else if constexpr (A == Activation::kGeluTanh) {
    const float s = sigmoid(kTanhScale * (x + kTanhCubic * x * x * x));
    return s + x * s * (1.f - s) * kTanhScale * (1.f + 3.f * kTanhCubic * x * x);
  } else if constexpr (A == Activation::kQuickGelu) {
    const float s = sigmoid(kQuickGeluAlpha * x);
    return s + kQuickGeluAlpha * x * s * (1.f - s);
  } else {
    return x <= 0.f ? 0.f : 1.f;  // 1 at NaN, as torch's threshold_backward
  }
}

// Runs fn(std::integral_constant<Activation, A>{}) for the runtime code `a`.
template <typename Fn>
auto dispatch_activation(Activation a, Fn&& fn) {
  switch (a) {
    case Activation::kGelu: return fn(std::integral_constant<Activation, Activation::kGelu>{});
    case Activation::kGeluTanh: return fn(std::integral_constant<Activation, Activation::kGeluTanh>{});
    case Activation::kQuickGelu: return fn(std::integral_constant<Activation, Activation::kQuickGelu>{});
    default: return fn(std::integral_constant<Activation, Activation::kRelu>{});
  }
}

}  // namespace vtk
