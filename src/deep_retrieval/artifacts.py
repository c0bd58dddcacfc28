"""Safe outputs: every artefact is written under a temporary name, then renamed, and
nothing is ever replaced that is not an artefact of the same kind.

Kinds (``KINDS``), each recognised by its marker files:

    dataset     a prepared data set (``Dataset.save``): manifest.json with format_version + arrays.npz
    synth       synthetic data (``dr synth``): a data set + planted.npz
    model       a DR or YouTube-DNN model (``write_model_dir``): meta.json with format_version
                + config.toml
    baseline    a saved baseline (``baselines.py``): recommender.json
    retriever   a fast retriever (``Retriever.save``): meta.json with format_version, K and D
    demo        ``dr demo``'s output: only results.json, report.md, paths.png, training.png, model/
    experiment  ``dr experiment``'s RESULTS/<name>: only results.json and table.md
    results-json a results file (``dr evaluate --json``): a JSON object with "results"
    tune        ``dr tune``'s output: tune.json with kind, setup and trials (+ study.sqlite3, ...)

``check_output`` is the pre-flight check every writer (and the CLI, before any work) runs:
it refuses a target that is a file, a non-empty directory of another kind, a same-kind
artefact unless ``replace``, ``.`` or a directory holding the current one, an input or a
directory holding one, a path under a file, or a place that cannot be written.

Temporary names are ``.NAME.tmp-PID-HHHHHHHHRRRRRRRR`` and ``.NAME.old-PID-...`` beside
the target (H: this machine, ``HOST_TAG``; R: random). Leftovers of a process of this
machine that no longer runs are removed by the next write to the same target (an ``.old``
one is put back when the target is missing: it is the last complete artefact); those of
another machine sharing the file system are left alone. Everything gets the default
modes, so the umask applies.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DRError, DRFileNotFoundError, InvalidInputError, OutputExistsError, OutputNotWritableError


def _json_obj(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _has_json_keys(path: Path, *keys: str) -> bool:
    obj = _json_obj(path)
    return obj is not None and all(k in obj for k in keys)


def _only(names: set[str]) -> Callable[[Path], bool]:
    """A kind written in place: a directory holding nothing but ``names`` (and their temporaries)."""

    def check(p: Path) -> bool:
        entries = [e.name for e in p.iterdir()]
        return bool(entries) and all(e in names or _temp_of(e) in names for e in entries)

    return check


@dataclass(frozen=True)
class Kind:
    description: str
    is_kind: Callable[[Path], bool]  # path -> is an artefact of this kind (path exists)


def _is_replay(p: Path) -> bool:
    """A time-replay directory (data/replay.py): a manifest naming the protocol, and base/."""
    try:
        m = json.loads((p / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    protocol = m.get("protocol") if isinstance(m, dict) else None
    return isinstance(protocol, dict) and protocol.get("name") == "time-replay" and (p / "base").is_dir()


def _is_dataset(p: Path) -> bool:
    return (
        p.is_dir() and _has_json_keys(p / "manifest.json", "format_version") and (p / "arrays.npz").is_file()
        and not _is_replay(p)
    )


KINDS: dict[str, Kind] = {
    "dataset": Kind("prepared data set", _is_dataset),
    "synth": Kind("synthetic data set", lambda p: _is_dataset(p) and ((p / "planted.npz").is_file()
                                                                   or (p / "latent.npz").is_file())),
    "model": Kind(
        "model",
        lambda p: p.is_dir()
        and _has_json_keys(p / "meta.json", "format_version")
        and (p / "config.toml").is_file(),
    ),
    "baseline": Kind("saved baseline", lambda p: p.is_dir() and _has_json_keys(p / "recommender.json")),
    "retriever": Kind(
        "fast retriever", lambda p: p.is_dir() and _has_json_keys(p / "meta.json", "format_version", "K", "D")
    ),
    "demo": Kind(
        "dr demo output",
        lambda p: p.is_dir()
        and _only({"results.json", "report.md", "paths.png", "training.png", "model"})(p)
        and (not (p / "model").exists() or KINDS["model"].is_kind(p / "model")),
    ),
    "experiment": Kind(
        "dr experiment result", lambda p: p.is_dir() and _only({"results.json", "table.md"})(p)
    ),
    "results-json": Kind("results JSON", lambda p: p.is_file() and _has_json_keys(p, "results")),
    "replay": Kind("time-replay data", lambda p: p.is_dir() and _is_replay(p)),
    # `dr tune`'s output (tune.py), written in place: a rerun with the same setup continues it
    "tune": Kind(
        "dr tune study", lambda p: p.is_dir() and _has_json_keys(p / "tune.json", "kind", "setup", "trials")
    ),
}
FILE_KINDS = ("results-json",)
REPLACED_KINDS = ("synth", "dataset", "model", "baseline", "retriever", "replay")  # by atomic_dir, as a whole


def kind_of(path: str | os.PathLike) -> str | None:
    """The first kind ``path`` is an artefact of (synth before dataset), or None."""
    path = Path(path)
    if not path.exists():
        return None
    return next((k for k in ("synth", *KINDS) if KINDS[k].is_kind(path)), None)


# ---------------------------------------------------------------------------- pre-flight
def _writable(p: Path) -> bool:
    return os.access(p, os.W_OK | (os.X_OK if p.is_dir() else 0))


def _existing_ancestor(path: Path) -> Path:
    """The nearest existing path among ``path`` and its parents."""
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _listing(path: Path, n: int = 3) -> str:
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in path.iterdir())
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_output(
    path: str | os.PathLike,
    kind: str,
    *,
    replace: bool = True,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Refuse (one-line ``DRError``) an output target we must not write; return it as a Path.

    ``replace``: whether an existing artefact of the same ``kind`` may be replaced (the
    Python API: yes; the CLI: only with ``--force``). ``inputs``: paths the command reads,
    which the output must neither be nor contain. Nothing is created.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown artefact kind {kind!r}")
    path = Path(path)
    desc = KINDS[kind].description
    if str(path) == "" or path.name in ("", ".", ".."):
        raise InvalidInputError(f"output {str(path)!r} must name a new directory or file, not '.' or '..'")
    if "\x00" in str(path):
        raise InvalidInputError(f"output {str(path)!r} contains a NUL character")
    full = path.resolve()
    cwd = Path.cwd().resolve()
    if full == cwd or full in cwd.parents:
        raise InvalidInputError(f"output {path} is the current directory or contains it; choose a new path")
    for inp in inputs:
        inp_full = Path(inp).resolve()
        if full == inp_full:
            raise InvalidInputError(f"output {path} is one of the inputs ({inp})")
        if full in inp_full.parents:
            raise InvalidInputError(f"output {path} contains the input {inp}; choose a new path")
    anc = _existing_ancestor(path)
    anc_full = anc.resolve()
    for a in [anc_full, *anc_full.parents] if anc != path else full.parents:
        # inside an artefact that is replaced as a whole: replacing it would delete ours
        found = next((k for k in REPLACED_KINDS if KINDS[k].is_kind(a)), None) if a.is_dir() else None
        if found is not None:
            raise InvalidInputError(
                f"output {path} is inside a {KINDS[found].description} ({a}); choose a path outside it"
            )
    if anc != path:
        if not anc.is_dir():
            raise InvalidInputError(f"output {path}: {anc} is a file, not a directory")
        if not _writable(anc):
            raise OutputNotWritableError(f"output {path}: directory {anc} is not writable")
        return path
    # the target exists
    if kind in FILE_KINDS:
        if path.is_dir():
            raise OutputExistsError(f"output {path} is a directory; give a file name")
        if not KINDS[kind].is_kind(path):
            raise OutputExistsError(f"output {path} exists and is not a {desc}; not replacing it")
        if not replace:
            raise OutputExistsError(f"output {path} already is a {desc}; give --force to replace it")
    elif not path.is_dir():
        raise OutputExistsError(f"output {path} exists and is a file; give a directory name")
    elif any(path.iterdir()) and not KINDS[kind].is_kind(path):
        found = kind_of(path)
        what = f"a {KINDS[found].description}" if found else f"not a {desc} (it holds {_listing(path)})"
        raise OutputExistsError(f"output directory {path} exists and is {what}; not replacing it")
    elif any(path.iterdir()) and not replace:
        raise OutputExistsError(f"output {path} already holds a {desc}; give --force to replace it")
    parent = path.parent
    if not _writable(parent) or not _writable(path):
        where = path if _writable(parent) else parent
        raise OutputNotWritableError(f"output {path}: {where} is not writable")
    return path


# ---------------------------------------------------------------------------- temporaries
def _temp_of(name: str) -> str | None:
    """``NAME`` for a temporary ``.NAME.tmp-PID-XXXX`` / ``.NAME.old-PID-XXXX``, else None."""
    if not name.startswith("."):
        return None
    for tag in (".tmp-", ".old-"):
        base, sep, rest = name[1:].rpartition(tag)
        if sep and base and rest.count("-") == 1 and rest.split("-")[0].isdigit():
            return base
    return None


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, which races with threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _apply_umask(root: Path) -> None:
    """Give everything under ``root`` the default modes (0666 / 0777 less the umask), whatever
    the library that wrote it chose (safetensors writes 0600)."""
    mask = _umask()
    os.chmod(root, 0o777 & ~mask)
    for d, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(d, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(d, name), 0o666 & ~mask)


HOST_TAG = f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _temp_name(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{HOST_TAG}{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` beside ``path`` whose PID (on this
    machine) no longer runs.

    A dead ``.old`` directory that is an artefact is the last complete one when ``path``
    itself is missing (a kill between the two renames): it is renamed back instead.
    Returns what was removed.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    removed = []
    for tag in ("old", "tmp"):  # restore an .old before anything else
        prefix = f".{path.name}.{tag}-"
        for e in sorted(parent.iterdir()):
            rest = e.name[len(prefix):] if e.name.startswith(prefix) else ""
            pid, _, token = rest.partition("-")
            if not pid.isdigit() or not token.startswith(HOST_TAG) or "-" in token or _alive(int(pid)):
                continue
            if tag == "old" and not os.path.lexists(path) and kind_of(e) is not None:
                os.rename(e, path)
                continue
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e)
            removed.append(e)
    return removed


# ---------------------------------------------------------------------------- writers
@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield a new temporary directory beside ``path``; rename it to ``path`` on success.

    ``path`` must be absent, an empty directory or an artefact of ``kind`` (which is
    replaced); anything else is refused before the body runs (see ``check_output``), and
    checked again before the rename. On any exception the temporary directory is removed
    and ``path`` is untouched, so no half-written output is ever left behind.
    """
    clean_leftovers(path)
    path = check_output(path, kind, replace=True, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path, "tmp")
    os.mkdir(tmp)
    try:
        yield tmp
        _apply_umask(tmp)
        check_output(path, kind, replace=True, inputs=inputs)  # nothing foreign appeared meanwhile
        if path.is_dir() and any(path.iterdir()):
            old = _temp_name(path, "old")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)  # onto nothing or an empty directory
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory.

    ``path`` may be absent or a file (replaced); a directory is refused.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"output {path} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = _temp_name(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "file") -> dict:
    """Read a JSON object, turning a missing or corrupt file into a one-line DRError."""
    path = Path(path)
    if not path.is_file():
        raise DRFileNotFoundError(f"{what} {path} not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DRError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise DRError(f"{what} {path} does not hold a JSON object")
    return obj


def read_npz(path: str | os.PathLike, what: str) -> dict:
    """Every array of an ``.npz`` file (no pickles); a missing or corrupt file is one DRError
    naming ``what`` (e.g. "data set data/ml1m")."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DRError(f"{what} has no {Path(path).name}") from None
    except Exception as e:  # zipfile / value errors from a corrupt file
        raise DRError(f"{what}: {Path(path).name} is corrupt ({e})") from None
