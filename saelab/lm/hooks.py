"""TransformerLens hook names mapped onto Hugging Face modules, per model family.

Each hook point is captured by a PyTorch forward hook (or forward pre-hook) on one HF module:

| hook            | Llama/Qwen/SmolLM/Mistral  | Gemma 2/3                           | GPT-2          | GPT-NeoX                       |
|-----------------|----------------------------|-------------------------------------|----------------|--------------------------------|
| hook_resid_pre  | input of layer L           | input of layer L                    | input of h.L   | input of layers.L              |
| hook_attn_out   | output of self_attn        | output of post_attention_layernorm  | output of attn | output of post_attention_dropout |
| hook_resid_mid  | input of post_attn_layernorm | input of pre_feedforward_layernorm | input of ln_2  | input of post_attention_layernorm (sequential residual only) |
| hook_mlp_in     | input of mlp               | input of mlp                        | input of mlp   | input of mlp                   |
| hook_mlp_out    | output of mlp              | output of post_feedforward_layernorm | output of mlp | output of post_mlp_dropout     |
| hook_resid_post | output of layer L          | output of layer L                   | output of h.L  | output of layers.L             |

Gemma 2/3 normalise the attention and MLP outputs again before adding them to the residual
stream ("sandwich" norms). Following TransformerLens, hook_attn_out and hook_mlp_out are the
outputs *after* those post-norms (the vectors actually added to the residual stream), so
resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out hold for every family.
hook_mlp_in is what the MLP reads (after its pre-norm): the input of an MLP transcoder.
GPT-NeoX models with a parallel residual (Pythia) have no resid_mid, as in TransformerLens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

HOOK_KINDS = (
    "hook_resid_pre",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_in",
    "hook_mlp_out",
    "hook_resid_post",
)
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_[a-z_]+)$")


class HookNotFoundError(KeyError):
    """A hook name that does not exist on this model; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnsupportedModelError(ValueError):
    """A model family whose layers saelab cannot map onto hook points."""


@dataclass(frozen=True)
class FamilyLayout:
    """Where a family's hook points live inside one decoder layer (module names)."""

    layers: tuple[str, ...]  # candidate paths from the top model to the decoder ModuleList
    attn_out: str  # module whose output is hook_attn_out
    resid_mid: str | None  # module whose input is hook_resid_mid (None: not defined)
    mlp_out: str  # module whose output is hook_mlp_out
    parallel_flag: str | None = None  # config flag that, when true, removes hook_resid_mid
    mlp: str = "mlp"  # module whose input is hook_mlp_in


_LLAMA = FamilyLayout(
    layers=("model.layers",),
    attn_out="self_attn",
    resid_mid="post_attention_layernorm",
    mlp_out="mlp",
)
_GEMMA2 = FamilyLayout(
    layers=("model.layers", "model.language_model.layers"),
    attn_out="post_attention_layernorm",
    resid_mid="pre_feedforward_layernorm",
    mlp_out="post_feedforward_layernorm",
)
_GPT2 = FamilyLayout(layers=("transformer.h",), attn_out="attn", resid_mid="ln_2", mlp_out="mlp")
_NEOX = FamilyLayout(
    layers=("gpt_neox.layers",),
    attn_out="post_attention_dropout",
    resid_mid="post_attention_layernorm",
    mlp_out="post_mlp_dropout",
    parallel_flag="use_parallel_residual",
)

FAMILIES: dict[str, FamilyLayout] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "smollm3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "gpt2": _GPT2,
    "gpt_neox": _NEOX,
}


@dataclass(frozen=True)
class HookPoint:
    """One resolved hook: the module to hook and whether its input or output is captured."""

    name: str
    layer: int
    kind: str
    module: nn.Module
    capture: str  # "input" or "output"


def parse_hook_name(name: str) -> tuple[int, str]:
    """Split 'blocks.L.hook_kind' into (L, 'hook_kind'), or raise naming the valid forms."""
    match = _HOOK_RE.match(name)
    if match is None or match.group(2) not in HOOK_KINDS:
        raise HookNotFoundError(
            f"Unknown hook name {name!r}: expected blocks.<layer>.<kind> with kind one of "
            f"{', '.join(HOOK_KINDS)} (TransformerLens names)."
        )
    return int(match.group(1)), match.group(2)


def family_layout(model: nn.Module) -> FamilyLayout:
    """The hook layout of a HF causal LM, chosen by its config's model_type."""
    model_type = getattr(model.config, "model_type", None)
    layout = FAMILIES.get(model_type)
    if layout is None:
        raise UnsupportedModelError(
            f"Model type {model_type!r} has no hook-point mapping; supported model types: "
            f"{', '.join(sorted(FAMILIES))}."
        )
    return layout


def decoder_layers(model: nn.Module, layout: FamilyLayout) -> nn.ModuleList:
    """The ModuleList of decoder blocks inside a HF causal LM."""
    for path in layout.layers:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise UnsupportedModelError(
        f"Could not find the decoder layers of {type(model).__name__} at any of {layout.layers}."
    )


def available_kinds(model: nn.Module, layout: FamilyLayout) -> tuple[str, ...]:
    """Hook kinds this model defines (parallel-residual GPT-NeoX has no resid_mid)."""
    parallel = layout.parallel_flag is not None and getattr(model.config, layout.parallel_flag)
    if layout.resid_mid is None or parallel:
        return tuple(kind for kind in HOOK_KINDS if kind != "hook_resid_mid")
    return HOOK_KINDS


def hook_names(model: nn.Module) -> list[str]:
    """Every hook name of a model, in forward order."""
    layout = family_layout(model)
    kinds = available_kinds(model, layout)
    n_layers = len(decoder_layers(model, layout))
    return [f"blocks.{layer}.{kind}" for layer in range(n_layers) for kind in kinds]


def resolve_hook(model: nn.Module, name: str) -> HookPoint:
    """Map a TransformerLens hook name onto the HF module that produces it."""
    layer, kind = parse_hook_name(name)
    layout = family_layout(model)
    layers = decoder_layers(model, layout)
    kinds = available_kinds(model, layout)
    if layer >= len(layers) or kind not in kinds:
        raise HookNotFoundError(
            f"Hook {name!r} does not exist on this {model.config.model_type} model with "
            f"{len(layers)} layers; available: blocks.{{0..{len(layers) - 1}}}."
            f"{{{', '.join(kinds)}}}."
        )
    block = layers[layer]
    if kind == "hook_resid_pre":
        return HookPoint(name, layer, kind, block, "input")
    if kind == "hook_resid_post":
        return HookPoint(name, layer, kind, block, "output")
    if kind == "hook_resid_mid":
        return HookPoint(name, layer, kind, block.get_submodule(layout.resid_mid), "input")
    if kind == "hook_attn_out":
        return HookPoint(name, layer, kind, block.get_submodule(layout.attn_out), "output")
    if kind == "hook_mlp_in":
        return HookPoint(name, layer, kind, block.get_submodule(layout.mlp), "input")
    return HookPoint(name, layer, kind, block.get_submodule(layout.mlp_out), "output")
