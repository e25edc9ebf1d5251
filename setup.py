"""Builds vtkernels; the CUDA extension vtkernels._C only where it can be compiled.

The extension is built when torch has CUDA and nvcc is found, or when FORCE_CUDA=1 (with
SKIP_CUDA=1 it never is). Knobs: MAX_JOBS (parallel compile jobs), VTKERNELS_CUDA_ARCHS
(default "80;90").
"""

import glob
import os
import shutil

from setuptools import find_packages, setup


# torch guesses CUDA_HOME from `which nvcc` (two folders up) when it is unset, which is wrong where
# nvcc is a wrapper outside the toolkit (e.g. /usr/local/bin/nvcc): the toolkit's usual place
# wins. Set before torch.utils.cpp_extension is imported, which reads it once.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/include/cuda_runtime.h"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _cuda_build_reason():
    """(build?, why) for the extension."""
    if os.environ.get("SKIP_CUDA") == "1":
        return False, "SKIP_CUDA=1"
    if os.environ.get("FORCE_CUDA") == "1":
        return True, "FORCE_CUDA=1"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return False, "torch is not installed at build time"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} has no CUDA"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if not (nvcc and os.path.exists(nvcc)) and shutil.which("nvcc") is None:
        return False, "nvcc not found"
    return True, f"torch {torch.__version__} with CUDA {torch.version.cuda}"


def _extensions():
    build, why = _cuda_build_reason()
    if not build:
        print(f"vtkernels: installing pure Python (Triton + reference backends only): {why}")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    print(f"vtkernels: building the CUDA extension vtkernels._C ({why})")
    archs = os.environ.get("VTKERNELS_CUDA_ARCHS", "80;90").split(";")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a]
    sources = ["csrc/bindings.cpp", "csrc/cuda_context.cpp"] + sorted(glob.glob("csrc/bindings/*.cpp"))
    sources += sorted(glob.glob("csrc/*/*.cu"))
    here = os.path.dirname(os.path.abspath(__file__))
    ext = CUDAExtension(
        "vtkernels._C",
        sources,
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++20"],
            "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo", *gencode],
        },
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="vtkernels",
    version="0.1.0",
    description="Fused CUDA and Triton kernels for vision transformers",
    packages=find_packages(include=["vtkernels", "vtkernels.*"]),
    package_data={"vtkernels": ["preferences.json"]},
    python_requires=">=3.10",
    install_requires=["torch", "numpy"],
    extras_require={"triton": ["triton"], "test": ["pytest", "pytest-benchmark", "scipy", "transformers"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
