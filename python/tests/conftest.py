"""One torch thread in the tests: PyTorch's OpenMP threads spin after each op and would fight
attnkit's rayon pool for the 2 cores (the suite took 2x longer with both at 2 threads)."""

try:
    import torch
except ImportError:
    torch = None
else:
    torch.set_num_threads(1)
