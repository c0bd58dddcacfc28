"""deep-retrieval: Deep Retrieval (Gao et al. 2020) for large-scale recommendation.

    from deep_retrieval import Config, Dataset, DeepRetrieval, prepare, evaluate
"""

from .config import Config
from .data.dataset import Dataset, Ragged
from .data.prepare import prepare
from .errors import DRError
from .evaluate import evaluate
from .model import DeepRetrieval

__version__ = "0.1.0"
__all__ = ["Config", "DRError", "Dataset", "DeepRetrieval", "Ragged", "evaluate", "prepare"]
