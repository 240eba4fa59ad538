"""The SAE base class: shared parameters, encode/decode, training objective, folding (SPEC §1–2)."""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from saelab.kernels import KernelOptions, SparseCodes, Workspace, dense_pre_acts
from saelab.sae.common import INIT_CHUNK_TOKENS, geometric_median
from saelab.validation import check_known_fields, check_values

SPARSITY_LOSSES = ("quadratic", "l0", "tanh")
# SPEC §2.0: the data-dependent init looks at this many sampled inputs (≥ 10k).
# Rows of π formed per low-precision matmul (dense_pre_acts): 1,024 × 16,384 bf16 is 34 MB of
# scratch instead of a 134 MB bf16 copy of π, for ≈10% more time in that matmul on a CPU.
PRE_SCRATCH_ROWS = 1024
INIT_SAMPLE_TOKENS = 16_384


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE: shape, architecture options and provenance.

    Options that an architecture does not use keep their defaults and are ignored by it.
    """

    architecture: str
    d_in: int
    d_sae: int
    dtype: str = "float32"
    # SPEC §2 common: subtract b_dec before encoding (true in training, folded away at save).
    apply_b_dec_to_input: bool = True
    # SPEC §1: the input-normalisation constant C already folded into the weights (provenance).
    normalization_constant: float = 1.0
    # SPEC §2.0 data-dependent init: b_dec from the sample ("zeros" is the papers' value) and
    # the encoder scale fitted so the step-0 reconstruction does not overshoot ("transpose"
    # keeps W_enc = W_decᵀ as the papers do).
    b_dec_init: str = "geometric_median"
    encoder_init: str = "fit"
    # topk / batchtopk (SPEC §2.2)
    k: int | None = None
    aux_k: int | None = None
    aux_coefficient: float = 1 / 32
    # jumprelu (SPEC §2.4). None = derived: ε = BANDWIDTH_FRACTION·θ₀ and θ₀ from the sample
    # (§2.0) for the target L0; tanh_scale c = 4·√d_in (Anthropic's c = 4 in §1 units);
    # pre_act_coefficient = jumprelu.PRE_ACT_COEFFICIENT.
    bandwidth: float | None = None
    init_threshold: float | None = None
    sparsity_loss: str = "quadratic"
    target_l0: float | None = None
    tanh_scale: float | None = None
    pre_act_coefficient: float | None = None
    # Firing-frequency cap: a latent firing on more than this fraction of a batch's tokens gets
    # its θ raised (dense latents crowd exploration tools). 1 = off: at 0.5 it cost 30% FVU on
    # gemma at 500k tokens (docs/jumprelu-training.md).
    max_frequency: float = 1.0
    # matryoshka (SPEC §2.5): latents per group, in order; prefix g = the first g groups.
    # None = matryoshka.default_group_sizes (prefixes n/16, n/8, n/4, n/2, n).
    group_sizes: list[int] | None = None
    # gated (SPEC §2.3)
    # "unit-norm" (the Gated paper): "ri-l1"'s decoder norms collapse and L0 rises with λ
    # (saelab/sae/gated.py has the measurements).
    gated_variant: str = "unit-norm"
    # relu (SPEC §2.1)
    unit_norm_decoder: bool = False
    # Transcoder (SPEC §2.6): predict d_out features at target_hook_name from x at hook_name;
    # None = an SAE (the target is the input). skip_connection adds x W_skipᵀ to ŷ (SAELens's
    # skip transcoder); target_normalization_constant is C_y (SPEC §1, folded like C).
    d_out: int | None = None
    skip_connection: bool = False
    target_hook_name: str | None = None
    target_normalization_constant: float = 1.0
    # provenance, when known
    model_name: str | None = None
    hook_name: str | None = None
    context_size: int | None = None
    dataset: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = {
            "d_in": (self.d_in >= 1, "an integer ≥ 1"),
            "d_sae": (self.d_sae >= 1, "an integer ≥ 1"),
            "dtype": (
                self.dtype in ("float32", "float64", "bfloat16", "float16"),
                "float32, float64, bfloat16 or float16",
            ),
            "k": (
                self.k is None or 1 <= self.k <= self.d_sae,
                f"an integer in [1, d_sae={self.d_sae}]",
            ),
            "aux_k": (self.aux_k is None or self.aux_k >= 1, "an integer ≥ 1"),
            "b_dec_init": (
                self.b_dec_init in ("geometric_median", "mean", "zeros"),
                "'geometric_median', 'mean' or 'zeros'",
            ),
            "encoder_init": (self.encoder_init in ("fit", "transpose"), "'fit' or 'transpose'"),
            "aux_coefficient": (self.aux_coefficient >= 0, "≥ 0"),
            "bandwidth": (self.bandwidth is None or self.bandwidth > 0, "a positive float"),
            "init_threshold": (
                self.init_threshold is None or self.init_threshold > 0,
                "a positive float",
            ),
            "sparsity_loss": (
                self.sparsity_loss in SPARSITY_LOSSES,
                "'" + "', '".join(SPARSITY_LOSSES) + "'",
            ),
            "target_l0": (
                self.target_l0 is None or 0 < self.target_l0 <= self.d_sae,
                f"a number in (0, d_sae={self.d_sae}]",
            ),
            "tanh_scale": (self.tanh_scale is None or self.tanh_scale > 0, "a positive float"),
            "max_frequency": (0 < self.max_frequency <= 1, "in (0, 1]"),
            "pre_act_coefficient": (
                self.pre_act_coefficient is None or self.pre_act_coefficient >= 0,
                "≥ 0",
            ),
            "gated_variant": (
                self.gated_variant in ("ri-l1", "unit-norm"),
                "'ri-l1' or 'unit-norm'",
            ),
            "normalization_constant": (self.normalization_constant > 0, "a positive float"),
            "target_normalization_constant": (
                self.target_normalization_constant > 0,
                "a positive float",
            ),
            "d_out": (self.d_out is None or self.d_out >= 1, "an integer ≥ 1 (or null: an SAE)"),
            "skip_connection": (
                not self.skip_connection or self.d_out is not None,
                "false for an SAE (a skip connection needs a transcoder: set d_out)",
            ),
            "apply_b_dec_to_input": (
                self.d_out is None or not self.apply_b_dec_to_input,
                "false for a transcoder (b_dec lives in the output space)",
            ),
            "group_sizes": (
                self.group_sizes is None
                or (
                    len(self.group_sizes) >= 1
                    and all(isinstance(g, int) and g >= 1 for g in self.group_sizes)
                    and sum(self.group_sizes) == self.d_sae
                ),
                f"a list of integers ≥ 1 summing to d_sae={self.d_sae}",
            ),
        }
        check_values(self, checks, "SAE option")

    @property
    def transcoder(self) -> bool:
        """Whether this predicts another hook's activations (SPEC §2.6)."""
        return self.d_out is not None

    @property
    def out_dim(self) -> int:
        """Width of ŷ: d_out for a transcoder, d_in for an SAE."""
        return self.d_in if self.d_out is None else self.d_out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        check_known_fields(cls, d, "SAE config")
        return cls(**d)


