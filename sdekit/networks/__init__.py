"""Networks in pure PyTorch: score networks (an MLP for toy data, a DDPM++-style UNet, EDM
preconditioning) and the noise-conditional classifiers of classifier guidance."""

from .classifier import MLPClassifier, UNetClassifier
from .embeddings import NULL_LABEL, GaussianFourierEmbedding, LabelEmbedding, SinusoidalEmbedding
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
    "NULL_LABEL",
    "UNetClassifier",
    "MLPClassifier",
]
