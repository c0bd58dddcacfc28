"""The `dr` command. Thin: it parses options and calls the library.

Every user mistake (a DRError, or a click usage error) prints one line `error: ...` and
exits 2. Every command that writes checks its output target before any work
(``artifacts.check_output``): it refuses a file, a directory that is not empty and not an
artefact of the same kind, ``.`` or an input (or a directory holding one), and a place it
cannot write; an artefact of the same kind is replaced only with ``--force``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from .errors import DRError, InvalidInputError


def _ints(text: str, what: str, minimum: int | None = None) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not out:
        raise InvalidInputError(f"{what} is empty")
    if minimum is not None and min(out) < minimum:
        raise InvalidInputError(f"{what} must be >= {minimum}, got {min(out)}")
    return out


def _floats(text: str, what: str, positive: bool = False) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not out or not all(math.isfinite(x) for x in out):
        raise InvalidInputError(f"{what} must be finite numbers, got {text!r}")
    if positive and min(out) <= 0:
        raise InvalidInputError(f"{what} must be > 0, got {min(out)}")
    return out


def _check_out(path, kind: str, force: bool, inputs=()) -> None:
    """Refuse a bad output target before any work (see ``artifacts.check_output``), after
    removing the leftovers of a killed run on it."""
    from .artifacts import check_output, clean_leftovers

    clean_leftovers(path)
    check_output(path, kind, replace=force, inputs=inputs)


def _force_option(what: str):
    return click.option("--force", is_flag=True, help=f"Replace an existing {what} at the output path "
                        "(anything else there is never replaced).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deep-retrieval")
def cli() -> None:
    """Deep Retrieval: learn a K x D path structure from interactions and retrieve with it.

    Typical flow: `dr prepare` (or `dr synth`) -> `dr train` -> `dr evaluate` / `dr retrieve`
    / `dr serve`. `dr demo` runs it all on built-in synthetic data.
    """


# ---------------------------------------------------------------------------- prepare
@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--out", required=True, help="Output data set directory (written atomically).")
@_force_option("prepared data set")
@click.option("--format", "fmt", default="auto", show_default=True,
              help="auto, ml-100k, ml-dat, ml-csv, csv, parquet, kgat or lastfm.")
@click.option("--protocol", default="user-split", show_default=True,
              help="user-split (the paper's), given-split (INPUT = train file, INPUT2 = test file) or "
                   "time-replay (a base period + --chunks time-ordered chunks; see `dr update`).")
@click.option("--user-col", default=None, help="User column (csv/parquet).")
@click.option("--item-col", default=None, help="Item column (csv/parquet).")
@click.option("--time-col", default=None, help="Timestamp column (csv/parquet).")
@click.option("--rating-col", default=None, help="Rating column (csv/parquet).")
@click.option("--sep", default=None, help="Field separator (csv); sniffed when absent.")
@click.option("--min-rating", type=float, default=None,
              help="Keep rating >= this [default: 4.0 where ratings exist].")
@click.option("--min-user-interactions", type=int, default=10, show_default=True,
              help="user-split: keep users with at least this many interactions (after the rating filter).")
@click.option("--val-users", type=int, default=None,
              help="Validation users [default: min(1000, 10% of eligible users)].")
@click.option("--test-users", type=int, default=None,
              help="user-split: test users [default: min(1000, 10% of eligible users)].")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="given-split: share of a validation user's training items held out.")
@click.option("--max-seq-len", type=int, default=69, show_default=True,
              help="Longest history a training example feeds the model (recorded for training).")
@click.option("--keep-duplicates", is_flag=True,
              help="user-split: keep a repeated (user, item) pair as repeat events [default: keep its "
                   "first occurrence in time order].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the evaluation user draw.")
@click.option("--chunks", type=click.IntRange(min=1), default=4, show_default=True,
              help="time-replay: time-ordered chunks after the base period.")
@click.option("--base-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="time-replay: share of the interactions (in time) in the base period.")
@click.option("--min-history", type=click.IntRange(min=1), default=5, show_default=True,
              help="time-replay: earlier interactions a user needs to be evaluated on a chunk.")
def prepare(inputs, out, force, fmt, protocol, chunks, base_fraction, min_history, **kw) -> None:
    """Read interaction logs and write a prepared data set directory.

    Rows with a missing or NaN field are dropped and duplicate (user, item) rows collapsed;
    both counts are printed and kept in the manifest. time-replay writes a replay directory
    (data/replay.py): its base/ is a data set `dr train` takes, and each chunk is a log for
    `dr update`, with an evaluation set per chunk.
    """
    from .data.prepare import prepare as run

    if protocol != "time-replay":
        _check_out(out, "dataset", force, inputs)
        run(list(inputs), out, fmt=fmt, protocol=protocol, log=click.echo, **kw)
        return
    from .data.readers import read
    from .data.replay import time_replay
    from .errors import InvalidInputError

    _check_out(out, "replay", force, inputs)
    if len(inputs) != 1:
        raise InvalidInputError(f"protocol time-replay needs one input file, got {len(inputs)}")
    cols = {k: kw[k] for k in ("user_col", "item_col", "time_col", "rating_col", "sep")}
    val_users = 50 if kw["val_users"] is None else kw["val_users"]
    inter = read(inputs[0], fmt, **cols)
    rp = time_replay(inter, chunks, base_fraction=base_fraction, min_history=min_history,
                     val_users=val_users, min_rating=kw["min_rating"], seed=kw["seed"])
    rp.save(out)
    click.echo(f"time replay: base {int(rp.offsets[0]):,} interactions, {rp.n_chunks} chunks of "
               f"{', '.join(f'{int(b - a):,}' for a, b in zip(rp.offsets[:-1], rp.offsets[1:], strict=True))}"
               f"; evaluation users per chunk {[len(e) for e in rp.evals]}; saved to {out}")


# ---------------------------------------------------------------------------- synth
@cli.command()
@click.option("--out", required=True, help="Output data set directory (written atomically).")
@_force_option("synthetic data set")
@click.option("--preset", type=click.Choice(["demo", "default", "large", "personal", "latent"]),
              default="default", show_default=True,
              help="demo: 5k items in planted clusters; default: 100k; large: 1.5M items; personal: --items "
                   "(default 100k) "
                   "in communities of 40, users drawn to 6 of them (sizes scale with --items); "
                   "latent: 50k items, users draw from a softmax over low-rank factors + popularity "
                   "(no clusters; the data of `dr demo`).")
@click.option("--items", "n_items", type=int, default=None, help="Number of items (preset's by default).")
@click.option("--users", "n_users", type=int, default=None, help="Number of users (preset's by default).")
@click.option("--interactions", "n_interactions", type=int, default=None,
              help="Total interactions to draw (preset's by default).")
@click.option("--clusters", "n_clusters", type=int, default=None, help="0 = auto (V/50). Not with latent.")
@click.option("--item-zipf", type=float, default=None,
              help="Popularity skew of the items (inside a cluster; Zipf exponent; preset's value "
                   "by default).")
@click.option("--cluster-zipf", type=float, default=None,
              help="Popularity skew across clusters (Zipf exponent; preset's value by default). "
                   "Not with latent.")
@click.option("--dim", type=int, default=None, help="latent only: rank of the factors (default 16).")
@click.option("--beta", type=float, default=None,
              help="latent only: strength of taste against popularity (default 3).")
@click.option("--val-users", type=int, default=None, help="Validation users (preset's by default).")
@click.option("--test-users", type=int, default=None, help="Test users (preset's by default).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the generator.")
def synth(out, force, preset, seed, **kw) -> None:
    """Generate synthetic interactions with planted clusters or latent factors (and write the truth)."""
    from dataclasses import replace

    from .data.latent import LatentConfig, synth_latent
    from .data.synth import SynthConfig
    from .data.synth import synth as run

    unused = ({"--clusters": "n_clusters", "--cluster-zipf": "cluster_zipf"} if preset == "latent"
              else {"--dim": "dim", "--beta": "beta"})  # options of the other generator
    given = [opt for opt, key in unused.items() if kw[key] is not None]
    if given:
        raise DRError(f"{', '.join(given)}: not used by --preset {preset}")
    _check_out(out, "synth", force)
    kw = {k: v for k, v in kw.items() if v is not None and k not in unused.values()}
    if preset == "latent":
        synth_latent(out, replace(LatentConfig(seed=seed), **kw), log=click.echo)
        return
    if preset == "personal":  # its sizes follow the number of items
        base = SynthConfig.personal(kw.pop("n_items", None) or 100_000, seed=seed)
    else:
        base = {"demo": SynthConfig.demo, "large": SynthConfig.large}.get(preset, SynthConfig)(seed=seed)
    run(out, replace(base, **kw), log=click.echo)


# ---------------------------------------------------------------------------- train
@cli.command()
@click.argument("data")
@click.option("--config", default=None,
              help="A TOML file or a built-in config name (see `dr configs`); defaults otherwise.")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override one config value, e.g. --set structure.K=100 (repeatable).")
@click.option("--out", required=True, help="Model directory (written atomically).")
@_force_option("model")
@click.option("--device", default=None,
              help="auto, cpu, cuda or cuda:N: where the E-step, the M-step's score collection and "
                   "validation run [default: the config's train.device, auto = a GPU if torch sees one].")
@click.option("--checkpoint-every", "checkpoint_every", type=click.FloatRange(min=0), default=10.0,
              show_default=True,
              help="Minutes between checkpoints of the whole training state, written atomically to "
                   "OUT.ckpt (removed once the model is saved); 0 = no checkpoints.")
@click.option("--resume", is_flag=True,
              help="Continue the run whose checkpoint is OUT.ckpt (same DATA; its config is used, so "
                   "--config/--set are refused); ends with the model the uninterrupted run would have.")
def train(data, config, overrides, out, force, device, checkpoint_every, resume) -> None:
    """Train Deep Retrieval on a prepared data set.

    With a [blend] table in the config (e.g. --set blend.scorer=rp3beta), training ends by
    fitting that baseline and picking the blend's weight on the validation users; the saved
    model then ranks its candidates by the blend (README, "A model that carries its blend").

    Data parallel on several processes or machines: `torchrun --nproc_per_node N -m
    deep_retrieval.cli train ...` (gloo on CPUs, NCCL on GPUs; rank 0 writes the model and
    the checkpoints, every rank resumes from them).
    """
    import os

    import torch
    import torch.distributed as dist

    from .config import load_config
    from .data.dataset import Dataset
    from .errors import DRError
    from .model import DeepRetrieval
    from .state import Checkpointer, checkpoint_path, data_fingerprint, resolve_device

    _check_out(out, "model", force, [data])
    ckpt = checkpoint_path(out)
    if resume and (config is not None or overrides):
        raise DRError("--resume continues a run with the config saved in its checkpoint: "
                      "drop --config/--set")
    if resume and not ckpt.is_file():
        raise DRError(f"--resume: no checkpoint at {ckpt}")
    if not resume and ckpt.exists() and not force:
        raise DRError(f"a checkpoint of an unfinished run is at {ckpt}: continue it with --resume, "
                      "or start afresh with --force (which overwrites it)")
    cfg = None if resume else load_config(config, overrides)
    if device is not None:
        resolve_device(device)  # a bad name or a missing GPU is refused before any work
    ds = Dataset.load(data)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dev = resolve_device(device or (cfg.train.device if cfg else "auto"))
        if dev.type == "cuda":  # one GPU per process, NCCL between them
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        checkpoint = (Checkpointer(ckpt, data_fingerprint(ds), minutes=checkpoint_every)
                      if checkpoint_every > 0 else None)
        model = DeepRetrieval(cfg).fit(ds, log=click.echo, checkpoint=checkpoint,
                                       resume=ckpt if resume else None, device=device)
        if not distributed or dist.get_rank() == 0:
            model.save(out)
            click.echo(f"saved model to {out}")
            if ckpt.exists():  # the run is complete: its checkpoint (ours) is no longer needed
                ckpt.unlink()
    finally:
        if distributed:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------- update
@cli.command()
@click.argument("model_dir")
@click.argument("new_log")
@click.option("--out", required=True, help="Updated model directory (written atomically; may be MODEL_DIR "
                                           "itself with --force).")
@_force_option("model")
@click.option("--format", "fmt", default="auto", show_default=True,
              help="NEW_LOG's format, as for `dr prepare` (auto, ml-100k, ml-dat, ml-csv, csv, parquet...).")
@click.option("--user-col", default=None, help="User column (csv/parquet).")
@click.option("--item-col", default=None, help="Item column (csv/parquet).")
@click.option("--time-col", default=None, help="Timestamp column (csv/parquet); orders each user's rows.")
@click.option("--rating-col", default=None, help="Rating column (csv/parquet).")
@click.option("--sep", default=None, help="Field separator (csv); sniffed when absent.")
@click.option("--min-rating", type=float, default=None,
              help="Keep rows with rating >= this (default: keep every row).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Joint epochs over the new rows, each ending with an M-step.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the model's train.device).")
def update(model_dir, new_log, out, force, fmt, user_col, item_col, time_col, rating_col, sep, min_rating,
           epochs, device) -> None:
    """Continue a trained model on new interactions (original ids), without retraining.

    New items get embedding rows and paths (placed by the M-step with the size penalty); old
    items keep theirs, their path scores decayed by eta; new users need nothing.
    """
    import numpy as np

    from .data.readers import read
    from .model import DeepRetrieval
    from .state import resolve_device

    _check_out(out, "model", force, [new_log])
    if device is not None:
        resolve_device(device)
    inter = read(new_log, fmt, user_col=user_col, item_col=item_col, time_col=time_col,
                 rating_col=rating_col, sep=sep)
    keep = np.ones(len(inter), dtype=bool)
    if min_rating is not None and inter.rating is not None:
        keep = inter.rating >= min_rating
    model = DeepRetrieval.load(model_dir)
    if device is not None:
        model.config.train.device = device
    V = model.n_items
    times = None if inter.time is None else inter.time[keep]
    model.partial_fit(inter.user[keep], inter.item[keep], times, epochs=epochs, log=click.echo)
    model.save(out)
    click.echo(f"updated with {int(keep.sum()):,} interactions ({model.n_items - V:,} new items); "
               f"saved model to {out}")


# ---------------------------------------------------------------------------- blend
@cli.command("blend")
@click.argument("model_dir")
@click.argument("data")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override a blend.* value of the model's config, or beam.B (the beam the blend is "
                   "picked at and the model serves at), e.g. --set blend.scorer=rp3beta --set beam.B=400 "
                   "(repeatable).")
@click.option("--out", required=True, help="Model directory with the new blend (written atomically; may be "
                                           "MODEL_DIR itself with --force).")
@_force_option("model")
def blend(model_dir, data, overrides, out, force) -> None:
    """Fit (or refit) a trained model's blend on DATA's validation users, without retraining.

    DATA is the prepared data set the model was trained on. The baseline of blend.scorer is
    fitted on its training rows, and w and eps are picked as `dr train` picks them (README, "A
    model that carries its blend"), from the model's [blend] table and beam.B with --set on
    top. The network, the paths and the reranker are not changed.
    """
    from .config import with_overrides
    from .data.dataset import Dataset
    from .errors import InvalidInputError
    from .model import DeepRetrieval

    _check_out(out, "model", force, [data])
    model = DeepRetrieval.load(model_dir)
    model.config = with_overrides(model.config, overrides, tables=("blend", "beam"))
    if not model.config.blend.scorer:
        raise InvalidInputError(f"model {model_dir} has no blend.scorer in its config: name the baseline to "
                                "blend with, e.g. --set blend.scorer=rp3beta")
    model.fit_blend(Dataset.load(data), log=click.echo)
    model.save(out)
    click.echo(f"saved model to {out}")


@cli.command()
def configs() -> None:
    """List the built-in configs."""
    from importlib import resources

    for f in sorted((resources.files("deep_retrieval") / "configs").iterdir()):
        if f.name.endswith(".toml"):
            first = f.read_text().splitlines()[0].lstrip("# ")
            click.echo(f"{f.name[:-5]:24s} {first}")


# ---------------------------------------------------------------------------- tune
@cli.command()
@click.argument("data")
@click.option("--config", default=None,
              help="The base config: a TOML file or a built-in name (see `dr configs`); defaults otherwise.")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override one value of the base config, e.g. --set train.threads=1 (repeatable).")
@click.option("--trials", type=click.IntRange(min=1), required=True,
              help="Finished (complete or pruned) trials the study should hold; a rerun continues to it.")
@click.option("--metric", default="recall@20", show_default=True,
              help="NAME@K on the validation users, NAME: recall, ndcg, precision, hit or f1 (maximised).")
@click.option("--out", required=True,
              help="Output directory: study.sqlite3, best.toml, trials.md, tune.json. The same command "
                   "again continues its study (another setup there is refused).")
@click.option("--space", "space_file", default=None,
              help='Search space TOML replacing the default: "table.key" = {low=.., high=.., log=true} '
                   "or {choices=[...]}.")
@click.option("--timeout", "timeout_minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Start no new trial after this many minutes (the trial under way finishes).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the TPE sampler (train.seed comes from the base config, the same every trial).")
@click.option("--exclude-history", is_flag=True, help="Score with the users' history items excluded.")
@_force_option("dr tune study (start afresh)")
def tune(data, config, overrides, trials, metric, out, space_file, timeout_minutes, seed, exclude_history,
         force) -> None:
    """Search the DR config on the validation users (optuna TPE, the `tune` extra); never reads test users.

    Every trial trains DR with the base config plus sampled values and scores it on the
    validation users. After each trial OUT/best.toml (for `dr train --config`), trials.md
    and tune.json are rewritten; an invalid sampled config is a pruned trial.
    """
    from tqdm.auto import tqdm

    from .config import load_config
    from .data.dataset import Dataset
    from .tune import Space, is_tune_dir, parse_metric, require_optuna, run_tune

    inputs = [data, *(p for p in (space_file, config) if p is not None and Path(p).exists())]
    _check_out(out, "tune", force or is_tune_dir(out), inputs)  # a tune study there: continued
    optuna = require_optuna()  # missing: one line naming the extra, before any work
    parse_metric(metric)
    base = load_config(config, overrides)
    space = Space.from_toml(space_file) if space_file is not None else Space.default()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ds = Dataset.load(data)
    run_tune(ds, base, out, trials, metric, space, seed=seed, timeout_minutes=timeout_minutes,
             exclude_history=exclude_history, force=force, inputs=inputs, log=tqdm.write)


# ---------------------------------------------------------------------------- beam
@cli.command("beam")
@click.argument("data")
@click.argument("models", nargs=-1, required=True)
@click.option("--beams", default="5,10,15,20,30,50,100", show_default=True, help="The beam sizes B to try.")
@click.option("--k", "ks", default="10", show_default=True, help="Cut-offs M, e.g. 10,50.")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=0.99, show_default=True,
              help="The share of the brute-force recall to keep at every k.")
@click.option("--exclude-history", is_flag=True, help="Score with the users' history items excluded.")
@click.option("--json", "json_out", default=None, help="Write the table as JSON here (a file path).")
@click.option("--out", default=None,
              help="With one MODEL: write a copy of it that serves at the picked B (a blend is re-picked "
                   "at that B, as `dr blend` does; may be MODEL itself with --force).")
@_force_option("model or results JSON")
def beam(data, models, beams, ks, target, exclude_history, json_out, out, force) -> None:
    """Pick the serving beam B of trained DR MODELS on DATA's validation users; never reads test users.

    For every B of --beams, DR's recall@k (its own reranker ranking the candidates on the B
    paths) is set against the same reranker over every item; a model that carries a blend is
    also scored as it serves, against the blend over all items. Several MODELS (training seeds
    on the same DATA) are pooled: mean recall over mean recall. The pick is the smallest B whose
    every ratio reaches --target; items scored and latency per user (of DR, and of DR + blend
    for a model with a blend) show its cost.
    """
    from dataclasses import asdict

    from .artifacts import atomic_write_json
    from .data.dataset import Dataset
    from .model import DeepRetrieval
    from .tuning import pick_beam

    beams_ = _ints(beams, "--beams", minimum=1)
    ks_ = _ints(ks, "--k", minimum=1)
    if out is not None and len(models) != 1:
        raise InvalidInputError(f"--out writes one model: give one MODEL, not {len(models)}")
    if json_out:
        _check_out(json_out, "results-json", force, [data, *models])
    if out is not None:
        _check_out(out, "model", force, [data])
    ds = Dataset.load(data)
    loaded = [DeepRetrieval.load(m) for m in models]
    pick = pick_beam(loaded, ds, beams_, ks_, target, exclude_history)
    click.echo(f"{len(models)} model(s), {len(ds.val)} validation users, exclude_history="
               f"{str(exclude_history).lower()}")
    click.echo(pick.table())
    if json_out:
        atomic_write_json(json_out, {"dataset": str(data), "models": list(models), "split": "val",
                                     "exclude_history": exclude_history, **asdict(pick)})
        click.echo(f"wrote {json_out}")
    if out is not None:
        if pick.B is None:
            raise InvalidInputError(f"no B of --beams keeps {target} of the brute-force recall: nothing "
                                    f"written to {out}; try larger --beams")
        model = loaded[0]
        model.config.beam.B = pick.B
        if model.blend is not None:  # its w was picked at the old B: pick it again at the new one
            model.fit_blend(ds, log=click.echo)
        model.save(out)
        click.echo(f"saved model serving at B = {pick.B} to {out}")


# ---------------------------------------------------------------------------- evaluate
@cli.command()
@click.argument("data")
@click.option("--methods", required=True,
              help="Comma-separated: popularity, item-cf, rp3beta, ease, als (the `als` extra), "
                   "each optionally with parameters, e.g. rp3beta:alpha=0.8,beta=0.3,neighbours=200 "
                   "or item-cf:neighbours=500,shrink=10 (popularity:after=true counts an item only "
                   "at positions >= the user's history length of the training rows); and trained "
                   "model directories (each adds rows dr, brute-force and, with faiss, hnsw).")
@click.option("--k", "ks", default="10", show_default=True, help="Cut-offs M, e.g. 10,200.")
@click.option("--split", default="test", show_default=True, help="test or val.")
@click.option("--exclude-history", is_flag=True, help="Never recommend a user's history items.")
@click.option("--json", "json_out", default=None, help="Write the results JSON here (a file path).")
@_force_option("results JSON")
@click.option("--device", default="cpu", show_default=True,
              help="Where DR models compute (cpu, cuda, cuda:N, auto); latencies are then of that device.")
@click.option("--beam", "B", type=click.IntRange(min=1), default=None,
              help="Beam size B of every DR model (default: each model's own).")
@click.option("--rerank", "rerank_spec", default=None,
              help="A baseline as in --methods (e.g. rp3beta:alpha=0.5,beta=0.3): each DR model also "
                   "gets a row dr+NAME, its B-path candidates ordered by that baseline.")
@click.option("--blend", "blend_ws", default=None,
              help="With --rerank: weights w to try, e.g. 0.3,0.5,1. Each DR model also gets rows blend "
                   "(over all items) and dr+blend: its reranker + w log(baseline score / |history| + eps), "
                   "w and eps picked by recall at the first k on the validation users.")
@click.option("--blend-eps", default="0.01", show_default=True, help="With --blend: eps values to try.")
def evaluate(data, methods, ks, split, exclude_history, json_out, force, device, B, rerank_spec, blend_ws,
             blend_eps) -> None:
    """Evaluate models and baselines on a prepared data set's test or validation users."""
    from .artifacts import atomic_write_json
    from .data.dataset import Dataset
    from .evaluate import build_methods, format_table
    from .evaluate import evaluate as run
    from .model import DeepRetrieval
    from .state import resolve_device

    ks_ = _ints(ks, "--k", minimum=1)
    weights = _floats(blend_ws, "--blend") if blend_ws is not None else None
    eps = _floats(blend_eps, "--blend-eps", positive=True)
    if weights is not None and not rerank_spec:
        raise InvalidInputError("--blend needs --rerank: the baseline to blend with DR's reranker")
    if weights is not None and split != "test":
        raise InvalidInputError("--blend picks its weight on the validation users: evaluate on --split test")
    dev = resolve_device(device)
    if json_out:
        model_dirs = [m for m in methods.split(",") if Path(m).exists()]
        _check_out(json_out, "results-json", force, [data, *model_dirs])
    ds = Dataset.load(data)
    recs = build_methods([m.strip() for m in methods.split(",") if m.strip()], ds)
    for rec in recs.values():
        if isinstance(rec, DeepRetrieval):
            rec.to(dev)
            if B is not None:
                rec.config.beam.B = B
    blends: dict = {}
    if rerank_spec:
        recs.update(_reranked(recs, rerank_spec, ds, weights, eps, ks_[0], exclude_history, blends))
    result = run(ds, recs, ks_, split=split, exclude_history=exclude_history)
    result["dataset"] = str(data)
    if blends:
        result["blends"] = blends  # per DR model: the w and eps picked, and every validation row
    click.echo(format_table(result))
    if json_out:
        atomic_write_json(json_out, result)
        click.echo(f"wrote {json_out}")


