"""Lazy access to the compiled extension, so that ``import vtkernels`` never fails without it."""

import importlib

from vtkernels.backend import BackendError, extension_failure


def load_extension():
    reason = extension_failure()
    if reason:
        raise BackendError(reason)
    return importlib.import_module("vtkernels._C")
