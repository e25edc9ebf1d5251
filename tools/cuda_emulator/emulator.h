// Runs csrc/'s CUDA kernels on the CPU, so that the CUDA backend is checked on a machine without
// a GPU (as TRITON_INTERPRET=1 checks the Triton one). build.py rewrites each launch
// `kernel<<<grid, block, smem, stream>>>(args)` into vtk_emu::launch(...) and each `__shared__`
// variable into a static one, then compiles the kernels with this header as their CUDA.
//
// Execution model: the blocks of a grid run one after another; the threads of a block are
// fibers (ucontext) on one OS thread, each running until it waits at a barrier:
//   - __syncthreads: released when every live thread of the block waits there;
//   - warp collectives (__syncwarp, __shfl_xor_sync, mma.sync): released when every live lane
//     of the warp waits at one.
// A barrier that can never be released (threads of a block, or lanes of a warp, waiting at
// different barriers: divergent code on a GPU) fails the launch, as does __trap.
// Between block barriers the warps run one after another, each as far as it gets, its lanes in
// order between warp collectives; forward (warp 0, lane 0 first) or reverse (env
// VTK_EMU_SCHEDULE=reverse): a race on shared memory gives results that depend on the order.
// Shared memory starts each block filled with 0xff bytes (NaN in every float type), so reading
// what the block never wrote shows.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <set>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace vtk_emu {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 256 << 10;
constexpr size_t kMaxDynamicShared = 232448;  // H100 / H200 opt-in limit
constexpr size_t kLaneScratchBytes = 32;      // per lane: what a warp collective exchanges

enum class State { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

struct Thread {
  ucontext_t context;
  uint3 index;
  int warp = 0, lane = 0;
  State state = State::kRunnable;
};

struct Block {
  dim3 grid_dim, block_dim;
  uint3 block_index;
  std::vector<Thread> threads;
  Thread* current = nullptr;
  ucontext_t scheduler;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> warp_scratch;  // kWarpSize * kLaneScratchBytes per warp
  std::vector<unsigned char> dynamic_shared;
  std::set<const void*> poisoned;           // static shared variables filled this block
  const char* failure = nullptr;
};

inline thread_local Block* block = nullptr;
inline thread_local std::vector<std::vector<char>> stacks;

inline Thread& self() { return *block->current; }

// Back to the scheduler until this thread is released from `wait`.
inline void wait_at(State wait) {
  Thread& t = self();
  t.state = wait;
  swapcontext(&t.context, &block->scheduler);
}

[[noreturn]] inline void fail(const char* why) {
  block->failure = why;
  Thread& t = self();
  t.state = State::kDone;
  swapcontext(&t.context, &block->scheduler);
  std::abort();  // a failed thread is never resumed
}

inline void thread_entry() {
  (*block->body)();
  self().state = State::kDone;  // uc_link returns to the scheduler
}

// Lanes of `warp` that have not exited.
inline bool warp_ready(const Block& b, int warp) {
  bool any = false;
  for (const Thread& t : b.threads) {
    if (t.warp != warp || t.state == State::kDone) continue;
    if (t.state != State::kWarpBarrier) return false;
    any = true;
  }
  return any;
}

// Runs every thread of the current block to completion; false (with block->failure) on failure.
// Warps run one at a time, each as far as it can (to a block barrier or its end), so warps are
// as far apart as a GPU allows: a shared-memory access that a missing __syncthreads should
// order runs early for the warps that go first.
inline bool run_block(bool reverse) {
  Block& b = *block;
  const int n = static_cast<int>(b.threads.size());
  const int warps = (n + kWarpSize - 1) / kWarpSize;
  while (true) {
    for (int wi = 0; wi < warps; ++wi) {
      const int w = reverse ? warps - 1 - wi : wi;
      const int first = w * kWarpSize, count = std::min(kWarpSize, n - first);
      bool progressed = true;
      while (progressed) {
        progressed = false;
        for (int li = 0; li < count; ++li) {
          Thread& t = b.threads[first + (reverse ? count - 1 - li : li)];
          if (t.state != State::kRunnable) continue;
          b.current = &t;
          swapcontext(&b.scheduler, &t.context);
          if (b.failure) return false;
          progressed = true;
        }
        if (warp_ready(b, w)) {
          for (int i = first; i < first + count; ++i)
            if (b.threads[i].state == State::kWarpBarrier) b.threads[i].state = State::kRunnable;
          progressed = true;
        }
      }
    }
    bool all_done = true, all_at_block_barrier = true;
    for (const Thread& t : b.threads) {
      if (t.state != State::kDone) all_done = false;
      if (t.state != State::kDone && t.state != State::kBlockBarrier) all_at_block_barrier = false;
    }
    if (all_done) return true;
    if (!all_at_block_barrier) {
      b.failure = "barrier deadlock: threads of a block (or lanes of a warp) wait at different barriers";
      return false;
    }
    for (Thread& t : b.threads)
      if (t.state == State::kBlockBarrier) t.state = State::kRunnable;
  }
}

// The emulated `kernel<<<grid, threads, dynamic_shared, stream>>>(args)`: `body` is the kernel
// call, run once per thread.
template <typename Body>
void launch(Body body, dim3 grid, dim3 threads, size_t dynamic_shared = 0, cudaStream_t = nullptr) {
  const int n = static_cast<int>(threads.x * threads.y * threads.z);
  if (n <= 0 || n > 1024 || dynamic_shared > kMaxDynamicShared || grid.y > 65535 || grid.z > 65535) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) {  // (an empty grid is an error on a GPU too)
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (std::getenv("VTK_EMU_NO_LAUNCH")) return;  // host-time measurement (tools/host_time.py --backend cuda)
  const char* schedule = std::getenv("VTK_EMU_SCHEDULE");
  const bool reverse = schedule && std::strcmp(schedule, "reverse") == 0;
  const std::function<void()> call = body;
  if (stacks.size() < size_t(n)) stacks.resize(n, std::vector<char>(kStackBytes));

  Block b;
  b.grid_dim = grid;
  b.block_dim = threads;
  b.body = &call;
  b.threads.resize(n);
  b.warp_scratch.resize((n + kWarpSize - 1) / kWarpSize * kWarpSize * kLaneScratchBytes);
  block = &b;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        b.block_index = {bx, by, bz};
        b.dynamic_shared.assign(dynamic_shared, 0xff);
        b.poisoned.clear();
        for (int i = 0; i < n; ++i) {
          Thread& t = b.threads[i];
          t = Thread{};
          t.index = {unsigned(i % threads.x), unsigned(i / threads.x % threads.y),
                     unsigned(i / (threads.x * threads.y))};
          t.warp = i / kWarpSize;
          t.lane = i % kWarpSize;
          getcontext(&t.context);
          t.context.uc_stack.ss_sp = stacks[i].data();
          t.context.uc_stack.ss_size = kStackBytes;
          t.context.uc_link = &b.scheduler;
          makecontext(&t.context, thread_entry, 0);
        }
        if (!run_block(reverse)) {
          std::fprintf(stderr, "vtk_emu: block (%u, %u, %u) of grid (%u, %u, %u) failed: %s\n", bx, by, bz, grid.x,
                       grid.y, grid.z, b.failure);
          last_error = cudaErrorLaunchFailure;
          block = nullptr;
          return;
        }
      }
  block = nullptr;
}

