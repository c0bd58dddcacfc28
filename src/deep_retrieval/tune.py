"""Hyper-parameter search of the Deep Retrieval config on validation users only (`dr tune`).

    summary = run_tune(dataset, Config.builtin("ml1m"), "tune/ml1m", trials=30, metric="recall@20")

Each trial is the base config plus the values the sampler (optuna's TPE, seeded) drew for
the keys of the search space, trained with ``DeepRetrieval(cfg).fit(dataset)`` and scored
by ``evaluate(dataset, {"dr": model}, ks=[k], split="val")``: ``dataset.test`` is never
read. A sample that fails ``Config.validate`` (or that ``fit`` refuses with a ``DRError``)
is a pruned trial. ``train.seed`` is the base config's in every trial.

The search space (``Space``) maps ``"table.key"`` of the config to a range
``{low = .., high = .., log = true}`` (an int or a float key) or ``{choices = [...]}`` (any
scalar key); ``DEFAULT_SPACE`` searches a few of the paper's names. A ``--space`` TOML file
replaces it as a whole::

    "em.alpha" = {low = 1e-6, high = 1e-2, log = true}
    "beam.B" = {low = 10, high = 100}
    "reranker.similarity" = {choices = ["dot", "cosine"]}

The output directory holds the study (``study.sqlite3``, optuna's RDB storage), and after
every trial, written atomically: ``best.toml`` (the best config, for ``dr train --config``),
``trials.md`` (one row per trial) and ``tune.json`` (the setup, every trial, the best).
Running again on the same directory with the same setup continues the study until it holds
N finished (complete or pruned) trials; a trial cut short by a kill or Ctrl-C is run again
first with the same values. The sampler is seeded with ``seed`` + the trials already in
the study, so that a resumed run does not redraw the values of the first one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifacts import (
    HOST_TAG,
    KINDS,
    _alive,
    atomic_write_json,
    atomic_write_text,
    check_output,
    clean_leftovers,
    read_json,
)
from .config import Config, _check_type, read_toml
from .data.dataset import Dataset
from .errors import DRError, InvalidInputError, OutputExistsError

METRICS = ("recall", "ndcg", "precision", "hit", "f1")
STUDY_NAME = "dr-tune"
FILES = ("tune.json", "best.toml", "trials.md", "study.sqlite3", "study.sqlite3-journal")
# keys that are not hyper-parameters: the seed stays fixed so that trials are comparable
NOT_SEARCHED = ("train.seed", "train.threads", "train.progress", "train.device")
# ignored when a rerun is compared with the study's setup (they do not change the result)
NOT_SETUP = ("progress", "threads", "device")

DEFAULT_SPACE: dict[str, dict] = {
    "em.alpha": {"low": 1e-6, "high": 1e-2, "log": True},
    "beam.B": {"low": 5, "high": 100, "log": True},
    "train.lr": {"low": 3e-4, "high": 3e-2, "log": True},
    "train.epochs_joint": {"low": 1, "high": 10},
    "encoder.e": {"choices": [32, 64, 128]},
    "encoder.dropout": {"low": 0.0, "high": 0.5},
    "reranker.temperature": {"low": 0.03, "high": 1.0, "log": True},
    "reranker.similarity": {"choices": ["dot", "cosine"]},
}


def require_optuna():
    """The optuna module; missing, a one-line DRError naming the extra."""
    try:
        import optuna
    except ImportError:
        raise DRError("dr tune needs optuna: pip install 'deep-retrieval[tune]'") from None
    return optuna


# ---------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class Param:
    """One searched config key: a range (``low``..``high``, ``log``) or a list of ``choices``."""

    key: str  # "table.name"
    kind: str  # "int", "float" or "choice"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial) -> object:
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def to_dict(self) -> dict:
        if self.kind == "choice":
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]

    @classmethod
    def from_dict(cls, d: dict, where: str = "search space") -> Space:
        """``{"table.key": {low, high, log} | {choices}}``; ``{table: {key: ...}}`` is read the same way."""
        if not isinstance(d, dict):
            raise InvalidInputError(f"{where}: expected a table")
        flat: dict[str, object] = {}
        for key, spec in d.items():
            if "." not in key and isinstance(spec, dict) and not ({"low", "high", "choices"} & set(spec)):
                flat.update({f"{key}.{k}": v for k, v in spec.items()})  # a [table] of keys
            else:
                flat[key] = spec
        if not flat:
            raise InvalidInputError(f"{where} names no config key to search")
        return cls(tuple(_param(key, spec, where) for key, spec in flat.items()))

    @classmethod
    def from_toml(cls, path) -> Space:
        return cls.from_dict(read_toml(path, "search space file"), f"search space {path}")

    @classmethod
    def default(cls) -> Space:
        return cls.from_dict(DEFAULT_SPACE, "default search space")

    def to_dict(self) -> dict:
        return {p.key: p.to_dict() for p in self.params}


def _field_type(key: str, where: str):
    """The type of config key ``table.name``; an unknown one is a DRError listing the known ones."""
    table, dot, name = key.partition(".")
    tables = typing.get_type_hints(Config)
    if not dot or table not in tables:
        raise InvalidInputError(
            f"{where}: unknown key {key!r}; keys are TABLE.KEY with TABLE in {sorted(tables)}"
        )
    hints = typing.get_type_hints(tables[table])
    if name not in hints:
        raise InvalidInputError(f"{where}: unknown key {key!r}; known in [{table}]: {sorted(hints)}")
    return hints[name]


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _param(key: str, spec, where: str) -> Param:
    at = f"{where} {key!r}"
    tp = _field_type(key, where)
    if key in NOT_SEARCHED:
        raise InvalidInputError(f"{at}: this key is not a hyper-parameter and cannot be searched")
    if typing.get_origin(tp) is tuple:
        raise InvalidInputError(f"{at}: a list-valued key cannot be searched; set it in the config")
    if not isinstance(spec, dict):
        raise InvalidInputError(f"{at}: expected {{low = .., high = .., log = ..}} or {{choices = [...]}}")
    unknown = set(spec) - {"low", "high", "log", "choices"}
    if unknown:
        raise InvalidInputError(f"{at}: unknown field(s) {sorted(unknown)}; use low, high, log or choices")
    if "choices" in spec:
        if set(spec) != {"choices"}:
            raise InvalidInputError(f"{at}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise InvalidInputError(f"{at}: choices must be a non-empty list")
        values = tuple(_check_type(c, tp, at) for c in choices)
        if len(set(values)) != len(values):
            raise InvalidInputError(f"{at}: choices repeat a value")
        return Param(key, "choice", choices=values)
    if tp not in (int, float):
        what = getattr(tp, "__name__", "non-numeric")
        raise InvalidInputError(f"{at}: a {what} key takes choices = [...], not a range")
    if "low" not in spec or "high" not in spec:
        raise InvalidInputError(f"{at}: a range needs both low and high")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if not isinstance(log, bool):
        raise InvalidInputError(f"{at}: log must be true or false")
    if not (_number(low) and _number(high)):
        raise InvalidInputError(f"{at}: low and high must be numbers, got {low!r} and {high!r}")
    if tp is int and not (isinstance(low, int) and isinstance(high, int)):
        raise InvalidInputError(f"{at}: an integer key needs integer low and high, got {low!r} and {high!r}")
    if not low < high:
        raise InvalidInputError(f"{at}: bad range: low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise InvalidInputError(f"{at}: bad range: a log range needs low > 0, got {low}")
    if tp is float:
        low, high = float(low), float(high)
    return Param(key, tp.__name__, low=low, high=high, log=log)


def parse_metric(metric: str) -> tuple[str, int]:
    """``"recall@20"`` -> ``("recall", 20)``."""
    name, at, k = metric.strip().partition("@")
    if not at or name not in METRICS or not k.isdigit() or int(k) < 1:
        raise InvalidInputError(
            f"--metric must be NAME@K with NAME in {list(METRICS)} and K >= 1, got {metric!r}"
        )
    return name, int(k)


# ---------------------------------------------------------------------------- the study
def trial_config(base: Config, params: dict) -> Config:
    """``base`` with ``params`` (``{"table.key": value}``) set; validated (a DRError if not valid)."""
    d = base.to_dict()
    for key, v in params.items():
        table, _, name = key.partition(".")
        d[table][name] = v
    return Config.from_dict(d, "sampled config")


def _data_id(ds: Dataset) -> str:
    """sha256 of the training rows, the catalogue size and the validation split (never the test split)."""
    from .state import data_fingerprint

    h = hashlib.sha256(data_fingerprint(ds).encode())
    v = ds.val
    for a in (v.users, v.hist.offsets, v.hist.values, v.truth.offsets, v.truth.values):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()


def _setup(ds: Dataset, base: Config, metric: str, space: Space, seed: int, exclude_history: bool) -> dict:
    cfg = base.to_dict()
    for k in NOT_SETUP:
        cfg["train"].pop(k)
    setup = {"data": _data_id(ds), "metric": metric, "exclude_history": exclude_history, "seed": seed,
             "space": space.to_dict(), "config": cfg}
    return json.loads(json.dumps(setup))  # tuples -> lists, as read back from tune.json


def is_tune_dir(path) -> bool:
    path = Path(path)
    return path.is_dir() and KINDS["tune"].is_kind(path)


def prepare_dir(out, setup: dict, force: bool, inputs=()) -> bool:
    """Check ``out`` (see ``artifacts.check_output``), start it or find it resumable; True = resume.

    An existing tune directory is continued when its setup equals ``setup`` and refused
    otherwise (``force`` starts afresh, removing only the files a tune run writes).
    """
    out = Path(out)
    clean_leftovers(out)
    existing = is_tune_dir(out)
    check_output(out, "tune", replace=force or existing, inputs=inputs)
    if existing and not force:
        old = read_json(out / "tune.json", "tune summary").get("setup")
        if old != setup:
            old = old if isinstance(old, dict) else {}
            differ = ", ".join(sorted(k for k in setup if old.get(k) != setup[k]))
            raise OutputExistsError(
                f"output {out} holds a tune study of another setup (different {differ or 'setup'}); "
                "use another --out, or --force to start afresh"
            )
        return True
    if existing:
        for name in FILES:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "tune.json", _summary(setup, [], None))  # marks the directory as ours
    return False


def _summary(setup: dict, rows: list[dict], best: dict | None) -> dict:
    states = [r["state"] for r in rows]
    return {
        "kind": "dr tune",
        "metric": setup["metric"],
        "direction": "maximize",
        "split": "val",
        "n_trials": len(rows),
        "states": {s: states.count(s) for s in ("complete", "pruned", "fail", "running")},
        "best": best,
        "best_config": "best.toml" if best else None,
        "setup": setup,
        "trials": rows,
    }


def _rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if state == "waiting":
            continue
        rows.append({
            "trial": t.number, "params": dict(t.params), "value": t.value if state == "complete" else None,
            "seconds": t.user_attrs.get("seconds"), "state": state, "note": t.user_attrs.get("note", ""),
        })
    return rows


def _best(rows: list[dict]) -> dict | None:
    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        return None
    r = max(done, key=lambda r: (r["value"], -r["trial"]))  # ties: the earliest trial
    return {"trial": r["trial"], "value": r["value"], "params": r["params"]}


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trials_table(rows: list[dict], metric: str) -> str:
    lines = [f"| trial | params | {metric} | seconds | state |", "|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
        value = "" if r["value"] is None else f"{r['value']:.4f}"
        secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        state = r["state"] + (f": {r['note']}" if r["note"] else "")
        lines.append(f"| {r['trial']} | {params} | {value} | {secs} | {state.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_outputs(out, study, base: Config, setup: dict) -> dict:
    """best.toml, trials.md and tune.json from the study, each written atomically; the summary."""
    out = Path(out)
    rows = _rows(study)
    best = _best(rows)
    if best is not None:
        cfg = trial_config(base, best["params"])
        finished = sum(r["state"] in ("complete", "pruned") for r in rows)
        head = (f"# dr tune: the best of {finished} finished trials (trial {best['trial']}), "
                f"{setup['metric']} = {best['value']:.4f} on the validation users\n")
        atomic_write_text(out / "best.toml", head + cfg.to_toml())
    atomic_write_text(out / "trials.md", f"# dr tune: {setup['metric']} on the validation users\n\n"
                      + trials_table(rows, setup["metric"]))
    summary = _summary(setup, rows, best)
    atomic_write_json(out / "tune.json", summary)
    return summary


def _recover(study, optuna) -> None:
    """Trials left RUNNING by a run that was killed: marked failed, their values queued again."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid, host = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if host != HOST_TAG or (isinstance(pid, int) and _alive(pid)):
            where = "on another machine" if host != HOST_TAG else f"in process {pid}"
            raise DRError(f"trial {t.number} of this study is running {where}; wait for it, or start "
                          "afresh with --force")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={"note": f"rerun of trial {t.number}"})


