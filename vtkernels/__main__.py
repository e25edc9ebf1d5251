"""Command line: python -m vtkernels {info, selfcheck, bench, main}.

info       GPU, versions, which backends are available and, for each missing one, why
selfcheck  every op's kernels vs the reference: Triton (the interpreter on the CPU), and CUDA on a GPU
           [-v] [--backend triton,cuda]
bench      the benchmark suite (benchmarks/run.py; needs a GPU and the repository checkout)
main       bench on a GPU machine, selfcheck elsewhere
"""

from __future__ import annotations

import os
import platform
import runpy
import sys


def info() -> int:
    import torch

    from vtkernels import __version__
    from vtkernels.backend import describe_backends

    print(f"vtkernels {__version__}")
    print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"GPU: {props.name}, sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
              f"{props.total_memory / 2**30:.0f} GiB")
    else:
        print("GPU: none (kernels can still be checked on the CPU: TRITON_INTERPRET=1 python -m vtkernels selfcheck)")
    print("backends:")
    for name, reason in describe_backends():
        print(f"  {name:10} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


def bench(argv) -> int:
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "run.py")
    if not os.path.exists(script):
        print("the benchmark suite lives in the repository checkout (benchmarks/run.py); it was not found")
        return 2
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv else "info"
    if command == "info":
        return info()
    if command == "selfcheck":
        from vtkernels import selfcheck

        backends = None
        if "--backend" in argv:
            if argv.index("--backend") + 1 == len(argv):
                print("selfcheck --backend takes a comma-separated list, e.g. --backend triton,cuda")
                return 2
            backends = argv[argv.index("--backend") + 1].split(",")
        return selfcheck.run(verbose="-v" in argv, backends=backends)
    if command == "bench":
        return bench(argv)
    if command == "main":
        import torch

        info()
        if torch.cuda.is_available():
            return bench(argv)
        from vtkernels import selfcheck

        return selfcheck.run(verbose=False)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
