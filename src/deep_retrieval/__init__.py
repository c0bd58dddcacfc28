"""deep-retrieval: Deep Retrieval (Gao et al. 2020) for large-scale recommendation.

    from deep_retrieval import Config, Dataset, DeepRetrieval, prepare, evaluate
"""

import os
import tempfile
from pathlib import Path


def numba_cache_dir(environ: dict, package_dir: Path, uid: int) -> str | None:
    """Where numba should cache compiled code, or None to leave numba's own choice.

    numba caches next to the source (``__pycache__``) or under the user's home and raises
    at import when neither is writable. So when the user has not set NUMBA_CACHE_DIR and
    the package's ``__pycache__`` cannot be written, use a private per-user directory
    under the system temporary directory (created 0700; if it exists but is not ours
    and private, a fresh ``mkdtemp`` directory instead: cache files are pickles).
    """
    if environ.get("NUMBA_CACHE_DIR"):
        return None
    cache = package_dir / "__pycache__"
    target = cache if cache.is_dir() else package_dir
    if os.access(target, os.W_OK | os.X_OK):
        return None
    d = Path(tempfile.gettempdir()) / f"deep-retrieval-numba-{uid}"
    try:
        d.mkdir(mode=0o700, exist_ok=True)
        st = d.lstat()
        if d.is_dir() and not d.is_symlink() and st.st_uid == uid and not st.st_mode & 0o077:
            return str(d)
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="deep-retrieval-numba-")


_cache = numba_cache_dir(os.environ, Path(__file__).parent, os.getuid())
if _cache is not None:  # before anything imports numba (mstep.py's @njit(cache=True))
    os.environ["NUMBA_CACHE_DIR"] = _cache

from .config import Config  # noqa: E402
from .data.dataset import Dataset, Ragged  # noqa: E402
from .data.prepare import prepare  # noqa: E402
from .errors import DRError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .model import DeepRetrieval  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Config", "DRError", "Dataset", "DeepRetrieval", "Ragged", "evaluate", "prepare"]
