"""Hot ops: one entry function per op, dispatching to a PyTorch reference or Triton."""

from kernels.hstu_attention import hstu_attention, resolve_backend
from kernels.reference import NUM_TIME_BUCKETS, hstu_attention_reference, time_bucket

__all__ = [
    "NUM_TIME_BUCKETS",
    "hstu_attention",
    "hstu_attention_reference",
    "resolve_backend",
    "time_bucket",
]
