"""Readers: each format on small files written here and on the real files in shared/data."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from deep_retrieval.data.readers import FORMATS, detect_format, read
from deep_retrieval.errors import DRError

DATA = Path(__file__).parents[2] / "shared" / "data"


def real(rel: str) -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} absent")
    return DATA / rel


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode())
    return path


# --------------------------------------------------------------------------- each format
def test_ml100k(tmp_path):
    p = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n")
    it = read(p, "ml-100k")
    assert it.user.tolist() == [196, 186] and it.item.tolist() == [242, 302]
    assert it.user.dtype == np.int64
    assert it.rating.tolist() == [3.0, 3.5]
    assert it.time.tolist() == [881250949.0, 891717742.0]
    assert it.time.dtype == np.float64


def test_ml_dat(tmp_path):
    p = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1::4::1\n")
    it = read(p, "ml-dat")
    assert it.user.tolist() == [1, 1, 2] and it.item.tolist() == [1193, 661, 1]
    assert it.rating.tolist() == [5, 3, 4] and it.time.tolist() == [978300760, 978302109, 1]


def test_ml_csv(tmp_path):
    p = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,9\n1,3,0.5,8\n")
    it = read(p, "ml-csv")
    assert it.user.tolist() == [1, 1] and it.item.tolist() == [1, 3]
    assert it.rating.tolist() == [4.0, 0.5] and it.time.tolist() == [9.0, 8.0]


@pytest.mark.parametrize("sep", [",", "\t", ";", "|"])
def test_csv_sniffs_separator_and_guesses_columns(tmp_path, sep):
    text = sep.join(["UserID", "movie_id", "score", "ts", "genre"]) + "\n"
    text += sep.join(["7", "70", "1", "100", "x"]) + "\n" + sep.join(["8", "80", "5", "50", "y"])
    it = read(write(tmp_path / "log.txt", text + "\n"), "csv")
    assert it.user.tolist() == [7, 8] and it.item.tolist() == [70, 80]
    assert it.rating.tolist() == [1.0, 5.0] and it.time.tolist() == [100.0, 50.0]
    assert "guessed" in it.source and "user=UserID" in it.source and repr(sep) in it.source


def test_csv_explicit_columns_str_ids_and_gzip(tmp_path):
    p = tmp_path / "log.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write("who,what,when,extra\nu1,i9,3,x\nu2,i1,2,y\nu1,i1,1,z\n")
    it = read(p, "csv", user_col="who", item_col="what", time_col="when")
    assert it.user.tolist() == ["u1", "u2", "u1"] and it.item.tolist() == ["i9", "i1", "i1"]
    assert it.user.dtype.kind == "U"  # numpy str, saved without pickles
    assert it.time.tolist() == [3.0, 2.0, 1.0] and it.rating is None
    assert "no time" not in it.order_note


def test_csv_sep_typed_in_a_shell(tmp_path):
    p = write(tmp_path / "t.tsv", "user\titem\n1\t2\n")
    for sep in ("\t", "\\t", "tab"):
        assert read(p, "csv", sep=sep).item.tolist() == [2]
    with pytest.raises(DRError, match="must be one character"):
        read(p, "csv", sep="::")


def test_csv_without_time_says_file_order(tmp_path):
    it = read(write(tmp_path / "p.csv", "user_id,movie_id\n1,2\n1,3\n"), "csv")
    assert it.time is None and it.rating is None
    assert "file order" in it.order_note


def test_parquet(tmp_path):
    p = tmp_path / "log.parquet"
    pl.DataFrame(
        {"uid": [3, 4], "iid": ["a", "b"], "label": [1.0, 0.0], "time": [5, 6]}
    ).write_parquet(p)
    it = read(p)  # auto
    assert it.user.tolist() == [3, 4] and it.item.tolist() == ["a", "b"]
    assert it.rating.tolist() == [1.0, 0.0] and it.time.tolist() == [5.0, 6.0]
    it = read(p, "parquet", user_col="iid", item_col="uid", rating_col="time")
    assert it.user.tolist() == ["a", "b"] and it.rating.tolist() == [5.0, 6.0]


def test_kgat_with_empty_user_line_and_blank_line(tmp_path):
    p = write(tmp_path / "train.txt", "0 5 6 7\n1\n\n2 7  5 \n")
    it = read(p, "kgat")
    assert it.user.tolist() == [0, 0, 0, 2, 2] and it.item.tolist() == [5, 6, 7, 7, 5]
    assert it.time is None and it.rating is None


@pytest.mark.parametrize("header", [True, False])
def test_lastfm_crlf_header_optional(tmp_path, header):
    text = (
        "userID\tartistID\tweight\n" if header else ""
    ) + "2\t51\t13883\n2\t52\t11690\n3\t51\t1\n"
    it = read(write(tmp_path / "user_artists.dat", text, newline="\r\n"), "lastfm")
    assert it.user.tolist() == [2, 2, 3] and it.item.tolist() == [51, 52, 51]
    assert it.rating is None and it.time is None  # play count is not a rating


def test_read_concatenates_files(tmp_path):
    a = write(tmp_path / "a.csv", "user,item\n1,2\n")
    b = write(tmp_path / "b.csv", "user,item\n3,4\n")
    it = read([a, b], "csv")
    assert it.user.tolist() == [1, 3] and it.item.tolist() == [2, 4]


def test_detect_format(tmp_path):
    cases = {
        "u.data": ("1\t2\t3\t4\n", "ml-100k"),
        "x.tsv": ("1\t2\t3\t4\n5\t6\t7\t8\n", "ml-100k"),
        "ratings.dat": ("1::2::3::4\n", "ml-dat"),
        "ratings.csv": ("userId,movieId,rating,timestamp\n1,2,3,4\n", "ml-csv"),
        "other.csv": ("user,item\n1,2\n", "csv"),
        "train.txt": ("0 1 2 3\n1 4\n", "kgat"),
        "user_artists.dat": ("2\t51\t3\n", "lastfm"),
        "ua.txt": ("userID\tartistID\tweight\n2\t51\t3\n", "lastfm"),
    }
    for name, (text, fmt) in cases.items():
        got, reason = detect_format(write(tmp_path / name, text))
        assert got == fmt, name
        assert name in reason
    p = tmp_path / "x.parquet"
    pl.DataFrame({"user": [1], "item": [2]}).write_parquet(p)
    assert detect_format(p)[0] == "parquet"
    with pytest.raises(DRError, match="different formats"):
        detect_format([tmp_path / "u.data", tmp_path / "other.csv"])


# --------------------------------------------------------------------------- real files
@pytest.mark.parametrize(
    "rel, fmt, rows, users, items, has_time, has_rating",
    [
        ("ml-100k/u.data", "ml-100k", 100_000, 943, 1_682, True, True),
        ("ml-latest-small/ratings.csv", "ml-csv", 100_836, 610, 9_724, True, True),
        ("ml-1m/pairs.csv.gz", "csv", 1_000_209, 6_040, 3_706, False, False),
        ("ml-1m/sample_100k_with_time.csv", "csv", 100_000, 5_961, 3_325, True, True),
        ("amazon-book/train.txt", "kgat", 652_514, 70_679, None, False, False),
        ("amazon-book/test.txt", "kgat", 193_920, 70_591, None, False, False),
        # README says 17,633 artists: line 2865 writes artist 65 as '65  ' (stripped here)
        ("lastfm-2k/user_artists.dat", "lastfm", 92_834, 1_892, 17_632, False, False),
    ],
)
def test_real_files(rel, fmt, rows, users, items, has_time, has_rating):
    path = real(rel)
    assert detect_format(path)[0] == fmt
    it = read(path)
    assert len(it) == len(it.item) == rows
    assert len(np.unique(it.user)) == users
    if items is not None:
        assert len(np.unique(it.item)) == items
    assert (it.time is not None) == has_time and (it.rating is not None) == has_rating
    with open(path, "rb") as f:  # first row as written in the file
        raw = (gzip.decompress(f.read()) if rel.endswith(".gz") else f.read()).decode()
    lines = [line for line in raw.splitlines() if line]
    first = lines[1] if not lines[0][0].isdigit() else lines[0]
    tok = first.replace("::", ",").replace("\t", ",").replace(" ", ",").split(",")
    assert (str(it.user[0]), str(it.item[0])) == (tok[0], tok[1])


def test_real_lastfm_play_count_is_not_rating():
    it = read(real("lastfm-2k/user_artists.dat"), "lastfm")
    assert it.rating is None and "not a rating" in it.source


# --------------------------------------------------------------------------- mistakes
def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DRError, match=r"nope\.csv not found"):
        read(tmp_path / "nope.csv", "csv")
    empty = write(tmp_path / "empty.csv", "")
    for fmt in ["auto", *FORMATS]:
        with pytest.raises(DRError, match="empty"):
            read(empty, fmt)
    only_header = write(tmp_path / "h.csv", "user,item\n")
    with pytest.raises(DRError, match="no data rows"):
        read(only_header, "csv")


def test_wrong_delimiter(tmp_path):
    comma = write(tmp_path / "r.csv", "user,item,rating\n1,2,3\n")
    with pytest.raises(DRError, match=r"r\.csv.*1 column.*wrong delimiter"):
        read(comma, "csv", sep=";")
    with pytest.raises(DRError, match=r"r\.csv.*1 column.*wrong delimiter"):
        read(comma, "ml-100k")
    with pytest.raises(DRError, match=r"r\.csv.*1 column.*wrong delimiter"):
        read(comma, "lastfm")
    with pytest.raises(DRError, match=r"r\.csv.*not 'user::item::rating::time'"):
        read(comma, "ml-dat")
    no_sep = write(tmp_path / "n.csv", "user item\n1 2\n")
    with pytest.raises(DRError, match=r"n\.csv: found none of the separators"):
        read(no_sep, "csv")


def test_missing_and_unknown_columns(tmp_path):
    p = write(tmp_path / "c.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(DRError, match=r"c\.csv.*user id; columns are a, b, c"):
        read(p, "csv")
    with pytest.raises(
        DRError, match=r"c\.csv: no column 'zz' \(for rating\); columns are a, b, c"
    ):
        read(p, "csv", user_col="a", item_col="b", rating_col="zz")
    q = write(tmp_path / "ratings.csv", "userId,itemId,rating,timestamp\n1,2,3,4\n")
    with pytest.raises(DRError, match=r"no column 'movieId'.*userId, itemId, rating, timestamp"):
        read(q, "ml-csv")


@pytest.mark.parametrize(
    "fmt, name, text",
    [
        ("ml-100k", "u.data", "1\t2\t3\t4\nx\t2\t3\t4\n"),
        ("ml-dat", "r.dat", "1::2::3::4\n1::b::3::4\n"),
        ("kgat", "t.txt", "0 1 2\n1 2 x3\n"),
        ("kgat", "t.txt", "0 1 2\nu1 2 3\n"),
        ("lastfm", "ua.dat", "2\t51\t3\n2\tabc\t3\n"),
    ],
)
def test_non_numeric_ids(tmp_path, fmt, name, text):
    p = write(tmp_path / name, text)
    with pytest.raises(DRError, match=rf"{name}: non-numeric .*id"):
        read(p, fmt)


def test_non_numeric_ids_late_in_file(tmp_path):
    rows = "".join(f"{i}\t{i}\t1\t1\n" for i in range(500)) + "7\tseven\t1\t1\n"
    with pytest.raises(DRError, match=r"non-numeric item id at row 501 \(value 'seven'\)"):
        read(write(tmp_path / "u.data", rows), "ml-100k")


def test_blank_lines_are_skipped_and_ragged_lines_named(tmp_path):
    it = read(write(tmp_path / "b.csv", "user,item\n1,2\n\n3,4\n\n\n"), "csv")
    assert it.user.tolist() == [1, 3]
    it = read(write(tmp_path / "u.data", "1\t2\t3\t4\n\n5\t6\t7\t8\n", "\r\n"), "ml-100k")
    assert it.user.tolist() == [1, 5]
    with pytest.raises(DRError, match=r"m\.csv: cannot be read as csv: found more fields"):
        read(write(tmp_path / "m.csv", "user,item\n1,2,3\n"), "csv")


def test_non_numeric_rating_and_time(tmp_path):
    p = write(tmp_path / "r.csv", "user,item,rating,time\n1,2,4,10\n1,3,good,11\n")
    with pytest.raises(DRError, match=r"r\.csv: non-numeric rating at row 2 \(value 'good'\)"):
        read(p, "csv")
    q = write(tmp_path / "t.csv", "user,item,rating,time\n1,2,4,10\n1,3,4,yesterday\n")
    with pytest.raises(DRError, match=r"t\.csv: non-numeric time at row 2"):
        read(q, "csv")


def test_missing_and_nan_fields_are_dropped_and_counted(tmp_path):
    # an empty cell and a NaN (written by pandas as 'NaN' or left empty) are treated alike
    e = write(tmp_path / "e.csv", "user,item,rating,time\n1,2,4,10\n,3,4,11\n1,4,,12\n1,5,NaN,13\n"
              "1,6,nan,14\n2,7,5,\n2,8,5,15\n")
    it = read(e, "csv")
    assert it.user.tolist() == [1, 2] and it.item.tolist() == [2, 8]
    assert it.rating.tolist() == [4.0, 5.0] and it.time.tolist() == [10.0, 15.0]
    assert it.dropped_missing == 5
    u = write(tmp_path / "u.data", "1\t2\t3\t4\n1\t3\tNaN\t5\n1\t4\t\t6\n")
    it = read(u, "ml-100k")
    assert it.item.tolist() == [2] and it.dropped_missing == 2
    # a column unused by the reader does not count; the row numbers of real errors stay exact
    x = write(tmp_path / "x.csv", "user,item,other\n1,2,\n3,4,\n")
    assert read(x, "csv").dropped_missing == 0
    g = write(tmp_path / "g.csv", "user,item,rating\n1,2,\n1,3,good\n")
    with pytest.raises(DRError, match=r"g\.csv: non-numeric rating at row 2 \(value 'good'\)"):
        read(g, "csv")
    n = write(tmp_path / "n.csv", "user,item,rating\n1,2,\n1,3,NaN\n")
    with pytest.raises(DRError, match=r"n\.csv: every one of its 2 rows has a missing or NaN field"):
        read(n, "csv")
    both = read([e, e], "csv")
    assert both.dropped_missing == 10 and len(both) == 4


def test_unknown_format_and_misplaced_options(tmp_path):
    p = write(tmp_path / "u.data", "1\t2\t3\t4\n")
    with pytest.raises(DRError, match="unknown format 'movielens'"):
        read(p, "movielens")
    with pytest.raises(DRError, match="fixed layout"):
        read(p, "ml-100k", user_col="user")