def _reranked(recs: dict, spec: str, ds, weights, eps, k: int, exclude_history: bool, blends: dict) -> dict:
    """dr+NAME (and with ``weights`` blend, dr+blend) rows for every DR model among ``recs``;
    each blend's pick goes into ``blends`` under the DR row's key."""
    from .evaluate import baseline
    from .model import DeepRetrieval
    from .rerank import Reranked, pick_blend

    models = {key: r for key, r in recs.items() if key == "dr" or key.endswith("/dr")}  # own reranker
    models = {key: r if isinstance(r, DeepRetrieval) else r.model for key, r in models.items()}
    if not models:
        raise InvalidInputError("--rerank needs a trained model directory among --methods")
    if weights is not None and any(dr.blend_scorer is not None for dr in models.values()):
        raise InvalidInputError("--blend: a model among --methods already carries a blend picked at "
                                "training (its rows dr+blend and blend): leave --blend out")
    scorer = baseline(spec).fit(ds)
    name, out = spec.partition(":")[0], {}
    for key, dr in models.items():
        prefix = key[: -len("dr")]  # "" or "MODEL/"
        out[f"{key}+{name}"] = Reranked(dr, scorer)
        if weights is not None:
            blend, rows = pick_blend(dr, scorer, ds, weights, eps, k, exclude_history)
            click.echo(f"{prefix}blend: w {blend.weights[1]} eps {blend.parts[1].eps} (validation recall@{k} "
                       + ", ".join(f"w {r['w']} eps {r['eps']}: {r['recall']:.4f}" for r in rows) + ")")
            out[f"{prefix}blend"], out[f"{key}+blend"] = blend, Reranked(dr, blend)
            blends[key] = {"scorer": spec, "w": blend.weights[1], "eps": blend.parts[1].eps,
                           "validation": rows}
    return out


