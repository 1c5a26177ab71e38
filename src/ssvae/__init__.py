"""Semi-supervised VAEs on MNIST with 100 labels: a PyTorch port of clinicalml/vae_ssl."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ssvae")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
