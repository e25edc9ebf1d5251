"""Plain-PyTorch specifications of every op: written for clarity, trusted by the tests."""
