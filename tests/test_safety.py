"""Safe by default (issue 10): no command destroys what it did not create, every user mistake
is one `error:` line and exit 2 with nothing written, outputs honour the umask, leftovers of
a killed run are cleaned, data hygiene is counted, the API raises typed errors."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
import pytest

from deep_retrieval import numba_cache_dir
from deep_retrieval.artifacts import (
    HOST_TAG,
    atomic_dir,
    atomic_write_json,
    check_output,
    clean_leftovers,
    kind_of,
)
from deep_retrieval.cli import cli, main
from deep_retrieval.data.dataset import Dataset
from deep_retrieval.errors import (
    DRError,
    DRFileNotFoundError,
    InvalidInputError,
    OutputExistsError,
    OutputNotWritableError,
)
from deep_retrieval.model import DeepRetrieval
from tests.test_cli import TINY, write_log

ROOT = Path(__file__).parents[1]


def snapshot(d: Path) -> dict[str, bytes | None]:
    """Every path under ``d`` (hidden ones too) -> its bytes (None for a directory)."""
    return {str(p.relative_to(d)): None if p.is_dir() else p.read_bytes() for p in sorted(d.rglob("*"))}


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """A tiny prepared data set and model (40 users, 30 items), a folder that is not ours."""
    old = os.umask(0o022)
    try:
        d = tmp_path_factory.mktemp("safety")
        write_log(d / "log.csv")
        assert main(["prepare", str(d / "log.csv"), "--out", str(d / "data"), "--min-rating", "3",
                     "--val-users", "5", "--test-users", "5"]) == 0
        (d / "tiny.toml").write_text(TINY)
        assert main(["train", str(d / "data"), "--config", str(d / "tiny.toml"), "--set", "train.threads=1",
                     "--out", str(d / "model")]) == 0
        (d / "mine" / "sub").mkdir(parents=True)
        (d / "mine" / "notes.txt").write_text("my notes\n")
        (d / "mine" / "sub" / "code.py").write_text("print('mine')\n")
        (d / "afile").write_text("not a directory\n")
        (d / "in").mkdir()
        shutil.copy(d / "log.csv", d / "in" / "log.csv")
        (d / "exp.toml").write_text('name = "e1"\n[data]\ninputs = ["log.csv"]\n')
        (d / "results" / "e1").mkdir(parents=True)
        (d / "results" / "e1" / "notes.txt").write_text("mine\n")
        return d
    finally:
        os.umask(old)


@pytest.fixture
def readonly(w):
    """A directory nobody (root included) can write: chattr +i as root, chmod 0555 otherwise."""
    d = w / "ro"
    d.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
            pytest.skip("root, and chattr +i is not available here")
        try:
            yield d
        finally:
            subprocess.run(["chattr", "-i", str(d)], check=True)
    else:
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)


# ------------------------------------------------------------------ the table of mistakes
D, M = "{d}/data", "{d}/model"
TRAIN = ["train", D, "--config", "{d}/tiny.toml", "--set", "train.threads=1"]
PREP = ["prepare", "{d}/log.csv", "--min-rating", "3", "--val-users", "5", "--test-users", "5"]
CASES = [
    # outputs that hold something that is not ours, or not a directory
    (PREP + ["--out", "{d}/mine"], "is not a prepared data set (it holds notes.txt, sub/)"),
    (TRAIN + ["--out", "{d}/mine"], "is not a model (it holds notes.txt, sub/)"),
    (["synth", "--out", "{d}/mine", "--items", "50"], "is not a synthetic data set"),
    (["demo", "--quick", "--out", "{d}/mine"], "is not a dr demo output"),
    (["experiment", "{d}/exp.toml", "--data-root", "{d}", "--results", "{d}/results"],
     "is not a dr experiment result"),
    (["synth", "--out", "{d}/data", "--items", "50"], "is a prepared data set; not replacing it"),
    (TRAIN + ["--out", "{d}/data"], "is one of the inputs"),
    (PREP + ["--out", "{d}/afile"], "exists and is a file"),
    (TRAIN + ["--out", "{d}/afile"], "exists and is a file"),
    (PREP + ["--out", "{d}/afile/x"], "afile is a file, not a directory"),
    (PREP + ["--out", "."], "must name a new directory or file"),
    (PREP + ["--out", "{d}"], "is the current directory or contains it"),
    (["prepare", "{d}/in/log.csv", "--out", "{d}/in"], "contains the input"),
    (["prepare", "{d}/log.csv", "--out", "{d}/log.csv"], "is one of the inputs"),
    (TRAIN + ["--out", "{d}/data/sub"], "is inside a prepared data set"),
    (PREP + ["--out", "{d}/model/data"], "is inside a model"),
    (PREP + ["--out", "{d}/ro/x"], "is not writable"),
    (TRAIN + ["--out", "{d}/ro/m"], "is not writable"),
    (["evaluate", D, "--methods", "popularity", "--json", "{d}/mine"], "is a directory; give a file name"),
    (["evaluate", D, "--methods", "popularity", "--json", "{d}/mine/notes.txt"],
     "exists and is not a results JSON"),
    (["beam", D, M, "--out", "{d}/mine"], "is not a model (it holds notes.txt, sub/)"),
    (["beam", D, M, "--json", "{d}/mine/notes.txt"], "exists and is not a results JSON"),
    (["beam", D, M, M, "--out", "{d}/new"], "--out writes one model: give one MODEL, not 2"),
    (["beam", D, M, "--beams", "0,2"], "--beams must be >= 1"),
    (["beam", D, M, "--beams", "a"], "--beams must be comma-separated integers"),
    (["beam", D, M, "--target", "0"], "Invalid value for '--target'"),
    (["beam", D, M, "--out", D], "is one of the inputs"),
    # same kind: --force needed
    (PREP + ["--out", D], "already holds a prepared data set; give --force to replace it"),
    (TRAIN + ["--out", M], "already holds a model; give --force to replace it"),
    (["beam", D, M, "--out", M], "already holds a model; give --force to replace it"),
    # options
    (["retrieve", M, "--history", "101", "--beam", "-3"], "-3 is not in the range x>=1"),
    (["retrieve", M, "--history", "101", "--beam", "0"], "0 is not in the range x>=1"),
    (["retrieve", M, "--history", "101", "--k", "0"], "0 is not in the range x>=1"),
    (["evaluate", D, "--methods", "popularity", "--k", "0,5"], "--k must be >= 1"),
    (TRAIN + ["--set", "train.threads=-2", "--out", "{d}/new"], "train.threads must be >= 0"),
    (TRAIN + ["--set", "train.epochs_joint=0", "--set", "train.epochs_dr=0", "--out", "{d}/new"],
     "nothing would be trained"),
    (["prepare", "{d}/log.csv", "{d}/log.csv", "--protocol", "given-split", "--keep-duplicates",
      "--out", "{d}/new"], "applies to user-split only"),
    (["prepare"], "Missing argument 'INPUTS...'"),
    (["prepare", "{d}/log.csv"], "Missing option '--out'"),
    (["no-such-command"], "No such command"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_mistake_is_one_line_exit_2_and_nothing_written(w, readonly, capsys, monkeypatch, args, message):
    if "{d}" in args or "." in args:
        monkeypatch.chdir(w)  # so that `--out .` and `--out {d}` name the current directory
    before = snapshot(w)
    assert main([a.format(d=w) for a in args]) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], cap.err
    assert "Traceback" not in cap.err + cap.out
    assert snapshot(w) == before  # byte-identical, no new file, no hidden temporary


@pytest.mark.parametrize("args, message", [
    (["prepare", "log.csv", "--out", "."], "error: output '.' must name a new directory or file"),
    (["retrieve", "model", "--history", "101", "--beam", "-3"], "error: Invalid value for '--beam'"),
])
def test_mistake_in_a_real_process(w, args, message):
    before = snapshot(w)
    r = subprocess.run([sys.executable, "-m", "deep_retrieval.cli", *args], cwd=w, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith(message), r.stderr
    assert "Traceback" not in r.stderr and snapshot(w) == before


# ------------------------------------------------------------------ what is allowed
def test_force_replaces_an_artefact_of_the_same_kind(w, capsys):
    out = w / "forced"
    args = PREP + ["--out", str(out)]
    args = [a.format(d=w) for a in args]
    assert main(args) == 0
    first = (out / "arrays.npz").read_bytes()
    assert main([*args, "--seed", "1"]) == 2
    assert (out / "arrays.npz").read_bytes() == first
    assert main([*args, "--seed", "1", "--force"]) == 0
    assert Dataset.load(out).manifest["parameters"]["seed"] == 1
    assert [p.name for p in w.iterdir() if p.name.startswith(".forced")] == []
    # an empty directory is fine without --force
    (w / "empty").mkdir()
    assert main([a.format(d=w) for a in PREP] + ["--out", str(w / "empty")]) == 0
    assert kind_of(w / "empty") == "dataset"


def test_evaluate_json_needs_force_to_replace_results(w, capsys):
    out = w / "res.json"
    args = ["evaluate", str(w / "data"), "--methods", "popularity", "--k", "3", "--json", str(out)]
    assert main(args) == 0
    first = out.read_bytes()
    assert main([*args[:-4], "--k", "4", "--json", str(out)]) == 2
    assert "already is a results JSON; give --force" in capsys.readouterr().err
    assert out.read_bytes() == first
    assert main([*args[:-4], "--k", "4", "--json", str(out), "--force"]) == 0
    assert {r["k"] for r in json.loads(out.read_text())["results"]} == {4}


def test_train_force_and_api_replace(w):
    out = w / "model-again"
    args = [a.format(d=w) for a in TRAIN] + ["--out", str(out)]
    assert main(args) == 0
    assert main(args) == 2
    assert main([*args, "--force"]) == 0
    m = DeepRetrieval.load(out)
    m.save(out)  # the API replaces an artefact of the same kind
    m.save(out)
    assert kind_of(out) == "model"
    with pytest.raises(OutputExistsError, match="is not a model"):
        m.save(w / "mine")
    assert (w / "mine" / "notes.txt").read_text() == "my notes\n"


@pytest.mark.parametrize("umask, fmode, dmode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_honour_the_umask(w, umask, fmode, dmode):
    old = os.umask(umask)
    try:
        out = w / f"umask-{umask:o}"
        assert main([a.format(d=w) for a in PREP] + ["--out", str(out / "data")]) == 0
        DeepRetrieval.load(w / "model").save(out / "model")
        atomic_write_json(out / "r.json", {"results": []})
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    dirs = [out, *(p for p in out.rglob("*") if p.is_dir())]
    assert len(files) >= 7
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {fmode}
    assert {stat.S_IMODE(p.stat().st_mode) for p in dirs} == {dmode}


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_a_killed_run_are_cleaned(w):
    out = w / "left"
    pid, live, h = dead_pid(), os.getpid(), HOST_TAG
    for name in (f".left.tmp-{pid}-{h}abcd1234", f".left.old-{pid}-{h}abcd1234",  # killed here
                 f".left.tmp-{live}-{h}00000000",  # a run in progress
                 f".left.tmp-{pid}-0badc0de00000000"):  # another machine sharing the file system
        (w / name).mkdir()
        (w / name / "arrays.npz").write_bytes(b"half")
    (w / f".left.tmp-{pid}-{h}ffff0000").write_bytes(b"a temporary file")
    (w / ".left.tmp-notapid").mkdir()  # not ours: never touched
    assert main([a.format(d=w) for a in PREP] + ["--out", str(out)]) == 0
    left = sorted(p.name for p in w.iterdir() if p.name.startswith(".left"))
    assert left == sorted([f".left.tmp-{live}-{h}00000000", f".left.tmp-{pid}-0badc0de00000000",
                           ".left.tmp-notapid"])
    assert Dataset.load(out).n_items == 30  # the real result, not a leftover


def test_a_kill_between_the_two_renames_restores_the_old_artefact(w):
    """SIGKILL after `out` was moved to .out.old-PID and before the new one took its place."""
    src = w / "data"
    pid = dead_pid()
    shutil.copytree(src, w / f".restored.old-{pid}-{HOST_TAG}12345678")
    removed = clean_leftovers(w / "restored")
    assert removed == [] and kind_of(w / "restored") == "dataset"
    assert snapshot(w / "restored") == snapshot(src)


def test_atomic_dir_refuses_what_appeared_meanwhile(w):
    out = w / "race"
    with pytest.raises(OutputExistsError, match="is not a model"), atomic_dir(out, "model") as tmp:
        (tmp / "meta.json").write_text("{}")
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
    assert (out / "theirs.txt").read_text() == "theirs"
    assert [p.name for p in w.iterdir() if p.name.startswith(".race")] == []


def test_check_output_kinds(w):
    assert check_output(w / "new" / "deeper", "model") == w / "new" / "deeper"
    assert not (w / "new").exists()
    assert kind_of(w / "data") == "dataset" and kind_of(w / "model") == "model"
    assert kind_of(w / "mine") is None
    with pytest.raises(OutputExistsError):
        check_output(w / "data", "dataset", replace=False)
    check_output(w / "data", "dataset", replace=True)
    with pytest.raises(InvalidInputError, match="contains a NUL character"):  # not a ValueError
        check_output(w / "a\x00b", "model")


# ------------------------------------------------------------------ data hygiene
def test_duplicates_and_missing_fields_are_counted(w, capsys):
    lines = ["user,item,rating,ts"]
    for u in range(100):  # 100 users, 12 distinct items each
        lines += [f"{u},{100 + i},5,{i}" for i in range(12)]
    lines += ["3,100,5,50", "3,101,5,51", "4,100,5,52"]  # 3 duplicates, later in time
    lines += ["5,150,,53", "5,151,NaN,54", ",152,5,55"]  # 3 rows with a missing field
    (w / "dups.csv").write_text("\n".join(lines) + "\n")
    out = w / "dups"
    assert main(["prepare", str(w / "dups.csv"), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "dropped 3 rows of dups.csv with a missing or NaN field" in log
    assert "duplicates removed: 3" in log
    m = Dataset.load(out).manifest
    c = m["counts"]
    assert c["rows_read"] == 1206 and c["rows_dropped_missing_field"] == 3
    assert c["after_rating_filter"] == 1203 and c["duplicates_removed"] == 3 and c["after_duplicates"] == 1200
    # the default evaluation users on 100 eligible users: min(1000, 10%) = 10 each
    assert c["val_users"] == c["test_users"] == 10 and c["train_users"] == 80
    assert m["parameters"]["val_users"] == m["parameters"]["test_users"] == 10
    kept = Dataset.load(out)
    for s in (kept.val, kept.test):
        for i in range(len(s)):
            row = np.concatenate([s.hist[i], s.truth[i]])
            assert len(np.unique(row)) == len(row) == 12
    assert main(["prepare", str(w / "dups.csv"), "--out", str(w / "dups-kept"), "--keep-duplicates"]) == 0
    c = Dataset.load(w / "dups-kept").manifest["counts"]
    assert c["duplicates_removed"] == 0 and c["after_duplicates"] == 1203


# ------------------------------------------------------------------ retrieve, help, API
def test_empty_history_says_fallback(w, capsys):
    assert main(["retrieve", str(w / "model"), "--history", "", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert "fallback items for a user without history" in out.splitlines()[0]
    assert main(["retrieve", str(w / "model"), "--history", "", "--k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fallback"] is True
    assert main(["retrieve", str(w / "model"), "--history", "101", "--k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fallback"] is False


def test_plain_dr_prints_the_help(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out.startswith("Usage: dr [OPTIONS] COMMAND")


def test_every_option_has_help():
    missing = []

    def walk(cmd, path):
        for p in cmd.params:
            if isinstance(p, click.Option) and not (p.help or "").strip():
                missing.append(f"{path} {p.opts[0]}")
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(cli, "dr")
    assert missing == []


@pytest.mark.parametrize("histories, message, builtin", [
    ([101, 102, 103], "histories must be a list of lists", ValueError),
    ([[1.5]], "item ids must be integers, got float 1.5", ValueError),
    ([[1.0, 2.0]], "item ids must be integers, got float 1.0", ValueError),
    ([["12"]], "item ids must be integers, got str '12'", ValueError),
    ("1,2,3", "histories must be a list of lists", ValueError),
])
def test_api_rejects_bad_histories(w, histories, message, builtin):
    model = DeepRetrieval.load(w / "model")
    with pytest.raises(InvalidInputError, match=message) as e:
        model.recommend(histories, 3)
    assert isinstance(e.value, builtin) and isinstance(e.value, DRError)
    assert "\n" not in str(e.value)
    ids, _ = model.recommend([[1, 2], np.array([3])], 3)  # lists and numpy rows are fine
    assert ids.shape == (2, 3)


def test_errors_subclass_the_builtins():
    for cls, builtin in [(InvalidInputError, ValueError), (DRFileNotFoundError, FileNotFoundError),
                         (OutputExistsError, FileExistsError), (OutputNotWritableError, PermissionError)]:
        with pytest.raises(builtin, match="^one line$"):
            raise cls("one line")
    from deep_retrieval.artifacts import read_json

    with pytest.raises(FileNotFoundError):
        read_json("/no/such/manifest.json")


# ------------------------------------------------------------------ numba cache
def test_numba_cache_dir_logic(tmp_path, readonly):
    uid = os.getuid()
    assert numba_cache_dir({"NUMBA_CACHE_DIR": "/x"}, readonly, uid) is None  # the user's choice wins
    assert numba_cache_dir({}, tmp_path, uid) is None  # writable package: numba's own __pycache__
    d = Path(numba_cache_dir({}, readonly, uid))
    assert d.is_dir() and os.access(d, os.W_OK) and stat.S_IMODE(d.stat().st_mode) == 0o700
    assert d.stat().st_uid == uid


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chattr") is None, reason="needs root's chattr +i")
def test_import_with_readonly_package_and_home(tmp_path):
    """A copy of the package and a HOME that cannot be written (chattr +i): importing the
    numba kernels used to die with 'cannot cache function ... no locator available'."""
    pkg = tmp_path / "deep_retrieval"
    shutil.copytree(ROOT / "src" / "deep_retrieval", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    home = tmp_path / "home"
    home.mkdir()
    frozen = [str(pkg), str(home), *(str(p) for p in pkg.iterdir() if p.is_dir())]
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), PYTHONPATH=str(tmp_path))
    subprocess.run(["chattr", "+i", *frozen], check=True)
    try:
        r = subprocess.run([sys.executable, "-c", "import deep_retrieval.mstep as m, os; "
                            "print(m.__file__, os.environ['NUMBA_CACHE_DIR'])"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["chattr", "-i", *frozen], check=True)
    assert r.returncode == 0, r.stderr[-500:]
    want = Path(tempfile.gettempdir()) / f"deep-retrieval-numba-{os.getuid()}"
    assert r.stdout.split() == [str(pkg / "mstep.py"), str(want)]
