// clip_loss building blocks for vtkernels/ops/clip_loss.py (same contract as the Triton module
// vtkernels/triton/clip_loss.py): validation, allocation, the strip loop of the backward.
#include "bindings/clip_loss.h"

#include <algorithm>

#include "clip_loss/clip_loss.h"
#include "cuda_context.h"
#include "torch_checks.h"

namespace vtk_torch {
namespace {

constexpr int64_t kStripBytes = int64_t(128) << 20;  // cap on the backward's dS strip (rows x W)...
constexpr int64_t kMinStrip = 512;                   // ... unless W would drop below this
constexpr int64_t kTargetBlocks = 1024;               // forward blocks to aim for (row x column groups)
constexpr int64_t kMaxRowGroups = 32;                 // the column partials are (row groups, n) fp32

// (groups, blocks per group): at most max_groups groups of equal size (the last may be smaller).
std::pair<int64_t, int64_t> even_groups(int64_t blocks, int64_t max_groups) {
  const int64_t per_group = (blocks + std::min(blocks, max_groups) - 1) / std::min(blocks, max_groups);
  return {(blocks + per_group - 1) / per_group, per_group};
}

void check_features(const at::Tensor& t, const char* name, const at::Tensor& like) {
  check_operand(t, name, like, 2);
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, name,
              ": the CUDA clip_loss tiles take float16/bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.size(1) == like.size(1), name, " must have ", like.size(1), " features per row, got ", t.sizes());
}

void check_f32(const at::Tensor& t, const char* name, int64_t numel, const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device() && t.scalar_type() == at::kFloat && t.numel() == numel && t.is_contiguous(),
              name, " must be a contiguous float32 tensor of ", numel, " elements on ", like.device());
}

std::vector<at::Tensor> normalize_rows(const at::Tensor& x) {
  check_operand(x, "x", x, 2);
  DeviceGuard guard(x);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor rnorm = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  vtk::ClipNormalizeParams p{x.data_ptr(), y.data_ptr(), rnorm.data_ptr<float>(), x.size(0),
                             static_cast<int>(x.size(1)), x.stride(0), y.stride(0), kernel_dtype(x, "x")};
  check_launch(vtk::clip_normalize_rows(p, current_stream(x)), "clip_normalize_rows");
  return {y, rnorm};
}

std::pair<at::Tensor, at::Tensor> merge(const at::Tensor& part, const at::Tensor& part_max, int64_t n, bool with_max,
                                        cudaStream_t stream) {
  at::Tensor lse = at::empty({n}, part.options());
  at::Tensor mx = at::empty({with_max ? n : 0}, part.options());
  vtk::ClipMergeParams p{part.data_ptr<float>(), with_max ? part_max.data_ptr<float>() : nullptr, lse.data_ptr<float>(),
                         with_max ? mx.data_ptr<float>() : nullptr, static_cast<int>(part.size(0)), n};
  check_launch(vtk::clip_merge_lse(p, stream), "clip_merge_lse");
  return {lse, mx};
}

std::vector<at::Tensor> logit_stats(const at::Tensor& image, const at::Tensor& text, const at::Tensor& scale,
                                    int64_t diag_offset, bool with_max) {
  check_features(image, "image", image);
  check_features(text, "text", image);
  check_f32(scale, "scale", 1, image);
  DeviceGuard guard(image);
  const int64_t n_rows = image.size(0), n_cols = text.size(0);
  const auto f32 = image.options().dtype(at::kFloat);
  at::Tensor diag = at::zeros({n_rows}, f32);
  if (n_rows == 0 || n_cols == 0) {
    at::Tensor rows = at::full({n_rows}, -INFINITY, f32), cols = at::full({n_cols}, -INFINITY, f32);
    return {rows, cols, diag, with_max ? rows.clone() : at::empty({0}, f32), with_max ? cols.clone() : at::empty({0}, f32)};
  }
  const int64_t row_blocks = (n_rows + vtk::kClipTileM - 1) / vtk::kClipTileM;
  const int64_t col_blocks = (n_cols + vtk::kClipTileN - 1) / vtk::kClipTileN;
  // Same grouping as the Triton backend's program_groups (vtkernels/triton/clip_loss.py).
  const auto [row_groups, row_blocks_per_group] = even_groups(row_blocks, kMaxRowGroups);
  const auto [groups, per_group] = even_groups(col_blocks, (kTargetBlocks + row_groups - 1) / row_groups);
  at::Tensor row_part = at::empty({groups, n_rows}, f32), col_part = at::empty({row_groups, n_cols}, f32);
  at::Tensor row_part_max = at::empty({with_max ? groups : 0, n_rows}, f32);
  at::Tensor col_part_max = at::empty({with_max ? row_groups : 0, n_cols}, f32);

  vtk::ClipStatsParams p{};
  p.image = image.data_ptr();
  p.text = text.data_ptr();
  p.scale = scale.data_ptr<float>();
  p.row_part = row_part.data_ptr<float>();
  p.row_part_max = with_max ? row_part_max.data_ptr<float>() : nullptr;
  p.col_part = col_part.data_ptr<float>();
  p.col_part_max = with_max ? col_part_max.data_ptr<float>() : nullptr;
  p.diag = diag.data_ptr<float>();
  p.n_rows = n_rows;
  p.n_cols = n_cols;
  p.d = static_cast<int>(image.size(1));
  p.image_stride = image.stride(0);
  p.text_stride = text.stride(0);
  p.diag_offset = diag_offset;
  p.row_groups = static_cast<int>(row_groups);
  p.row_blocks_per_group = static_cast<int>(row_blocks_per_group);
  p.groups = static_cast<int>(groups);
  p.blocks_per_group = static_cast<int>(per_group);
  p.dtype = kernel_dtype(image, "image");
  const cudaStream_t stream = current_stream(image);
  check_launch(vtk::clip_stats(p, stream), "clip_stats");
  auto [row_lse, row_max] = merge(row_part, row_part_max, n_rows, with_max, stream);
  auto [col_lse, col_max] = merge(col_part, col_part_max, n_cols, with_max, stream);
  return {row_lse, col_lse, diag, row_max, col_max};
}

// K splits for a GEMM of `tiles` output tiles over k: enough blocks to fill the GPU twice over
// (dT = dS_strip^T @ I has W x d outputs and K = all rows: 96 tiles at W = 512, d = 768 against
// 132 SMs), each split keeping at least 4 K steps. 1 from 2 x SMs tiles up.
int64_t k_splits(int64_t tiles, int64_t k, int sms) {
  const int64_t wanted = (2 * int64_t(std::max(sms, 1)) + tiles - 1) / tiles;  // tiles >= 1
  const int64_t most = std::max<int64_t>(1, k / (4 * vtk::kClipTileK));
  return std::min({wanted, most, int64_t(65535)});
}

// C (+)= alpha * A @ B (C fp32 with unit column stride). Without accumulate, a GEMM with few
// output tiles runs split-K into fp32 partials summed into C (fixed order: deterministic).
void strip_gemm(const at::Tensor& a, int64_t a_stride_m, int64_t a_stride_k, const at::Tensor& b, at::Tensor& c,
                int64_t m, int64_t n, int64_t k, float alpha, bool accumulate, cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  const int64_t tiles = (m + vtk::kClipTileM - 1) / vtk::kClipTileM * ((n + vtk::kClipTileN - 1) / vtk::kClipTileN);
  const int64_t splits = accumulate ? 1 : k_splits(tiles, k, sm_count(a));
  // Split length a whole number of K steps; the split count then follows from it.
  const int64_t step = vtk::kClipTileK, per_split = ((k + splits - 1) / splits + step - 1) / step * step;
  const bool split = splits > 1 && per_split < k;
  at::Tensor partials = split ? at::empty({(k + per_split - 1) / per_split, m, n}, c.options()) : c;
  vtk::ClipGemmParams p{a.data_ptr(), b.data_ptr(), partials.data_ptr<float>(), m, n, k, a_stride_m, a_stride_k,
                        b.stride(0), 1, split ? n : c.stride(0), alpha, accumulate, kernel_dtype(a, "strip"),
                        split ? per_split : 0, split ? m * n : 0};
  check_launch(vtk::clip_strip_gemm(p, stream), "clip_strip_gemm");
  if (split) at::sum_out(c, partials, at::IntArrayRef{0});
}

at::Tensor finish_grad(const at::Tensor& acc, const at::Tensor& x, const at::Tensor& coef, bool normalize) {
  check_operand(x, "x", x, 2);
  check_f32(acc, "acc", x.numel(), x);
  check_f32(coef, "coef", 1, x);
  DeviceGuard guard(x);
  at::Tensor dx = at::empty(x.sizes(), x.options());
  vtk::ClipFinishParams p{acc.data_ptr<float>(), x.data_ptr(), coef.data_ptr<float>(), dx.data_ptr(), x.size(0),
                          static_cast<int>(x.size(1)), x.stride(0), dx.stride(0), normalize, kernel_dtype(x, "x")};
  check_launch(vtk::clip_finish_grad(p, current_stream(x)), "clip_finish_grad");
  return dx;
}

// With text_raw and coef (one process), each strip's rows of dT are complete: they are finished
// into the gradient of text_raw right away, so no (cols, d) fp32 accumulator is needed.
std::vector<at::Tensor> grad_features(const at::Tensor& image, const at::Tensor& text, const at::Tensor& scale,
                                      const at::Tensor& row_lse, const at::Tensor& col_lse, int64_t diag_offset,
                                      const std::optional<at::Tensor>& text_raw, const std::optional<at::Tensor>& coef,
                                      bool normalize) {
  check_features(image, "image", image);
  check_features(text, "text", image);
  const int64_t n_rows = image.size(0), n_cols = text.size(0), d = image.size(1);
  check_f32(scale, "scale", 1, image);
  check_f32(row_lse, "row_lse", n_rows, image);
  check_f32(col_lse, "col_lse", n_cols, image);
  DeviceGuard guard(image);
  const auto f32 = image.options().dtype(at::kFloat);
  const bool finish_text = text_raw.has_value();
  if (finish_text) {
    check_operand(*text_raw, "text_raw", text, 2);  // same device and dtype as the features
    TORCH_CHECK(text_raw->sizes() == text.sizes(), "text_raw must have shape ", text.sizes(), ", got ", text_raw->sizes());
    TORCH_CHECK(coef.has_value(), "coef is required with text_raw");
  }
  at::Tensor d_image = at::zeros({n_rows, d}, f32);
  at::Tensor d_text = finish_text ? at::zeros(text_raw->sizes(), text_raw->options()) : at::zeros({n_cols, d}, f32);
  at::Tensor dt_sum = at::zeros({1}, f32);
  if (n_rows == 0 || n_cols == 0) return {d_image, d_text, dt_sum};
  const int64_t tile_n = vtk::kClipTileN;
  int64_t width = std::max<int64_t>(kMinStrip, kStripBytes / (n_rows * image.element_size())) / tile_n * tile_n;
  width = std::min(width, (n_cols + tile_n - 1) / tile_n * tile_n);
  width = std::min(width, int64_t(65535) * tile_n);  // the dS kernel's column blocks are gridDim.y
  // fp16 strips hold 1024 * dS (|dS| <= 1): small probabilities stay normal numbers.
  const float ds_scale = image.scalar_type() == at::kHalf ? 1024.f : 1.f;
  at::Tensor strip = at::empty({n_rows, width}, image.options());
  at::Tensor text_acc = at::empty({finish_text ? width : 0, d}, f32);
  const int64_t row_blocks = (n_rows + vtk::kClipTileM - 1) / vtk::kClipTileM;
  const cudaStream_t stream = current_stream(image);
  for (int64_t start = 0; start < n_cols; start += width) {
    const int64_t end = std::min(start + width, n_cols);
    at::Tensor dt_part = at::empty({row_blocks * ((end - start + tile_n - 1) / tile_n)}, f32);
    vtk::ClipDlogitsParams p{};
    p.image = image.data_ptr();
    p.text = text.data_ptr();
    p.scale = scale.data_ptr<float>();
    p.row_lse = row_lse.data_ptr<float>();
    p.col_lse = col_lse.data_ptr<float>();
    p.ds = strip.data_ptr();
    p.dt_part = dt_part.data_ptr<float>();
    p.n_rows = n_rows;
    p.n_cols = n_cols;
    p.d = static_cast<int>(d);
    p.image_stride = image.stride(0);
    p.text_stride = text.stride(0);
    p.ds_stride = strip.stride(0);
    p.diag_offset = diag_offset;
    p.col_start = start;
    p.strip_end = end;
    p.ds_scale = ds_scale;
    p.dtype = kernel_dtype(image, "image");
    check_launch(vtk::clip_dlogits(p, stream), "clip_dlogits");
    dt_sum.add_(dt_part.sum());
    // dI += dS_strip @ T_strip: (rows, W) @ (W, d)
    at::Tensor text_strip = text.narrow(0, start, end - start);
    strip_gemm(strip, strip.stride(0), 1, text_strip, d_image, n_rows, d, end - start, 1.f / ds_scale, start > 0,
               stream);
    // dT[strip] = dS_strip^T @ I: (W, rows) @ (rows, d), the strip read transposed
    at::Tensor d_text_strip = finish_text ? text_acc.narrow(0, 0, end - start) : d_text.narrow(0, start, end - start);
    strip_gemm(strip, 1, strip.stride(0), image, d_text_strip, end - start, d, n_rows, 1.f / ds_scale, false, stream);
    if (finish_text) {
      d_text.narrow(0, start, end - start).copy_(finish_grad(d_text_strip, text_raw->narrow(0, start, end - start), *coef,
                                                             normalize));
    }
  }
  return {d_image, d_text, dt_sum};
}

}  // namespace

void bind_clip_loss(pybind11::module_& m) {
  using pybind11::arg;
  m.def("clip_normalize_rows", &normalize_rows, "rows / max(||row||, eps): returns [y, rnorm]", arg("x"));
  m.def("clip_logit_stats", &logit_stats,
        "forward sweep over scale * image @ text^T: returns [row_lse, col_lse, diag, row_max, col_max]", arg("image"),
        arg("text"), arg("scale"), arg("diag_offset"), arg("with_max"));
  m.def("clip_grad_features", &grad_features,
        "backward sweep: returns [d_image_acc, d_text_acc or the finished text gradient, sum(dS * S)]", arg("image"),
        arg("text"), arg("scale"), arg("row_lse"), arg("col_lse"), arg("diag_offset"), arg("text_raw") = pybind11::none(),
        arg("coef") = pybind11::none(), arg("normalize") = false);
  m.def("clip_finish_grad", &finish_grad, "coef * acc -> gradient of the raw features", arg("acc"), arg("x"),
        arg("coef"), arg("normalize"));
}

}  // namespace vtk_torch
