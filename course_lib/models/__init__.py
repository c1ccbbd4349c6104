"""The models of the lessons and the capstone; each is seeded, so a seed fixes its initial weights.

- :mod:`.mlp`: :func:`mlp` (perceptrons of any depth) and :class:`SmallConvNet`;
- :mod:`.transformer`: :class:`TinyTransformer` (sequences) and :class:`TinyViT` (images);
- :mod:`.gan`: :func:`gan_pair`, a generator and a discriminator for points in the plane;
- :mod:`.qwen`: :class:`QwenLM`, the capstone's language model.
"""

from .gan import gan_pair
from .mlp import SmallConvNet, mlp
from .qwen import PRESETS, QwenConfig, QwenLM, count_parameters, flops_per_token, lm_loss
from .transformer import TinyTransformer, TinyViT

__all__ = ["PRESETS", "QwenConfig", "QwenLM", "SmallConvNet", "TinyTransformer", "TinyViT", "count_parameters",
           "flops_per_token", "gan_pair", "lm_loss", "mlp"]
