"""The `dr` command. Thin: it parses options and calls the library.

Every user mistake (a DRError, or a click usage error) prints one line and exits 2.
"""

from __future__ import annotations

import json
import sys

import click

from .errors import DRError


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DRError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not out:
        raise DRError(f"{what} is empty")
    return out


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
@click.option("--format", "fmt", default="auto", show_default=True,
              help="auto, ml-100k, ml-dat, ml-csv, csv, parquet, kgat or lastfm.")
@click.option("--protocol", default="user-split", show_default=True,
              help="user-split (the paper's) or given-split (INPUT = train file, INPUT2 = test file).")
@click.option("--user-col", default=None, help="User column (csv/parquet).")
@click.option("--item-col", default=None, help="Item column (csv/parquet).")
@click.option("--time-col", default=None, help="Timestamp column (csv/parquet).")
@click.option("--rating-col", default=None, help="Rating column (csv/parquet).")
@click.option("--sep", default=None, help="Field separator (csv); sniffed when absent.")
@click.option("--min-rating", type=float, default=None,
              help="Keep rating >= this [default: 4.0 where ratings exist].")
@click.option("--min-user-interactions", type=int, default=10, show_default=True)
@click.option("--val-users", type=int, default=1000, show_default=True)
@click.option("--test-users", type=int, default=1000, show_default=True)
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="given-split: share of a validation user's training items held out.")
@click.option("--max-seq-len", type=int, default=69, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def prepare(inputs, out, fmt, protocol, **kw) -> None:
    """Read interaction logs and write a prepared data set directory."""
    from .data.prepare import prepare as run

    run(list(inputs), out, fmt=fmt, protocol=protocol, log=click.echo, **kw)


# ---------------------------------------------------------------------------- synth
@cli.command()
@click.option("--out", required=True, help="Output data set directory.")
@click.option("--preset", type=click.Choice(["demo", "default", "large"]), default="default",
              show_default=True, help="demo: 5k items; default: 100k; large: 1.5M items.")
@click.option("--items", "n_items", type=int, default=None)
@click.option("--users", "n_users", type=int, default=None)
@click.option("--interactions", "n_interactions", type=int, default=None)
@click.option("--clusters", "n_clusters", type=int, default=None, help="0 = auto (V/50).")
@click.option("--val-users", type=int, default=None)
@click.option("--test-users", type=int, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
def synth(out, preset, seed, **kw) -> None:
    """Generate synthetic interactions with planted clusters (and write the planted truth)."""
    from dataclasses import replace

    from .data.synth import SynthConfig
    from .data.synth import synth as run

    base = {"demo": SynthConfig.demo, "large": SynthConfig.large}.get(preset, SynthConfig)(seed=seed)
    cfg = replace(base, **{k: v for k, v in kw.items() if v is not None})
    run(out, cfg, log=click.echo)


# ---------------------------------------------------------------------------- train
@cli.command()
@click.argument("data")
@click.option("--config", default=None,
              help="A TOML file or a built-in config name (see `dr configs`); defaults otherwise.")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override one config value, e.g. --set structure.K=100 (repeatable).")
@click.option("--out", required=True, help="Model directory (written atomically).")
def train(data, config, overrides, out) -> None:
    """Train Deep Retrieval on a prepared data set.

    Data parallel on several processes or machines: `torchrun --nproc_per_node N -m
    deep_retrieval.cli train ...` (gloo backend; rank 0 writes the model).
    """
    import os

    import torch.distributed as dist

    from .config import load_config
    from .data.dataset import Dataset
    from .model import DeepRetrieval

    cfg = load_config(config, overrides)
    ds = Dataset.load(data)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    try:
        model = DeepRetrieval(cfg).fit(ds, log=click.echo)
        if not distributed or dist.get_rank() == 0:
            model.save(out)
            click.echo(f"saved model to {out}")
    finally:
        if distributed:
            dist.destroy_process_group()


@cli.command()
def configs() -> None:
    """List the built-in configs."""
    from importlib import resources

    for f in sorted((resources.files("deep_retrieval") / "configs").iterdir()):
        if f.name.endswith(".toml"):
            first = f.read_text().splitlines()[0].lstrip("# ")
            click.echo(f"{f.name[:-5]:24s} {first}")


# ---------------------------------------------------------------------------- evaluate
@cli.command()
@click.argument("data")
@click.option("--methods", required=True,
              help="Comma-separated: popularity, item-cf, and trained model directories "
                   "(each adds rows dr, brute-force and, with faiss, hnsw).")
@click.option("--k", "ks", default="10", show_default=True, help="Cut-offs M, e.g. 10,200.")
@click.option("--split", default="test", show_default=True, help="test or val.")
@click.option("--exclude-history", is_flag=True, help="Never recommend a user's history items.")
@click.option("--json", "json_out", default=None, help="Write the results JSON here.")
def evaluate(data, methods, ks, split, exclude_history, json_out) -> None:
    """Evaluate models and baselines on a prepared data set's test or validation users."""
    from .artifacts import atomic_write_json
    from .data.dataset import Dataset
    from .evaluate import build_methods, format_table
    from .evaluate import evaluate as run

    ks_ = _ints(ks, "--k")
    ds = Dataset.load(data)
    recs = build_methods([m.strip() for m in methods.split(",") if m.strip()], ds)
    result = run(ds, recs, ks_, split=split, exclude_history=exclude_history)
    result["dataset"] = str(data)
    click.echo(format_table(result))
    if json_out:
        atomic_write_json(json_out, result)
        click.echo(f"wrote {json_out}")


# ---------------------------------------------------------------------------- retrieve
@cli.command()
@click.argument("model_dir")
@click.option("--history", required=True, help="Comma-separated item ids, oldest first.")
@click.option("--k", type=int, default=10, show_default=True)
@click.option("--beam", "B", type=int, default=None, help="Beam size B (default: the model's).")
@click.option("--dense", is_flag=True, help="Ids are dense indices, not the data set's original ids.")
@click.option("--exclude-history", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def retrieve(model_dir, history, k, B, dense, exclude_history, as_json) -> None:
    """Retrieve the top-k items for one behaviour history."""
    from .model import DeepRetrieval

    model = DeepRetrieval.load(model_dir)
    raw = [x.strip() for x in history.split(",") if x.strip()]
    hist = _ints(history, "--history") if dense else model.dense_ids(raw)
    ids, scores = model.recommend([hist], k, exclude_history=exclude_history, B=B)
    keep = ids[0] >= 0
    out_ids = ids[0][keep] if dense else model.item_ids[ids[0][keep]]
    rows = [{"item": x.item() if hasattr(x, "item") else x, "score": float(s)}
            for x, s in zip(out_ids, scores[0][keep], strict=True)]
    if as_json:
        click.echo(json.dumps({"items": rows, "candidates": int(model.last_items_scored[0])}))
    else:
        for r, row in enumerate(rows, 1):
            click.echo(f"{r:4d}  {row['item']!s:>12}  {row['score']:.4f}")
        click.echo(f"({int(model.last_items_scored[0])} candidates scored)")


# ---------------------------------------------------------------------------- serve
@cli.command()
@click.argument("model_dir")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
def serve(model_dir, host, port) -> None:
    """Serve a trained model over HTTP (POST /recommend, GET /health)."""
    from .model import DeepRetrieval
    from .serve import make_server

    server = make_server(DeepRetrieval.load(model_dir), host, port)
    click.echo(f"serving {model_dir} on http://{host}:{server.server_port} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---------------------------------------------------------------------------- experiment
@cli.command()
@click.argument("experiment_file")
@click.option("--data-root", default="../shared/data", show_default=True,
              help="Directory the experiment's [data] inputs are relative to.")
@click.option("--results", default="results", show_default=True,
              help="Writes RESULTS/<name>/results.json and table.md.")
@click.option("--seeds", default=None, help="Comma-separated seeds, replacing the file's list.")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Extra DR config override, after the file's dr_set (repeatable).")
def experiment(experiment_file, data_root, results, seeds, overrides) -> None:
    """Prepare a data set, train DR and its YouTube-DNN twin per seed, evaluate against the
    baselines, and write results.json + table.md (mean ± std over the seeds).

    EXPERIMENT_FILE: a TOML file such as experiments/ml1m.toml (see docs/results.md).
    """
    from .experiment import ExperimentConfig, run

    exp = ExperimentConfig.from_toml(experiment_file)
    if seeds is not None:
        exp.seeds = tuple(_ints(seeds, "--seeds"))
    exp.dr_set = (*exp.dr_set, *overrides)
    run(exp, data_root, results, log=click.echo)


# ---------------------------------------------------------------------------- demo
@cli.command()
@click.option("--out", default="demo-output", show_default=True, help="Where the report goes.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quick", is_flag=True, help="A smaller, faster run (for smoke tests).")
def demo(out, seed, quick) -> None:
    """Generate synthetic data, train DR, evaluate it against baselines, write a report."""
    from .demo import run_demo

    run_demo(out, seed=seed, quick=quick, log=click.echo)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="dr", standalone_mode=False)
    except DRError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as e:
        e.show()
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
