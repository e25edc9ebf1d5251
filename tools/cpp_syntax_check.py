"""Syntax-check the torch-facing C++ (csrc/bindings.cpp, csrc/bindings/*.cpp) with g++ against
the installed (CPU) torch headers. cuda_context.cpp is left out: it needs c10/cuda headers that
CPU builds of torch lack, which is why it is kept so small."""

import glob
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

from torch.utils.cpp_extension import include_paths

FLAGS = ["-std=c++20", "-fsyntax-only", "-DTORCH_EXTENSION_NAME=_C", "-Icsrc", "-I/usr/local/cuda/include",
         f"-I{sysconfig.get_paths()['include']}", *(f"-I{p}" for p in include_paths())]


def check(path: str) -> tuple[str, int, str]:
    done = subprocess.run(["g++", *FLAGS, path], capture_output=True, text=True)
    return path, done.returncode, done.stderr


def main() -> int:
    files = ["csrc/bindings.cpp", *sorted(glob.glob("csrc/bindings/*.cpp"))]
    failed = 0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for path, code, err in pool.map(check, files):
            print(f"{'ok  ' if code == 0 else 'FAIL'} {path}")
            if code:
                failed += 1
                print(err[-4000:])
    print(f"C++ syntax check: {len(files) - failed} ok, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
