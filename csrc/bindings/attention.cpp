#include "bindings/attention.h"

#include <limits>

#include "attention/attention.h"
#include "cuda_context.h"
#include "torch_checks.h"

namespace vtk_torch {
namespace {

using OptTensor = std::optional<at::Tensor>;

// The fp16 / bf16 kernels move 16-byte vectors: 16-byte aligned data and strides that are
// multiples of 8 elements.
bool vector_aligned(const at::Tensor& t) {
  bool ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int dim = 0; dim < 3; ++dim) ok = ok && t.stride(dim) % 8 == 0;
  return ok;
}

// An input the kernels can read: itself, or (fp16 / bf16 view that is not vector-aligned, e.g.
// an odd storage offset) a contiguous copy.
at::Tensor readable(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat || vector_aligned(t)) return t;
  return t.clone(at::MemoryFormat::Contiguous);
}

void check_writable(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || vector_aligned(t), name,
              " must be 16-byte aligned with strides that are multiples of 8 elements");
}

// A (B, H, n, d) view with q's batch, heads and head_dim.
void check_bhnd(const at::Tensor& t, const char* name, const at::Tensor& q, int64_t n) {
  check_operand(t, name, q, 4);
  TORCH_CHECK(t.size(0) == q.size(0) && t.size(1) == q.size(1) && t.size(2) == n && t.size(3) == q.size(3), name,
              " must have shape (", q.size(0), ", ", q.size(1), ", ", n, ", ", q.size(3), ") as a (B, H, N, d) view, got ",
              t.sizes());
}

void check_rows_f32(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(on_kernel_device(t) && t.device() == q.device() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.sizes() == at::IntArrayRef({q.size(0), q.size(1), q.size(2)}),
              name, " must be a contiguous float32 tensor of shape (", q.size(0), ", ", q.size(1), ", ", q.size(2),
              ") on ", q.device());
}

