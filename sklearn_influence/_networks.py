"""Small example networks for the 8×8 digits, one per model family of Bae et al. (2022):
an autoencoder, LeNet-, AlexNet- and VGG-like CNNs, a residual net with batch normalisation
and a Transformer classifier (public through :mod:`sklearn_influence.datasets`).

Each is a plain :class:`torch.nn.Module` for a skorch net's ``module=`` (with
``module__<name>=...`` settings), built in a fixed order so that a seeded torch generator
always gives the same initial weights, without data-dependent control flow (so
:mod:`torch.func` traces it), and small enough for the dense curvature in tests.
"""

from itertools import pairwise

import torch
from torch import nn

__all__ = ["VGG", "AlexNet", "Autoencoder", "LeNet", "ResNet", "TransformerClassifier"]


def _images(X, image_size):
    """(n, 1, s, s) images from (n, 1, s, s), (n, s, s) or flat (n, s·s) inputs."""
    return X.reshape(len(X), 1, image_size, image_size)


class LeNet(nn.Module):
    """A LeNet-like convolutional network for 8×8 images of shape (n, 1, 8, 8).

    ``Conv2d(3×3, padding 1) → tanh → AvgPool2d(2)`` twice (8×8 → 4×4 → 2×2), then
    ``Linear → tanh → Linear`` to the logits. tanh and average pooling keep the network
    smooth, as in LeCun et al. (1998), so its Hessian is well defined everywhere.

    Parameters
    ----------
    channels : tuple of two int, default=(6, 12)
        Channels of the two convolutions.
    hidden : int, default=32
        Width of the hidden fully connected layer.
    n_classes : int, default=10
        Number of logits.
    image_size : int, default=8
        Side of the square input images (a multiple of 4).
    dtype : torch.dtype or None, default=None
        Parameter dtype; None uses torch's default (float32).

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence.datasets import LeNet
    >>> _ = torch.manual_seed(0)
    >>> net = LeNet(channels=(2, 4), hidden=8)
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    >>> sum(p.numel() for p in net.parameters())
    322
    """

    def __init__(self, channels=(6, 12), hidden=32, n_classes=10, *, image_size=8, dtype=None):
        super().__init__()
        first, second = channels
        self.image_size = image_size
        self.conv1 = nn.Conv2d(1, first, 3, padding=1, dtype=dtype)
        self.conv2 = nn.Conv2d(first, second, 3, padding=1, dtype=dtype)
        self.pool = nn.AvgPool2d(2)
        self.hidden = nn.Linear(second * (image_size // 4) ** 2, hidden, dtype=dtype)
        self.output = nn.Linear(hidden, n_classes, dtype=dtype)

    def forward(self, X):
        """Logits of the images.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, 1, s, s)
            The inputs.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
        """
        out = self.pool(torch.tanh(self.conv1(_images(X, self.image_size))))
        out = self.pool(torch.tanh(self.conv2(out)))
        return self.output(torch.tanh(self.hidden(out.flatten(1))))


class Autoencoder(nn.Module):
    """A fully connected autoencoder that reconstructs its flat (n, 64) input.

    ``Linear → tanh`` layers down to a narrow code and back up, with a linear output layer
    (a sigmoid output saturates on the many zero pixels of the digits and training stalls at
    the mean image). Train it as a regressor on its own
    input (skorch ``NeuralNetRegressor`` with ``y = X`` and ``MSELoss``): the measurement of
    influence is then the reconstruction loss, as in the autoencoder of Bae et al. (2022).

    Parameters
    ----------
    hidden : tuple of int, default=(32, 8)
        Widths of the encoder layers, the last one the code; the decoder mirrors them.
    n_features : int, default=64
        Input (and reconstruction) width.
    dtype : torch.dtype or None, default=None
        Parameter dtype; None uses torch's default (float32).

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence.datasets import Autoencoder
    >>> _ = torch.manual_seed(0)
    >>> net = Autoencoder(hidden=(16, 4))
    >>> net(torch.zeros(5, 64)).shape
    torch.Size([5, 64])
    >>> sum(p.numel() for p in net.parameters())
    2276
    """

    def __init__(self, hidden=(32, 8), n_features=64, *, dtype=None):
        super().__init__()
        widths = [n_features, *hidden]
        down = list(pairwise(widths))
        up = [(b, a) for a, b in reversed(down)]
        self.encoder = nn.ModuleList(nn.Linear(a, b, dtype=dtype) for a, b in down)
        self.decoder = nn.ModuleList(nn.Linear(a, b, dtype=dtype) for a, b in up)

    def forward(self, X):
        """Reconstructions of the inputs.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, n_features)
            The inputs (anything that flattens to it).

        Returns
        -------
        reconstruction : torch.Tensor of shape (n_samples, n_features)
        """
        out = X.reshape(len(X), -1)
        for layer in self.encoder:
            out = torch.tanh(layer(out))
        for layer in self.decoder[:-1]:
            out = torch.tanh(layer(out))
        return self.decoder[-1](out)


def _conv_relu(in_channels, out_channels, dtype):
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, dtype=dtype), nn.ReLU()]


