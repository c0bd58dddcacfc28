"""deep-retrieval: Deep Retrieval (Gao et al. 2020) for large-scale recommendation."""

__version__ = "0.1.0"
