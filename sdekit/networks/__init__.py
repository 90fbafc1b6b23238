"""Score networks in pure PyTorch: an MLP for toy data, a DDPM++-style UNet, EDM preconditioning."""

from .embeddings import GaussianFourierEmbedding, LabelEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .preconditioning import EDMPrecond
from .unet import UNet

__all__ = [
    "MLP",
    "UNet",
    "EDMPrecond",
    "GaussianFourierEmbedding",
    "SinusoidalEmbedding",
    "LabelEmbedding",
]