// First use of a static `__shared__` variable in a block: fill it with 0xff.
inline void poison_shared(void* ptr, size_t bytes) {
  if (block->poisoned.insert(ptr).second) std::memset(ptr, 0xff, bytes);
}

inline void* dynamic_shared() { return block->dynamic_shared.data(); }

inline void syncthreads() { wait_at(State::kBlockBarrier); }
inline void syncwarp() { wait_at(State::kWarpBarrier); }

inline unsigned char* lane_scratch(int lane) {
  return block->warp_scratch.data() + (size_t(self().warp) * kWarpSize + lane) * kLaneScratchBytes;
}

template <typename T>
T shfl_xor(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= kLaneScratchBytes, "shuffle of a type wider than the lane scratch");
  if (mask != 0xffffffffu) fail("__shfl_xor_sync with a partial mask is not emulated");
  const int lane = self().lane;
  std::memcpy(lane_scratch(lane), &value, sizeof(T));
  syncwarp();
  T out;
  std::memcpy(&out, lane_scratch(lane ^ lane_mask), sizeof(T));
  syncwarp();  // nobody overwrites a slot before every lane has read
  return out;
}

inline float half_bits_to_float(uint16_t bits, bool bf16) {
  return bf16 ? __bfloat162float(__nv_bfloat16{bits}) : __half2float(__half{bits});
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: every lane deposits its fragments, then
// computes its own four accumulators (fragment ownership: csrc/common/mma.cuh).
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  const int lane = self().lane;
  uint32_t mine[6] = {a[0], a[1], a[2], a[3], b0, b1};
  std::memcpy(lane_scratch(lane), mine, sizeof(mine));
  syncwarp();
  auto element = [&](int owner, int reg, int k) {
    uint32_t word;
    std::memcpy(&word, lane_scratch(owner) + 4 * reg, 4);
    return half_bits_to_float(uint16_t(k % 2 ? word >> 16 : word & 0xffffu), bf16);
  };
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + i % 2;
    float sum = 0.f;
    for (int k = 0; k < 16; ++k) {
      // A[row][k]: lane 4 (row % 8) + (k % 8) / 2, register (row >= 8) + 2 (k >= 8);
      // B[k][col]: lane 4 col + (k % 8) / 2, register 4 + (k >= 8).
      const float av = element(4 * (row % 8) + (k % 8) / 2, (row >= 8) + 2 * (k >= 8), k);
      const float bv = element(4 * col + (k % 8) / 2, 4 + (k >= 8), k);
      sum += av * bv;
    }
    c[i] += sum;
  }
  syncwarp();
}

template <typename A, typename B>
auto min(A a, B b) -> std::common_type_t<A, B> {
  return a < b ? a : b;
}
template <typename A, typename B>
auto max(A a, B b) -> std::common_type_t<A, B> {
  return a < b ? b : a;
}

}  // namespace vtk_emu

#define threadIdx (::vtk_emu::self().index)
#define blockIdx (::vtk_emu::block->block_index)
#define blockDim (::vtk_emu::block->block_dim)
#define gridDim (::vtk_emu::block->grid_dim)

inline void __syncthreads() { vtk_emu::syncthreads(); }
inline void __syncwarp(unsigned = 0xffffffffu) { vtk_emu::syncwarp(); }
template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int = 32) {
  return vtk_emu::shfl_xor(mask, value, lane_mask);
}
[[noreturn]] inline void __trap() { vtk_emu::fail("__trap()"); }

using std::isfinite;
using std::isinf;
using std::isnan;
using vtk_emu::max;
using vtk_emu::min;
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __int_as_float(int v) { return std::bit_cast<float>(v); }
inline int __float_as_int(float v) { return std::bit_cast<int>(v); }