# ---------------------------------------------------------------------------- retrieve
@cli.command()
@click.argument("model_dir")
@click.option("--history", required=True,
              help="Comma-separated item ids, oldest first ('' = no history: the model's fallback).")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Items to return.")
@click.option("--beam", "B", type=click.IntRange(min=1), default=None,
              help="Beam size B (default: the model's).")
@click.option("--dense", is_flag=True, help="Ids are dense indices, not the data set's original ids.")
@click.option("--exclude-history", is_flag=True, help="Never return an item of the history.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def retrieve(model_dir, history, k, B, dense, exclude_history, as_json) -> None:
    """Retrieve the top-k items for one behaviour history (ranked by the model's blend if it has one)."""
    from .model import DeepRetrieval

    model = DeepRetrieval.load(model_dir)
    raw = [x.strip() for x in history.split(",") if x.strip()]
    if not raw:
        hist = []
    else:
        hist = _ints(history, "--history") if dense else model.dense_ids(raw)
    fallback = len(hist) == 0  # no history: what the model returns for a user it knows nothing about
    ids, scores = model.recommend([hist], k, exclude_history=exclude_history, B=B)
    keep = ids[0] >= 0
    out_ids = ids[0][keep] if dense else model.item_ids[ids[0][keep]]
    rows = [{"item": x.item() if hasattr(x, "item") else x, "score": float(s)}
            for x, s in zip(out_ids, scores[0][keep], strict=True)]
    if as_json:
        click.echo(json.dumps({"items": rows, "candidates": int(model.last_items_scored[0]),
                               "fallback": fallback}))
    else:
        if fallback:
            click.echo("(empty history: these are the model's fallback items for a user without history)")
        for r, row in enumerate(rows, 1):
            click.echo(f"{r:4d}  {row['item']!s:>12}  {row['score']:.4f}")
        click.echo(f"({int(model.last_items_scored[0])} candidates scored)")


# ---------------------------------------------------------------------------- serve
@cli.command()
@click.argument("model_dir")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="0 picks a free port.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes (each loads the model; /admin/reload reaches one, SIGHUP all).")
@click.option("--threads", type=int, default=4, show_default=True, help="Inference threads per process.")
@click.option("--max-histories", type=int, default=256, show_default=True, help="Histories per request.")
@click.option("--max-history-len", type=int, default=1000, show_default=True, help="Ids per history.")
@click.option("--max-k", type=int, default=1000, show_default=True, help="Largest k a request may ask.")
@click.option("--max-beam", type=int, default=1000, show_default=True, help="Largest beam a request may ask.")
@click.option("--max-filter", type=int, default=100_000, show_default=True,
              help="Ids in 'exclude' or 'allow'.")
