"""Functional ops: validation, backend dispatch, autograd and torch.library registration."""
