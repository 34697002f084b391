"""cove: correspondence-guided consistent video editing (COVE, NeurIPS 2024), Jupyter-first.

Stages, each a plain function with shapes in its docstring:

1. ``cove.features.extract_features``      diffusion features, (F, C, H, W)
2. ``cove.correspondence.window_similarity`` one sliding window, (.., l*l)
3. ``cove.correspondence.correspond``      chained top-K correspondence, (F, N, F, K)
4. ``cove.attention.guided_attention``     correspondence-guided attention, (F, N, C)
5. ``cove.merging.bipartite_merge``        temporal token merging, (..., T - r, C)

and the pipeline around them: ``cove.load_pipeline``, ``cove.edit_video``, ``cove.CoveConfig``.
"""
import logging

from .config import CoveConfig


class _TorchvisionNotice(logging.Filter):
    """Drops transformers' notice that its image processors fall back to PIL without
    torchvision: cove never uses an image processor (the pipeline's is loaded, unused)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionNotice())

__version__ = "0.1.0"

__all__ = ["CoveConfig", "load_pipeline", "edit_video", "EditResult", "__version__"]


def __getattr__(name):  # lazy: `import cove` stays cheap, diffusers loads on first use
    if name in ("load_pipeline",):
        from .loading import load_pipeline

        return load_pipeline
    if name in ("edit_video", "EditResult"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'cove' has no attribute {name!r}")
