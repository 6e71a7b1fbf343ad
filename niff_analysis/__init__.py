"""niff-analysis: how large are the kernels a CNN learns when it could learn any size?"""

__version__ = "0.1.0"

from .layers import DepthwiseNIFF, FreqPointwise, FullNIFF, SplitNIFF  # noqa: E402
from .models import create_model, list_models, to_niff, to_separated  # noqa: E402

__all__ = ["DepthwiseNIFF", "FreqPointwise", "FullNIFF", "SplitNIFF", "__version__",
           "create_model", "list_models", "to_niff", "to_separated"]