def _he_initialisation(module):
    """He et al. (2015) normal weights and zero biases for every convolution and dense layer.

    PyTorch's default initialisation shrinks the signal through each ReLU layer; after the
    six to eight ReLU layers of the AlexNet- and VGG-like nets the logits barely depend on
    the input and training with Adam stalls at the class prior (as torchvision's VGG, the
    fan-in He initialisation keeps the signal's scale).
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)


class _FeaturesClassifier(nn.Module):
    """A CNN written as ``features`` (convolutions and pooling) then ``classifier`` (dense)."""

    def forward(self, X):
        """Logits of the images.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, 1, s, s)
            The inputs.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
        """
        out = self.features(_images(X, self.image_size))
        return self.classifier(out.flatten(1))


class AlexNet(_FeaturesClassifier):
    """An AlexNet-like CNN for (n, 1, 8, 8) images: five ReLU convolutions, three dense layers.

    The layout of Krizhevsky et al. (2012) at digit scale: two ``Conv2d(3×3) → ReLU →
    MaxPool2d(2)`` stages (8×8 → 4×4 → 2×2), three more 3×3 ReLU convolutions at 2×2, then
    ``Linear → ReLU → Linear → ReLU → Linear`` to the logits. No dropout and no local
    response normalisation, so the fitted network is a fixed function of its parameters.
    He-initialised (normal, fan-in; zero biases): with PyTorch's default initialisation the
    signal fades through the ReLU layers and training stalls at the class prior.

    Parameters
    ----------
    channels : tuple of five int, default=(8, 16, 16, 16, 16)
        Channels of the five convolutions.
    hidden : int, default=32
        Width of the two hidden dense layers.
    n_classes : int, default=10
        Number of logits.
    image_size : int, default=8
        Side of the square input images (a multiple of 4).
    dtype : torch.dtype or None, default=None
        Parameter dtype; None uses torch's default (float32).

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence.datasets import AlexNet
    >>> _ = torch.manual_seed(0)
    >>> net = AlexNet(channels=(2, 4, 4, 4, 4), hidden=8)
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    >>> sum(p.numel() for p in net.parameters())
    838
    """

    def __init__(
        self, channels=(8, 16, 16, 16, 16), hidden=32, n_classes=10, *, image_size=8, dtype=None
    ):
        super().__init__()
        self.image_size = image_size
        c1, c2, c3, c4, c5 = channels
        self.features = nn.Sequential(
            *_conv_relu(1, c1, dtype),
            nn.MaxPool2d(2),
            *_conv_relu(c1, c2, dtype),
            nn.MaxPool2d(2),
            *_conv_relu(c2, c3, dtype),
            *_conv_relu(c3, c4, dtype),
            *_conv_relu(c4, c5, dtype),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c5 * (image_size // 4) ** 2, hidden, dtype=dtype),
            nn.ReLU(),
            nn.Linear(hidden, hidden, dtype=dtype),
            nn.ReLU(),
            nn.Linear(hidden, n_classes, dtype=dtype),
        )
        _he_initialisation(self)


class VGG(_FeaturesClassifier):
    """A VGG13-like CNN for (n, 1, 8, 8) images: stages of two 3×3 ReLU convolutions.

    The pattern of VGG13 (Simonyan & Zisserman, 2015) at digit scale: each stage is two
    ``Conv2d(3×3, padding 1) → ReLU`` followed by ``MaxPool2d(2)``, the channels growing from
    stage to stage; three stages take 8×8 images to 1×1. Then ``Linear → ReLU → Linear`` to
    the logits. (VGG13 has five stages and three dense layers on 224×224 images.)
    He-initialised (normal, fan-in; zero biases), as torchvision's VGG, so that training does
    not stall at the class prior.

    Parameters
    ----------
    channels : tuple of int, default=(4, 8, 16)
        Channels of each stage's two convolutions (8×8 images allow three stages).
    hidden : int, default=32
        Width of the hidden dense layer.
    n_classes : int, default=10
        Number of logits.
    image_size : int, default=8
        Side of the square input images (divisible by 2 ** len(channels)).
    dtype : torch.dtype or None, default=None
        Parameter dtype; None uses torch's default (float32).

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence.datasets import VGG
    >>> _ = torch.manual_seed(0)
    >>> net = VGG(channels=(2, 2, 4), hidden=8)
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    >>> sum(p.numel() for p in net.parameters())
    488
    """

    def __init__(self, channels=(4, 8, 16), hidden=32, n_classes=10, *, image_size=8, dtype=None):
        super().__init__()
        self.image_size = image_size
        layers, previous = [], 1
        for width in channels:
            layers += [*_conv_relu(previous, width, dtype), *_conv_relu(width, width, dtype)]
            layers.append(nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(channels)
        self.classifier = nn.Sequential(
            nn.Linear(previous * side**2, hidden, dtype=dtype),
            nn.ReLU(),
            nn.Linear(hidden, n_classes, dtype=dtype),
        )
        _he_initialisation(self)


class _ResidualBlock(nn.Module):
    """``x + BN(conv(relu(BN(conv(x)))))`` followed by ReLU (He et al., 2016)."""

    def __init__(self, width, dtype):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False, dtype=dtype)
        self.norm1 = nn.BatchNorm2d(width, dtype=dtype)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False, dtype=dtype)
        self.norm2 = nn.BatchNorm2d(width, dtype=dtype)

    def forward(self, X):
        out = torch.relu(self.norm1(self.conv1(X)))
        return torch.relu(X + self.norm2(self.conv2(out)))


class ResNet(nn.Module):
    """A tiny residual network with batch normalisation for (n, 1, 8, 8) images.

    A 3×3 convolution with ``BatchNorm2d`` and ReLU, ``n_blocks`` residual blocks of two
    3×3 convolutions with batch normalisation, global average pooling and a linear head.
    The BatchNorm affine weights and biases are trainable parameters; the running mean and
    variance are buffers. Influence computations evaluate the network in eval mode, with the
    running statistics of the fitted net (see the user guide on batch normalisation).

    Parameters
    ----------
    width : int, default=8
        Channels of every convolution.
    n_blocks : int, default=2
        Number of residual blocks.
    n_classes : int, default=10
        Number of logits.
    image_size : int, default=8
        Side of the square input images.
    dtype : torch.dtype or None, default=None
        Parameter dtype; None uses torch's default (float32).

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence.datasets import ResNet
    >>> _ = torch.manual_seed(0)
    >>> net = ResNet(width=4, n_blocks=1).eval()
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    >>> [name for name, _ in net.named_buffers()][:3]
    ['stem_norm.running_mean', 'stem_norm.running_var', 'stem_norm.num_batches_tracked']
    """

    def __init__(self, width=8, n_blocks=2, n_classes=10, *, image_size=8, dtype=None):
        super().__init__()
        self.image_size = image_size
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False, dtype=dtype)
        self.stem_norm = nn.BatchNorm2d(width, dtype=dtype)
        self.blocks = nn.Sequential(*[_ResidualBlock(width, dtype) for _ in range(n_blocks)])
        self.output = nn.Linear(width, n_classes, dtype=dtype)

    def forward(self, X):
        """Logits of the images.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, 1, s, s)
            The inputs.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
        """
        out = torch.relu(self.stem_norm(self.stem(_images(X, self.image_size))))
        out = self.blocks(out)
        return self.output(out.mean((2, 3)))


class TransformerClassifier(nn.Module):
    """A small Transformer encoder that reads an image's rows as a sequence of tokens.

    Input of shape (n, rows, row_length) (or anything that reshapes to it, such as
    (n, 1, 8, 8) images): each row is a token, embedded by ``nn.Linear(row_length, d_model)``
    plus a learned positional embedding, passed through ``n_layers``
    :class:`torch.nn.TransformerEncoderLayer` (multi-head self-attention, LayerNorm, a
    feed-forward block; no dropout by default), mean-pooled over tokens, normalised by a
    LayerNorm and mapped to the logits by a linear head.

    Parameters
    ----------
    d_model : int, default=16
        Token width.
    n_heads : int, default=2
        Attention heads (must divide ``d_model``).
    dim_feedforward : int, default=32
        Width of the feed-forward block.
    n_layers : int, default=1
        Number of encoder layers.
    n_classes : int, default=10
        Number of logits.
    n_tokens : int, default=8
        Sequence length (image rows).
    token_size : int, default=8
        Features per token (row length).
    dropout : float, default=0.0
        Dropout of the encoder layers (applied only while training).
    dtype : torch.dtype or None, default=None
        Parameter dtype; None uses torch's default (float32).

    Examples
    --------
    >>> import torch
    >>> from sklearn_influence.datasets import TransformerClassifier
    >>> _ = torch.manual_seed(0)
    >>> net = TransformerClassifier(d_model=8, dim_feedforward=16).eval()
    >>> net(torch.zeros(5, 8, 8)).shape
    torch.Size([5, 10])
    """

    def __init__(
        self,
        d_model=16,
        n_heads=2,
        dim_feedforward=32,
        n_layers=1,
        n_classes=10,
        *,
        n_tokens=8,
        token_size=8,
        dropout=0.0,
        dtype=None,
    ):
        super().__init__()
        self.n_tokens, self.token_size = n_tokens, token_size
        self.embedding = nn.Linear(token_size, d_model, dtype=dtype)
        self.position = nn.Parameter(0.02 * torch.randn(1, n_tokens, d_model, dtype=dtype))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model,
                n_heads,
                dim_feedforward,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                dtype=dtype,
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model, dtype=dtype)
        self.output = nn.Linear(d_model, n_classes, dtype=dtype)

    def forward(self, X):
        """Logits of the token sequences.

        Parameters
        ----------
        X : torch.Tensor of shape (n_samples, n_tokens, token_size)
            The inputs.

        Returns
        -------
        logits : torch.Tensor of shape (n_samples, n_classes)
        """
        out = self.embedding(X.reshape(len(X), self.n_tokens, self.token_size)) + self.position
        for layer in self.layers:
            out = layer(out)
        return self.output(self.norm(out.mean(1)))