@click.option("--max-body", type=int, default=1 << 20, show_default=True, help="Request body bytes.")
@click.option("--max-queue", type=int, default=256, show_default=True,
              help="Requests in flight before 503.")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds per request (504).")
def serve(model_dir, host, port, workers, threads, **caps) -> None:
    """Serve a trained model over HTTP: POST /recommend, GET /health, POST /admin/reload.

    FastAPI + uvicorn (the `serve` extra). The schema is at /openapi.json; every error is
    JSON {"error": "..."}. SIGHUP reloads the model directory; SIGTERM finishes the
    requests in flight, then exits.
    """
    from .serve import Limits, run

    run(model_dir, host, port, Limits(threads=threads, **caps), workers=workers, log=click.echo)


# ---------------------------------------------------------------------------- experiment
@cli.command()
@click.argument("experiment_file")
@click.option("--data-root", default="../shared/data", show_default=True,
              help="Directory the experiment's [data] inputs are relative to.")
@click.option("--results", default="results", show_default=True,
              help="Writes RESULTS/<name>/results.json and table.md.")
@click.option("--seeds", default=None, help="Comma-separated seeds, replacing the file's list.")
@_force_option("result of this experiment")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Extra DR config override, after the file's dr_set (repeatable).")
@click.option("--device", default=None,
              help="Where DR trains and is evaluated (auto, cpu, cuda, cuda:N; the YouTube-DNN twin "
                   "stays on the CPU) [default: the config's train.device].")
