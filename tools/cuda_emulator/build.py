"""Builds csrc/ (kernels and bindings) for the CPU emulator: the extension's functions, taking CPU
tensors, with every kernel run by emulator.h.

csrc/ is copied to the build folder with two source rewrites g++ needs (CUDA syntax, no
semantics change):
  - `kernel<<<grid, block[, smem[, stream]]>>>(args);` becomes
    `::vtk_emu::launch([&] { kernel(args); }, grid, block[, smem[, stream]]);`
  - `__shared__ decl;` becomes `static decl;` plus a call that fills it with 0xff at its first
    use in each block, and `extern __shared__ T name[];` a pointer to the launch's dynamic
    shared memory.
Each .cu is then compiled as C++ (VTK_CUDA_EMULATOR and __CUDACC__ defined, emulator.h and the
include/ stand-ins for the CUDA headers first), the bindings against CPU torch, with
cuda_context.cpp replaced by this folder's.

    module = build.load()        # cached in build/cuda_emulator; a rebuild only when csrc/ changed
    module, undo = build.install()  # vtkernels' CUDA backend is now this module, on CPU tensors

VTK_EMU_NO_LAUNCH=1 in the environment makes every launch a no-op after its configuration checks
(tools/host_time.py --backend cuda: the host time of the CUDA backend's calls).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")
BUILD = os.path.join(ROOT, "build", "cuda_emulator")
NAME = "vtkernels_cuda_emulator"


def _matching(text: str, start: int, open_: str, close: str, step: int) -> int:
    """Index of the bracket matching text[start] (scanning forward with step 1, back with -1)."""
    depth = 0
    i = start
    while 0 <= i < len(text):
        if text[i] == open_:
            depth += 1
        elif text[i] == close:
            depth -= 1
            if depth == 0:
                return i
        i += step
    raise ValueError(f"unbalanced {open_}{close} at {start}")


def rewrite_launches(text: str) -> str:
    """`kernel<targs><<<config>>>(args);` -> `::vtk_emu::launch([&] { kernel<targs>(args); }, config);`"""
    while (at := text.find("<<<")) >= 0:
        begin = at
        if text[begin - 1] == ">":  # template arguments: back to their '<'
            begin = _matching(text, begin - 1, ">", "<", -1)
        while begin > 0 and (text[begin - 1].isalnum() or text[begin - 1] in "_:"):
            begin -= 1
        config_end = text.index(">>>", at)
        args_begin = config_end + 3
        if text[args_begin] != "(":
            raise ValueError(f"launch without arguments: {text[begin:args_begin + 20]!r}")
        args_end = _matching(text, args_begin, "(", ")", 1)
        kernel, config, args = text[begin:at], text[at + 3:config_end], text[args_begin:args_end + 1]
        text = f"{text[:begin]}::vtk_emu::launch([&] {{ {kernel}{args}; }}, {config}){text[args_end + 1:]}"
    return text


def _split_top_level(decl: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in decl:
        depth += ch in "[(<" and 1 or 0
        depth -= ch in "])>" and 1 or 0
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def _declared_names(decl: str) -> list[str]:
    """Variable names of `T a[4], b[4]` / `T<U> name`."""
    names = []
    for i, part in enumerate(_split_top_level(decl)):
        head = part.split("[")[0].strip()
        names.append(re.findall(r"\w+", head)[-1] if i == 0 else head)
    return names


def rewrite_shared(text: str) -> str:
    def extern(m: re.Match) -> str:
        return f"{m[1]}{m[2]}* {m[3]} = reinterpret_cast<{m[2]}*>(::vtk_emu::dynamic_shared());"

    text = re.sub(r"^(\s*)extern\s+__shared__\s+(?:alignas\(\d+\)\s+|__align__\(\d+\)\s+)?([\w:]+)\s+(\w+)\[\];",
                  extern, text, flags=re.M)

    def static(m: re.Match) -> str:
        poison = " ".join(f"::vtk_emu::poison_shared(&{n}, sizeof({n}));" for n in _declared_names(m[3]))
        return f"{m[1]}{m[2]}static {m[3]}; {poison}"

    # (alignment first: g++ takes `alignas(16) static T x` but not `static alignas(16) T x`)
    return re.sub(r"^(\s*)__shared__\s+((?:alignas\(\d+\)\s+|__align__\(\d+\)\s+)?)([^;]+);", static, text,
                  flags=re.M)


def _rewrite_tree(dest: str) -> None:
    for path in glob.glob(os.path.join(CSRC, "**", "*"), recursive=True):
        if os.path.isdir(path):
            continue
        rel = os.path.relpath(path, CSRC)
        text = open(path).read()
        if path.endswith((".cu", ".cuh")):
            text = rewrite_shared(rewrite_launches(text))
        if path.endswith(".cu"):  # compiled as C++: the emulator stands in for CUDA
            text = '#define __CUDACC__ 1\n#include "emulator.h"\n' + text
            rel = rel[:-3] + "_emu.cpp"
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        old = open(out).read() if os.path.exists(out) else None
        if old != text:  # untouched files keep their time stamps: ninja rebuilds only what changed
            with open(out, "w") as f:
                f.write(text)


def load(verbose: bool = False):
    """The emulated extension module (built or rebuilt as needed)."""
    from torch.utils.cpp_extension import load as load_extension

    source = os.path.join(BUILD, "csrc")
    _rewrite_tree(source)
    shutil.copyfile(os.path.join(HERE, "cuda_context.cpp"), os.path.join(source, "cuda_context_emu.cpp"))
    sources = [os.path.join(source, "bindings.cpp"), os.path.join(source, "cuda_context_emu.cpp")]
    sources += sorted(glob.glob(os.path.join(source, "bindings", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(source, "*", "*_emu.cpp")))
    return load_extension(
        NAME, sources, build_directory=BUILD, verbose=verbose,
        extra_include_paths=[os.path.join(HERE, "include"), HERE, source],
        extra_cflags=["-O1", "-std=c++20", "-DVTK_CUDA_EMULATOR", "-Wno-unknown-pragmas"],
    )


def install():
    """Makes the emulated module vtkernels' extension and lets the CUDA backend take CPU tensors;
    returns a function that undoes both."""
    from vtkernels import backend

    module = load()
    saved = sys.modules.get("vtkernels._C")
    sys.modules["vtkernels._C"] = module
    backend._import_failure.cache_clear()
    original = backend.backend_unavailable

    def unavailable(name, device_type):
        if name == "cuda" and device_type == "cpu":
            return backend.extension_failure()
        return original(name, device_type)

    backend.backend_unavailable = unavailable

    def undo():
        backend.backend_unavailable = original
        if saved is None:
            sys.modules.pop("vtkernels._C")
        else:
            sys.modules["vtkernels._C"] = saved
        backend._import_failure.cache_clear()

    return module, undo


if __name__ == "__main__":
    module = load(verbose="-v" in sys.argv)
    print(f"built {module.__file__}: {len([n for n in dir(module) if not n.startswith('_')])} functions")