def _quiet(_msg) -> None:
    pass


def run_tune(
    dataset: Dataset,
    base: Config,
    out: str | os.PathLike,
    trials: int,
    metric: str = "recall@20",
    space: Space | None = None,
    seed: int = 0,
    timeout_minutes: float | None = None,
    exclude_history: bool = False,
    force: bool = False,
    inputs=(),
    log: Callable[[str], object] = print,
    progress: bool = True,
) -> dict:
    """Search ``base``'s config on the validation users until the study in ``out`` holds
    ``trials`` finished trials (or ``timeout_minutes`` of this run have passed; a trial under
    way finishes); return the summary written to ``out/tune.json``."""
    from tqdm.auto import tqdm

    from .evaluate import evaluate
    from .model import DeepRetrieval
    from .state import resolve_device

    optuna = require_optuna()
    TrialState = optuna.trial.TrialState
    name, k = parse_metric(metric)
    if trials < 1:
        raise InvalidInputError(f"--trials must be >= 1, got {trials}")
    space = space or Space.default()
    if not (dataset.val.truth.lengths > 0).any():
        raise InvalidInputError("the data set has no validation user with ground truth; dr tune scores "
                                "trials on validation users (dr prepare --val-users N)")
    resolve_device(base.train.device)  # a missing GPU is one error here, not a pruned trial each time
    setup = _setup(dataset, base, f"{name}@{k}", space, seed, exclude_history)
    resumed = prepare_dir(out, setup, force, inputs)
    out = Path(out)
    storage = f"sqlite:///{(out / 'study.sqlite3').resolve()}"
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=storage, direction="maximize", load_if_exists=True
    )
    _recover(study, optuna)
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if resumed:
        log(f"continuing the study in {out}: {done} of {trials} trials finished")
    summary = write_outputs(out, study, base, setup)
    t_start = time.monotonic()
    bar = tqdm(total=trials, initial=min(done, trials), desc="dr tune", unit="trial", disable=not progress)
    try:
        while done < trials:
            if timeout_minutes is not None and time.monotonic() - t_start > timeout_minutes * 60:
                log(f"timeout: {timeout_minutes:g} minutes passed; stopping after {done} of {trials} trials")
                break
            trial = study.ask()
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("host", HOST_TAG)
            t0 = time.perf_counter()
            state, value, note = TrialState.COMPLETE, None, ""
            try:
                params = {p.key: p.suggest(trial) for p in space.params}
                cfg = trial_config(base, params)  # DRError: not a valid config
                cfg.train.progress = False
                model = DeepRetrieval(cfg).fit(dataset, log=_quiet)
                result = evaluate(dataset, {"dr": model}, ks=[k], split="val",
                                  exclude_history=exclude_history, latency_users=0)
                value = float(next(r[name] for r in result["results"] if r["k"] == k))
                del model
            except DRError as e:
                state, note = TrialState.PRUNED, " ".join(str(e).split())
            except BaseException as e:  # a bug or an interrupt: the trial fails, the outputs stay consistent
                interrupted = isinstance(e, KeyboardInterrupt)
                trial.set_user_attr("note", "interrupted" if interrupted else f"{type(e).__name__}: {e}")
                study.tell(trial, state=TrialState.FAIL)
                if interrupted:  # the next run tries these values first
                    again = {"note": f"rerun of trial {trial.number}"}
                    study.enqueue_trial(dict(trial.params), user_attrs=again)
                write_outputs(out, study, base, setup)
                raise
            seconds = time.perf_counter() - t0
            trial.set_user_attr("seconds", seconds)
            if note:
                trial.set_user_attr("note", note)
            if state == TrialState.COMPLETE:
                study.tell(trial, value)
            else:
                study.tell(trial, state=state)
            done += 1
            summary = write_outputs(out, study, base, setup)
            shown = f"{value:.4f}" if value is not None else f"pruned ({note})"
            msg = (f"trial {trial.number}: {name}@{k} = {shown} in {seconds:.1f}s; "
                   + ", ".join(f"{p}={_fmt(v)}" for p, v in trial.params.items()))
            if progress:
                bar.write(msg)
            else:
                log(msg)
            bar.update(1)
            if summary["best"] is not None:
                bar.set_postfix({f"best {name}@{k}": f"{summary['best']['value']:.4f}"})
    finally:
        bar.close()
    best = summary["best"]
    if best is None:
        log(f"no trial completed ({summary['states']['pruned']} pruned); see {out / 'trials.md'}")
    else:
        log(f"best {name}@{k} = {best['value']:.4f} on the validation users (trial {best['trial']}; "
            f"{done} trials finished); config in {out / 'best.toml'}")
    return summary


