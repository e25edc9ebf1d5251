// CUDA's function and variable qualifiers for the CPU emulator: plain C++ (what host_defines.h is
// to the real headers). `__shared__` is rewritten by build.py, not here.
#pragma once

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
