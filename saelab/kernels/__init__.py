"""Sparse-aware training kernels used by the SAEs (DESIGN.md "kernels/"), dense fallback included.

Each SAE carries its own choice, `sae.kernels = KernelOptions(mode="auto" | "dense" | "sparse",
matmul_dtype=..., compile=...)`, and its own Workspace (`sae.workspace`); the public SAE API is
unchanged and nothing is process-global.
"""

from saelab.kernels.codes import (
    DeadColumns,
    batch_topk_codes,
    jumprelu_window,
    sparse_aux_k_loss,
    topk_codes,
)
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
    matmul_autocast,
    native_bf16_matmul,
    resolve_matmul_dtype,
)
from saelab.kernels.pattern import SparseCodes, SparsePattern
from saelab.kernels.workspace import Workspace

__all__ = [
    "DeadColumns",
    "DenseEncoder",
    "KernelOptions",
    "SparseCodes",
    "SparseDecoder",
    "SparseEncoder",
    "SparsePattern",
    "Workspace",
    "batch_topk_codes",
    "dense_pre_acts",
    "dense_pre_acts_with_grad",
    "jumprelu_window",
    "matmul_autocast",
    "native_bf16_matmul",
    "resolve_matmul_dtype",
    "sparse_aux_k_loss",
    "sparse_decode",
    "sparse_pre_acts",
    "topk_codes",
]
