"""Sparse-aware training kernels used by the SAEs (DESIGN.md "kernels/"), dense fallback included.

Select with `set_kernel_options(mode="auto" | "dense" | "sparse", matmul_dtype=..., compile=...)` or the
`use_kernels(...)` context manager; the public SAE API is unchanged.
"""

from saelab.kernels.codes import batch_topk_codes, jumprelu_window, sparse_aux_k_loss, topk_codes
from saelab.kernels.decoder import SparseDecoder, sparse_decode
from saelab.kernels.encoder import (
    DenseEncoder,
    SparseEncoder,
    dense_pre_acts,
    dense_pre_acts_with_grad,
    sparse_pre_acts,
)
from saelab.kernels.options import (
    KernelOptions,
    kernel_options,
    matmul_autocast,
    maybe_compiled,
    set_kernel_options,
    use_kernels,
    use_sparse,
)
from saelab.kernels.pattern import SparseCodes, SparsePattern
from saelab.kernels.workspace import scratch, take

__all__ = [
    "DenseEncoder",
    "KernelOptions",
    "SparseCodes",
    "SparseDecoder",
    "SparseEncoder",
    "SparsePattern",
    "batch_topk_codes",
    "dense_pre_acts",
    "dense_pre_acts_with_grad",
    "jumprelu_window",
    "kernel_options",
    "matmul_autocast",
    "maybe_compiled",
    "scratch",
    "set_kernel_options",
    "sparse_aux_k_loss",
    "sparse_decode",
    "sparse_pre_acts",
    "take",
    "topk_codes",
    "use_kernels",
    "use_sparse",
]
