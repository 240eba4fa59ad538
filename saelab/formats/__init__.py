"""SAE file formats: SAELens directories, Gemma Scope params.npz, Gemma Scope 2 and Llama Scope
folders, the Hugging Face Hub.

Names are imported on first use (saelab.lazy), so importing a submodule (the CLI) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saelab.lazy import lazy_package

if TYPE_CHECKING:
    from saelab.formats.errors import SAEFileError
    from saelab.formats.gemmascope import load_gemma_scope, save_gemma_scope
    from saelab.formats.load import load_sae
    from saelab.formats.saelens import load_sae_dir, read_config, save_sae_dir

__all__ = [
    "SAEFileError",
    "load_gemma_scope",
    "load_sae",
    "load_sae_dir",
    "read_config",
    "save_gemma_scope",
    "save_sae_dir",
]

lazy_package(
    __name__,
    {
        "SAEFileError": "saelab.formats.errors",
        "load_gemma_scope": "saelab.formats.gemmascope",
        "load_sae": "saelab.formats.load",
        "load_sae_dir": "saelab.formats.saelens",
        "read_config": "saelab.formats.saelens",
        "save_gemma_scope": "saelab.formats.gemmascope",
        "save_sae_dir": "saelab.formats.saelens",
    },
)
