"""SAE file formats: SAELens directories, Gemma Scope params.npz."""

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
