// The MLP activations and their derivatives, fp32 math (spec: vtkernels/reference/activation.py).
// No torch headers.
#pragma once

#include <type_traits>

namespace vtk {

// Codes in the order of vtkernels.reference.activation.ACTIVATIONS (the bindings pass them on).
enum class Activation : int { kGelu = 0, kGeluTanh = 1, kQuickGelu = 2, kRelu = 3 };

constexpr float kQuickGeluAlpha = 1.702f;
constexpr float kSqrtHalf = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;
// tanh(u) = 2 sigmoid(2u) - 1, so 0.5 x (1 + tanh(u)) = x sigmoid(2u); kTanhScale = 2 sqrt(2 / pi).
constexpr float kTanhScale = 1.5957691216057308f;
constexpr float kTanhCubic = 0.044715f;

__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

template <Activation A>
__device__ __forceinline__ float activate(float x) {
  if constexpr (A == Activation::kGelu) {
    return 0.5f * x * (1.f + erff(x * kSqrtHalf));
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
    return 0.5f * (1.f + erff(x * kSqrtHalf)) + x * kInvSqrt2Pi * __expf(-0.5f * x * x);
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
