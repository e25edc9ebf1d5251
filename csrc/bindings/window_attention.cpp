#include "bindings/window_attention.h"

#include <tuple>

#include "cuda_context.h"
#include "torch_checks.h"
#include "window_attention/window_attention.h"

namespace vtk_torch {
namespace {

using OptTensor = std::optional<at::Tensor>;

// Batch, row and column strides of a (B, H, W, channels) map.
void map_strides(const at::Tensor& t, int64_t& stride_b, int64_t& stride_h, int64_t& stride_w) {
  stride_b = t.stride(0);
  stride_h = t.stride(1);
  stride_w = t.stride(2);
}

// Validates the call and fills the geometry / qkv part of the params.
vtk::WindowAttnParams make_params(const at::Tensor& qkv, const at::Tensor& table, const OptTensor& pad_qkv, int64_t heads,
                                  int64_t window, int64_t table_window, int64_t shift, double scale, double mask_value,
                                  bool pad_first) {
  check_operand(qkv, "qkv", qkv, 4);
  TORCH_CHECK(heads > 0 && qkv.size(3) % (3 * heads) == 0, "qkv's last dimension (", qkv.size(3),
              ") must be 3 * heads (", heads, ") * head_dim");
  const int64_t head_dim = qkv.size(3) / (3 * heads);
  TORCH_CHECK(head_dim > 0 && head_dim <= vtk::kWindowAttnMaxHeadDim, "head_dim must be in [1, ",
              vtk::kWindowAttnMaxHeadDim, "] for the CUDA kernel, got ", head_dim);
  TORCH_CHECK(window >= 1 && window <= table_window, "window must be in [1, table_window=", table_window, "], got ", window);
  TORCH_CHECK(window * window <= vtk::kWindowAttnMaxTokens, "window of ", window, "x", window, " tokens > ",
              vtk::kWindowAttnMaxTokens, " for the CUDA kernel");
  TORCH_CHECK(shift >= 0 && shift < window, "shift must be in [0, window=", window, "), got ", shift);
  TORCH_CHECK(qkv.size(1) > 0 && qkv.size(2) > 0, "qkv must have a non-empty (H, W) map, got ", qkv.sizes());
  TORCH_CHECK(on_kernel_device(table) && table.device() == qkv.device(), "rel_pos_table must be on ", qkv.device());
  TORCH_CHECK(table.dim() == 2 && table.size(0) == (2 * table_window - 1) * (2 * table_window - 1) && table.size(1) == heads,
              "rel_pos_table must have shape (", (2 * table_window - 1) * (2 * table_window - 1), ", ", heads, "), got ",
              table.sizes());
  if (pad_qkv) {
    TORCH_CHECK(on_kernel_device(*pad_qkv) && pad_qkv->device() == qkv.device(), "pad_qkv must be on ", qkv.device());
    TORCH_CHECK(pad_qkv->dim() == 1 && pad_qkv->size(0) == qkv.size(3), "pad_qkv must have shape (", qkv.size(3),
                "), got ", pad_qkv->sizes());
  }
  const int64_t n_windows = (qkv.size(1) + window - 1) / window * ((qkv.size(2) + window - 1) / window);
  TORCH_CHECK(n_windows <= 65535, "qkv: ", n_windows, " windows per image > 65535 (the grid's second axis)");
  vtk::WindowAttnParams p{};
  p.qkv = qkv.data_ptr();
  p.batch = static_cast<int>(qkv.size(0));
  p.height = static_cast<int>(qkv.size(1));
  p.width = static_cast<int>(qkv.size(2));
  p.heads = static_cast<int>(heads);
  p.head_dim = static_cast<int>(head_dim);
  p.window = static_cast<int>(window);
  p.table_window = static_cast<int>(table_window);
  p.shift = static_cast<int>(shift);
  p.pad_first = pad_first;
  map_strides(qkv, p.qkv_stride_b, p.qkv_stride_h, p.qkv_stride_w);
  p.scale = static_cast<float>(scale);
  p.mask_value = static_cast<float>(mask_value);
  p.dtype = kernel_dtype(qkv, "qkv");
  return p;
}

// (bytes one forward / backward block needs, bytes a block may have on `device`): see
// vtk::window_attention_shared_memory. The op refuses the CUDA backend when the first exceeds the
// second (12x12 windows at head_dim 64 on 99 KB parts such as sm_86 / sm_89).
std::tuple<int64_t, int64_t> shared_memory(int64_t window, int64_t head_dim, bool backward, int64_t device) {
  size_t needed = 0, available = 0;
  check_launch(vtk::window_attention_shared_memory(static_cast<int>(window), static_cast<int>(head_dim), backward,
                                                   static_cast<int>(device), &needed, &available),
               "window_attention_shared_memory");
  return {static_cast<int64_t>(needed), static_cast<int64_t>(available)};
}

// A clear error instead of the launch's "invalid argument" when the block does not fit.
void check_shared_memory(const vtk::WindowAttnParams& p, bool backward, const at::Tensor& qkv) {
  const auto [needed, available] = shared_memory(p.window, p.head_dim, backward, qkv.get_device());
  TORCH_CHECK(needed <= available, "window_attention_", backward ? "bwd" : "fwd", ": a ", p.window, "x", p.window,
              " window at head_dim ", p.head_dim, " needs ", needed, " B of shared memory per block, this GPU allows ",
              available, " B (use the Triton backend)");
}

// fp32 copies of the relative-position table and padding vector (tiny: the kernels read them as
// fp32 whatever their dtype); they must outlive the launch.
struct Fp32Tables {
  at::Tensor table;
  OptTensor pad_qkv;