vtk::BhndView view(const at::Tensor& t) {
  return {const_cast<void*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

// Validates q, k, v and the mask; returns the shape the kernels take.
vtk::AttentionShape attention_shape(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const OptTensor& key_padding_mask, bool causal, double scale) {
  check_operand(q, "q", q, 4);
  check_operand(k, "k", q, 4);  // before k.size(2): a k of the wrong rank gets an error naming k
  const int64_t batch = q.size(0), heads = q.size(1), n_q = q.size(2), head_dim = q.size(3), n_kv = k.size(2);
  check_bhnd(k, "k", q, n_kv);
  check_bhnd(v, "v", q, n_kv);
  TORCH_CHECK(vtk::attention_head_dim_supported(static_cast<int>(head_dim)),
              "q: head_dim must be 32, 64, 80, 96 or 128, got ", head_dim);
  TORCH_CHECK(n_kv > 0, "k must hold at least one key");
  // The kernels index rows with int (and form row + n_kv - n_q): keep n_q + n_kv in int range.
  TORCH_CHECK(n_q + n_kv <= std::numeric_limits<int>::max(), "q (", n_q, " queries) and k (", n_kv,
              " keys): n_q + n_kv must fit in a 32-bit int for the CUDA kernels");
  // The kernels' grid is (row blocks, heads, batch): gridDim.y and gridDim.z are at most 65535.
  TORCH_CHECK(batch <= 65535 && heads <= 65535, "q: batch (", batch, ") and heads (", heads,
              ") must each be at most 65535 for the CUDA kernels");
  if (key_padding_mask) {
    const at::Tensor& mask = *key_padding_mask;
    TORCH_CHECK(on_kernel_device(mask) && mask.device() == q.device(), "key_padding_mask must be on ", q.device());
    TORCH_CHECK(mask.scalar_type() == at::kBool || mask.scalar_type() == at::kByte,
                "key_padding_mask must be bool (True = ignore the key), got ", mask.scalar_type());
    TORCH_CHECK(mask.dim() == 2 && mask.size(0) == batch && mask.size(1) == n_kv && (n_kv == 1 || mask.stride(1) == 1),
                "key_padding_mask must have shape (", batch, ", ", n_kv, ") with unit stride along keys, got ",
                mask.sizes());
  }
  vtk::AttentionShape s{};
  s.batch = static_cast<int>(batch);
  s.heads = static_cast<int>(heads);
  s.n_q = static_cast<int>(n_q);
  s.n_kv = static_cast<int>(n_kv);
  s.head_dim = static_cast<int>(head_dim);
  s.scale = static_cast<float>(scale);
  s.causal = causal;
  s.key_padding_mask = key_padding_mask ? static_cast<const uint8_t*>(key_padding_mask->data_ptr()) : nullptr;
  s.mask_batch_stride = key_padding_mask ? key_padding_mask->stride(0) : 0;
  s.dtype = kernel_dtype(q, "q");
  return s;
}

// q, k, v, out: (B, H, N, d) views (any strides, unit stride along d); writes out and lse.
void attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const OptTensor& key_padding_mask,
                   at::Tensor& out, at::Tensor& lse, bool causal, double scale) {
  vtk::AttentionFwdParams p{};
  p.shape = attention_shape(q, k, v, key_padding_mask, causal, scale);
  check_bhnd(out, "out", q, q.size(2));
  check_writable(out, "out");
  check_rows_f32(lse, "lse", q);
  const at::Tensor qr = readable(q), kr = readable(k), vr = readable(v);
  DeviceGuard guard(q);
  p.q = view(qr);
  p.k = view(kr);
  p.v = view(vr);
  p.out = view(out);
  p.lse = lse.data_ptr<float>();
  check_launch(vtk::attention_fwd(p, current_stream(q)), "attention_fwd");
}

// Writes dq, dk, dv ((B, H, N, d) views) from dout, the forward's out and lse.
void attention_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const OptTensor& key_padding_mask, const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq,
                   at::Tensor& dk, at::Tensor& dv, bool causal, double scale) {
  vtk::AttentionBwdParams p{};
  p.shape = attention_shape(q, k, v, key_padding_mask, causal, scale);
  check_bhnd(dout, "dout", q, q.size(2));
  check_bhnd(out, "out", q, q.size(2));
  check_bhnd(dq, "dq", q, q.size(2));
  check_bhnd(dk, "dk", q, k.size(2));
  check_bhnd(dv, "dv", q, k.size(2));
  check_writable(dq, "dq");
  check_writable(dk, "dk");
  check_writable(dv, "dv");
  check_rows_f32(lse, "lse", q);
  const at::Tensor qr = readable(q), kr = readable(k), vr = readable(v), outr = readable(out), doutr = readable(dout);
  at::Tensor delta = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  DeviceGuard guard(q);
  p.q = view(qr);
  p.k = view(kr);
  p.v = view(vr);
  p.out = view(outr);
  p.dout = view(doutr);
  p.dq = view(dq);
  p.dk = view(dk);
  p.dv = view(dv);
  p.lse = lse.data_ptr<float>();
  p.delta = delta.data_ptr<float>();
  check_launch(vtk::attention_bwd(p, current_stream(q)), "attention_bwd");
}

}  // namespace

void bind_attention(pybind11::module_& m) {
  m.def("attention_fwd", &attention_fwd,
        "Fused attention forward on (B, H, N, d) views: writes out and lse (B, H, Nq) fp32",
        pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"), pybind11::arg("key_padding_mask"),
        pybind11::arg("out"), pybind11::arg("lse"), pybind11::arg("causal"), pybind11::arg("scale"));
  m.def("attention_bwd", &attention_bwd,
        "Fused attention backward on (B, H, N, d) views: writes dq, dk, dv",
        pybind11::arg("dout"), pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"),
        pybind11::arg("key_padding_mask"), pybind11::arg("out"), pybind11::arg("lse"), pybind11::arg("dq"),
        pybind11::arg("dk"), pybind11::arg("dv"), pybind11::arg("causal"), pybind11::arg("scale"));
}

}  // namespace vtk_torch