class TrainOutput(NamedTuple):
    """One training forward: the objective, its named terms, the reconstruction and the codes.

    codes is the dense (..., d_sae) f or a SparseCodes; the trainer logs L0 and firing from
    either without materialising a dense f on the sparse path.
    """

    loss: Tensor
    terms: dict[str, Tensor]
    codes: Tensor | SparseCodes
    x_hat: Tensor

    @property
    def feature_acts(self) -> Tensor:
        """The dense codes f, shaped like x̂ with d_sae features."""
        if isinstance(self.codes, Tensor):
            return self.codes
        return self.codes.dense().reshape(*self.x_hat.shape[:-1], -1)

    def l0(self) -> Tensor:
        """Mean number of non-zero latents per token (a 0-dim tensor: no host sync)."""
        if isinstance(self.codes, Tensor):
            return (self.codes != 0).sum(-1).float().mean()
        return self.codes.l0()

    def fired(self) -> Tensor:
        """(d_sae,) bool: which latents were non-zero on some token of the batch."""
        if isinstance(self.codes, Tensor):
            return (self.codes != 0).reshape(-1, self.codes.shape[-1]).any(0)
        return self.codes.fired()


class SAE(nn.Module, abc.ABC):
    """A sparse autoencoder: f = σ(π(x)), x̂ = f W_dec + b_dec (SPEC §2 "Common").

    Subclasses define the activation σ, the sparsity terms of the loss and the initialisation.
    """

    architecture: ClassVar[str]
    # Option names of SAEConfig that this architecture accepts in create_sae.
    options: ClassVar[tuple[str, ...]] = ()
    # Per-latent offsets in pre-activation units (biases, thresholds): the budget recipe trains
    # them at a tenth of the LR (saelab.train.config.BUDGET_OFFSET_LR_SCALE).
    encoder_offsets: ClassVar[tuple[str, ...]] = ("b_enc",)

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.out_dim, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.out_dim, dtype=dtype))
        if cfg.skip_connection:  # (d_out, d_in) as SAELens stores it; starts at zero
            self.W_skip = nn.Parameter(torch.zeros(cfg.out_dim, cfg.d_in, dtype=dtype))
        self._init_encoder(dtype)
        self.needs_data_init = False
        # How train_forward runs (saelab.kernels): set per SAE, e.g. KernelOptions(mode="dense").
        self.kernels = KernelOptions()
        self.workspace = Workspace()

    # ---- structure -----------------------------------------------------------------------
    def _init_encoder(self, dtype: torch.dtype) -> None:
        """Create W_enc and b_enc (gated overrides this with its gate/magnitude parameters)."""
        self.W_enc = nn.Parameter(torch.empty(self.cfg.d_in, self.cfg.d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=dtype))

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def unit_norm_decoder(self) -> bool:
        """Whether training keeps decoder rows at unit norm (per architecture recipe)."""
        return True

    def reset_parameters(self) -> None:
        """The architecture's initialisation (SPEC §2): random unit decoder rows, W_enc = W_decᵀ.

        Marks the SAE for the data-dependent init (SPEC §2.0) that train() runs before step 0;
        an SAE built from a file is never marked, so training it fine-tunes its weights.
        """
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.W_dec)
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
            self.W_enc.copy_(self.tied_encoder())
            self.b_enc.zero_()
            self.b_dec.zero_()
        self.needs_data_init = True

    @torch.no_grad()
    def tied_encoder(self) -> Tensor:
        """W_decᵀ (SPEC §2 init); a transcoder's x and ŷ live in different spaces, so its
        latents read random unit directions of x with the norms of their decoder rows."""
        if not self.cfg.transcoder:
            return self.W_dec.T
        directions = torch.randn(self.cfg.d_sae, self.cfg.d_in, dtype=self.W_dec.dtype)
        directions *= (self.W_dec.norm(dim=1) / directions.norm(dim=1)).unsqueeze(1)
        return directions.T

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, target: Tensor | None = None) -> None:
        """SPEC §2.0 on a sample of normalised inputs: b_dec, thresholds, then the encoder scale.

        target: a transcoder's normalised y for the same tokens (SPEC §2.6; b_dec and the scale
        fit y). The computed values go to cfg.metadata["init"] so cfg.json records how the run
        started.
        """
        x = x.reshape(-1, x.shape[-1])[:INIT_SAMPLE_TOKENS].to(self.W_dec.dtype)
        y = x if target is None else target.reshape(-1, target.shape[-1])[: len(x)].to(x.dtype)
        cfg = self.cfg
        if cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(y).to(self.b_dec.dtype))
        elif cfg.b_dec_init == "mean":
            self.b_dec.copy_(y.mean(0))
        record: dict[str, Any] = {"b_dec": cfg.b_dec_init, "encoder": cfg.encoder_init}
        record |= self._init_thresholds(x)
        if cfg.encoder_init == "fit":
            scale = self._reconstruction_scale(x, y)
            self._scale_encoder(scale)
            record["encoder_scale"] = scale
        record |= self._after_scale(x)
        cfg.metadata["init"] = record
        self.needs_data_init = False

    def _init_thresholds(self, x: Tensor) -> dict[str, Any]:
        """Set any firing threshold from the sample (SPEC §2.0); returns what it recorded."""
        return {}

    def _after_scale(self, x: Tensor) -> dict[str, Any]:
        """Settings that depend on the final initial weights (e.g. JumpReLU's ε)."""
        return {}

    def _reconstruction_scale(self, x: Tensor, y: Tensor) -> float:
        """The s > 0 minimising ‖(y − b_dec) − s·(ŷ − b_dec)‖² on the sample (SPEC §2.0; y = x
        for an SAE).

        f is positively homogeneous in (W_enc, b_enc, θ), so scaling them by s scales x̂ − b_dec
        by s without changing which latents fire; s = 1 when nothing fires.
        """
        numerator = denominator = 0.0
        for part, want in zip(x.split(INIT_CHUNK_TOKENS), y.split(INIT_CHUNK_TOKENS), strict=True):
            centred, recon = (
                (want - self.b_dec).double(),
                (self.forward(part) - self.b_dec).double(),
            )
            numerator += float((centred * recon).sum())
            denominator += float(recon.pow(2).sum())
        if denominator == 0.0:
            return 1.0
        return max(numerator / denominator, 1e-3)

    def _scale_encoder(self, s: float) -> None:
        """Multiply the encoder (W_enc, b_enc and any threshold) by s."""
        self.W_enc *= s
        self.b_enc *= s

    def latent_parameters(self) -> list[tuple[nn.Parameter, int]]:
        """(parameter, dim indexing latents) for every per-latent parameter: what resampling
        re-initialises (with its optimizer moments) when it revives a latent."""
        return [(self.W_enc, 1), (self.b_enc, 0), (self.W_dec, 0)]

    # ---- inference -----------------------------------------------------------------------
    def sae_input(self, x: Tensor) -> Tensor:
        """x − b_dec when apply_b_dec_to_input, else x (SPEC §2 "Common")."""
        x = x.to(self.W_dec.dtype)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def sparse_sae_input(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(sae_in without a graph, b_dec or None) for the sparse kernels, which give b_dec its
        gradient through the encoder directly (saelab.kernels.sparse_pre_acts)."""
        with torch.no_grad():
            sae_in = self.sae_input(x)
        return sae_in, self.b_dec if self.cfg.apply_b_dec_to_input else None

    def dense_pre_acts(self, sae_in: Tensor) -> Tensor:
        """π of sae_in without a graph, its product in the kernels' matmul dtype, written into this
        SAE's fp32 workspace buffer "pre", which the next step reuses (and overwrites)."""
        tokens, n = sae_in.shape[0], self.W_enc.shape[1]
        dtype = self.kernels.matmul_dtype
        out = self.workspace.buffer("pre", (tokens, n), self.W_enc.dtype, self.device)
        scratch = None
        if dtype is not None:
            rows = min(tokens, PRE_SCRATCH_ROWS)
            scratch = self.workspace.buffer("pre_scratch", (rows, n), dtype, self.device)
        return dense_pre_acts(sae_in, self.W_enc, self.b_enc, dtype, out, scratch)

    def pre_acts(self, x: Tensor) -> Tensor:
        """π(x) = (x − b_dec) W_enc + b_enc, the bias added in place: one (B, n) buffer.

        Under a bf16 autocast the bf16 product is promoted by the fp32 bias instead.
        """
        pre = self.sae_input(x) @ self.W_enc
        return pre.add_(self.b_enc) if pre.dtype == self.b_enc.dtype else pre + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations f (dense, same leading dims as x).

        Without a graph (inference), f is written over π itself: no second (B, n) buffer.
        """
        pre = self.pre_acts(x)
        return self.activation(pre) if pre.requires_grad else self.activation_(pre)

    def activation(self, pre: Tensor) -> Tensor:
        """f from π; an architecture whose f is not a function of π alone overrides encode."""
        raise NotImplementedError(f"{type(self).__name__} defines encode, not activation")

    def activation_(self, pre: Tensor) -> Tensor:
        """activation(π) computed in place over π, for inference; the default is not in place."""
        return self.activation(pre)

    def decode(self, f: Tensor) -> Tensor:
        """x̂ = f W_dec + b_dec."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """x̂ (an SAE) or ŷ (a transcoder, SPEC §2.6) from x."""
        return self.with_skip(self.decode(self.encode(x)), x)

    def with_skip(self, out: Tensor, x: Tensor) -> Tensor:
        """out + x W_skipᵀ for a skip transcoder (SPEC §2.6), else out itself."""
        if not self.cfg.skip_connection:
            return out
        return out + x.to(self.W_skip.dtype) @ self.W_skip.T

    def split_target(self, x: Tensor, target: Tensor | None) -> Tensor:
        """What the objective reconstructs: a transcoder's target (required), else x itself."""
        if not self.cfg.transcoder:
            return x
        if target is None:
            raise ValueError("a transcoder's train_forward needs target= (y at target_hook_name)")
        return (
            target.reshape(-1, target.shape[-1])
            .to(self.W_dec.dtype)
            .reshape(*x.shape[:-1], target.shape[-1])
        )

    # ---- training ------------------------------------------------------------------------
    @abc.abstractmethod
    def train_forward(
        self,
        x: Tensor,
        sparsity_coefficient: float,
        dead_mask: Tensor | None = None,
        target: Tensor | None = None,
    ) -> TrainOutput:
        """The SPEC §2 objective on normalised x, averaged over the batch.

        dead_mask (d_sae bool) marks latents the trainer considers dead (AuxK, pre-act loss);
        target is a transcoder's normalised y (SPEC §2.6), which it reconstructs instead of x.
        """

    def training_loss(
        self,
        x: Tensor,
        sparsity_coefficient: float,
        dead_mask: Tensor | None = None,
        target: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """(total loss, {term name: value}) with the STE gradients (DESIGN.md public API)."""
        out = self.train_forward(x, sparsity_coefficient, dead_mask, target)
        return out.loss, out.terms

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Project out the component of each decoder row's gradient along that row (SPEC §2.2/2.4)."""
        grad, w = self.W_dec.grad, self.W_dec
        if grad is None:
            return
        # g ← g − (g·w / ‖w‖²)·w per row: three reads of W_dec and no (d_sae × d_in) temporary.
        along = torch.einsum("ij,ij->i", grad, w) / torch.einsum("ij,ij->i", w, w).clamp_min(1e-24)
        grad.addcmul_(along.unsqueeze(1), w, value=-1.0)

    @torch.no_grad()
    def after_step(self) -> None:
        """Constraints applied after every optimizer step (unit-norm rows, θ > 0)."""
        if self.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    # ---- saving --------------------------------------------------------------------------
    @torch.no_grad()
    def fold_normalization(self, c: float, c_out: float | Tensor | None = None) -> None:
        """Fold the normalisation constant C into the weights so the SAE takes raw inputs.

        SPEC §1: b_enc' = C·b_enc − C·(b_dec·W_enc), b_dec' = C·b_dec, θ' = C·θ, so that
        f'(x) = C·f(x/C) and x̂'(x) = C·x̂(x/C); apply_b_dec_to_input becomes false.
        A transcoder (SPEC §2.6) has C_y = c_out for its output: ŷ'(x) = C_y·ŷ(x/C), so
        b_dec' = C_y·b_dec and W_dec, W_skip are multiplied by C_y / C. c_out may be one
        divisor per output dimension (TrainConfig.target_scaling); cfg then records their
        geometric mean.
        """
        if self.cfg.apply_b_dec_to_input:
            self._fold_b_dec_into_encoder()
            self.cfg.apply_b_dec_to_input = False
        self._scale_encoder_offsets(c)
        c_out = c if c_out is None else c_out
        per_dim = isinstance(c_out, Tensor)
        if per_dim:
            c_out = c_out.to(self.W_dec.device, self.W_dec.dtype)
        self.b_dec *= c_out
        if per_dim or c_out != c:
            self.W_dec *= c_out / c
            if self.cfg.skip_connection:
                self.W_skip *= (c_out / c).unsqueeze(1) if per_dim else c_out / c
        self.cfg.normalization_constant *= c
        if self.cfg.transcoder:
            # The geometric mean, so that unfolding (1/v) and refolding (v) cancel.
            mean = float(c_out.double().log().mean().exp()) if per_dim else c_out
            self.cfg.target_normalization_constant *= mean

    def _fold_b_dec_into_encoder(self) -> None:
        self.b_enc -= self.b_dec @ self.W_enc

    def _scale_encoder_offsets(self, c: float) -> None:
        self.b_enc *= c

    def export_state(self) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
        """(SAELens architecture name, state dict with SAELens keys, extra SAELens cfg fields)."""
        return self.architecture, dict(self.state_dict()), {}

    def save(self, path: str | Path) -> Path:
        """Write cfg.json + sae_weights.safetensors (SAELens format; see saelab.formats)."""
        from saelab.formats.saelens import save_sae_dir

        return save_sae_dir(self, Path(path))