def experiment(experiment_file, data_root, results, seeds, overrides, force, device) -> None:
    """Prepare a data set, train DR and its YouTube-DNN twin per seed, evaluate against the
    baselines, and write results.json + table.md (mean ± std over the seeds).

    EXPERIMENT_FILE: a TOML file such as experiments/ml1m.toml (see docs/results.md).
    """
    from .experiment import ExperimentConfig, run

    exp = ExperimentConfig.from_toml(experiment_file)
    _check_out(Path(results) / exp.name, "experiment", force,
               [experiment_file, *(Path(data_root) / p for p in exp.data.inputs)])
    if seeds is not None:
        exp.seeds = tuple(_ints(seeds, "--seeds"))
    if device is not None:
        from .state import resolve_device

        resolve_device(device)  # refused before any work
        overrides = (*overrides, f'train.device="{device}"')
    exp.dr_set = (*exp.dr_set, *overrides)
    run(exp, data_root, results, log=click.echo)


# ---------------------------------------------------------------------------- demo
@cli.command()
@click.option("--out", default="demo-output", show_default=True, help="Where the report goes.")
@_force_option("dr demo output")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data and the training.")
@click.option("--quick", is_flag=True, help="A smaller, faster run (for smoke tests).")
def demo(out, force, seed, quick) -> None:
    """Generate synthetic data, tune the baselines and train DR, evaluate, write a report.

    Latent-factor data (50,000 items); Item-CF and RP3beta tuned on the validation users (EASE
    too with --quick's 1,000 items; its items x items inverse does not fit 50,000); DR trained
    with the `demo` config and the tuned RP3beta as its blend (w picked on the validation
    users); every method scored on the test users, history excluded, with batch-1 latencies
    of DR and of exact search over the same embeddings. About 4-5 minutes on 2 cores. Writes
    report.md, results.json, paths.png, training.png and model/ under --out."""
    from .demo import run_demo

    _check_out(out, "demo", force)
    run_demo(out, seed=seed, quick=quick, log=click.echo)


_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Run `dr`; a DRError or a usage mistake prints one line `error: ...` and returns 2."""
    try:
        cli.main(args=argv, prog_name="dr", standalone_mode=False)
    except DRError as e:
        click.echo(f"error: {_one_line(e)}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except _NO_ARGS as e:  # plain `dr`: the help, not a mistake
        click.echo(e.format_message())
        return 0
    except click.UsageError as e:  # one line instead of click's usage block
        where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        click.echo(f"error: {_one_line(e.format_message())}{where}", err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"error: {_one_line(e.format_message())}", err=True)
        return 2
    except click.exceptions.Exit as e:
        return e.exit_code
    except FileNotFoundError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