  Fp32Tables(const at::Tensor& table_in, const OptTensor& pad_in)
      : table(table_in.to(at::kFloat).contiguous()),
        pad_qkv(pad_in ? OptTensor(pad_in->to(at::kFloat).contiguous()) : std::nullopt) {}

  void fill(vtk::WindowAttnParams& p) const {
    p.table = table.data_ptr<float>();
    p.pad_qkv = pad_qkv ? pad_qkv->data_ptr<float>() : nullptr;
  }
};

at::Tensor window_attention_fwd(const at::Tensor& qkv, const at::Tensor& table, const OptTensor& pad_qkv, int64_t heads,
                                int64_t window, int64_t table_window, int64_t shift, double scale, double mask_value,
                                bool pad_first) {
  vtk::WindowAttnParams p = make_params(qkv, table, pad_qkv, heads, window, table_window, shift, scale, mask_value, pad_first);
  DeviceGuard guard(qkv);
  check_shared_memory(p, false, qkv);
  const Fp32Tables tables(table, pad_qkv);
  tables.fill(p);
  at::Tensor out = at::empty({qkv.size(0), qkv.size(1), qkv.size(2), qkv.size(3) / 3}, qkv.options());
  p.out = out.data_ptr();
  map_strides(out, p.out_stride_b, p.out_stride_h, p.out_stride_w);
  check_launch(vtk::window_attention_fwd(p, current_stream(qkv)), "window_attention_fwd");
  return out;
}

std::vector<at::Tensor> window_attention_bwd(const at::Tensor& dout, const at::Tensor& qkv, const at::Tensor& table,
                                             const OptTensor& pad_qkv, int64_t heads, int64_t window, int64_t table_window,
                                             int64_t shift, double scale, double mask_value, bool pad_first) {
  vtk::WindowAttnParams p = make_params(qkv, table, pad_qkv, heads, window, table_window, shift, scale, mask_value, pad_first);
  check_operand(dout, "dout", qkv, 4);
  TORCH_CHECK(dout.size(0) == qkv.size(0) && dout.size(1) == qkv.size(1) && dout.size(2) == qkv.size(2) &&
                  dout.size(3) == qkv.size(3) / 3,
              "dout must have shape (B, H, W, C) of qkv's map, got ", dout.sizes());
  DeviceGuard guard(qkv);
  check_shared_memory(p, true, qkv);
  const Fp32Tables tables(table, pad_qkv);
  tables.fill(p);
  // One bias / padding partial per backward block: G consecutive windows of one (batch, head).
  p.window_group = vtk::window_attention_bwd_group(p.batch * p.heads, p.n_windows(), sm_count(qkv));
  const int64_t tokens = window * window, groups = p.window_groups(), slabs = qkv.size(0) * heads * groups;
  const auto f32 = qkv.options().dtype(at::kFloat);
  at::Tensor dqkv = at::empty(qkv.sizes(), qkv.options());
  at::Tensor bias_partial = at::empty({slabs, tokens, tokens}, f32);
  at::Tensor pad_partial = at::empty({pad_qkv ? slabs * 2 * p.head_dim : 0}, f32);
  p.dout = dout.data_ptr();
  map_strides(dout, p.out_stride_b, p.out_stride_h, p.out_stride_w);
  p.dqkv = dqkv.data_ptr();
  map_strides(dqkv, p.dqkv_stride_b, p.dqkv_stride_h, p.dqkv_stride_w);
  p.dbias_partial = bias_partial.data_ptr<float>();
  p.dpad_partial = pad_qkv ? pad_partial.data_ptr<float>() : nullptr;
  const cudaStream_t stream = current_stream(qkv);
  check_launch(vtk::window_attention_bwd(p, stream), "window_attention_bwd");

  // Deterministic reductions: fixed-shape sums over batch and window groups, then the fixed-order fold.
  const at::Tensor per_pair = bias_partial.view({qkv.size(0), heads, groups, tokens * tokens}).sum(at::IntArrayRef{0, 2}).contiguous();
  at::Tensor dtable = at::empty({table.size(0), heads}, f32);
  check_launch(vtk::window_attention_fold_bias_grad(per_pair.data_ptr<float>(), dtable.data_ptr<float>(), p.heads,
                                                    p.window, p.table_window, stream),
               "window_attention_fold_bias_grad");
  at::Tensor dpad = at::empty({0}, qkv.options());
  if (pad_qkv) {
    const at::Tensor dkv = pad_partial.view({qkv.size(0), heads, groups, 2, p.head_dim}).sum(at::IntArrayRef{0, 2}).transpose(0, 1);
    dpad = at::cat({at::zeros_like(dkv.narrow(0, 0, 1)), dkv}).reshape({-1}).to(pad_qkv->scalar_type());
  }
  return {dqkv, dtable.to(table.scalar_type()), dpad};
}

}  // namespace

void bind_window_attention(pybind11::module_& m) {
  m.def("window_attention_fwd", &window_attention_fwd, "Swin window attention forward: (B,H,W,3C) -> (B,H,W,C)",
        pybind11::arg("qkv"), pybind11::arg("table"), pybind11::arg("pad_qkv"), pybind11::arg("heads"),
        pybind11::arg("window"), pybind11::arg("table_window"), pybind11::arg("shift"), pybind11::arg("scale"),
        pybind11::arg("mask_value"), pybind11::arg("pad_first"));
  m.def("window_attention_bwd", &window_attention_bwd, "Swin window attention backward: returns [dqkv, dtable, dpad]",
        pybind11::arg("dout"), pybind11::arg("qkv"), pybind11::arg("table"), pybind11::arg("pad_qkv"),
        pybind11::arg("heads"), pybind11::arg("window"), pybind11::arg("table_window"), pybind11::arg("shift"),
        pybind11::arg("scale"), pybind11::arg("mask_value"), pybind11::arg("pad_first"));
  m.def("window_attention_shared_memory", &shared_memory,
        "(bytes of shared memory one forward / backward block needs, bytes a block may have on the device)",
        pybind11::arg("window"), pybind11::arg("head_dim"), pybind11::arg("backward"), pybind11::arg("device"));
}

}  // namespace vtk_torch
