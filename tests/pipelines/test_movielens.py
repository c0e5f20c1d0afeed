"""Tests of the MovieLens adapter: tiny hand-made zips in each GroupLens layout, and the real ml-100k.zip."""

from __future__ import annotations

import json
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.movielens import (
    EVENTS_SCHEMA,
    USERS_SCHEMA,
    VIDEOS_SCHEMA,
    detect_layout,
    read_movielens,
    write_movielens,
)
from recsys.errors import InputError
from recsys.schemas import USERS, VIDEOS, WATCH_EVENTS, schema_columns

REAL_100K = Path(__file__).resolve().parents[3] / "shared/data/ml-100k.zip"


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- tiny zips, one per layout ---------------------------------------------------------------------------

U_DATA = b"1\t10\t5\t881250949\n2\t10\t3\t891717742\n1\t20\t1\t874724710\n2\t30\t4\t893286638\n"
U_USER = b"1|24|M|technician|85711\n2|53|F|other|T8H1N\n3|33|F|writer|02139\n"
U_GENRE = b"unknown|0\nAction|1\nComedy|2\n\n"  # the original ends with a blank line too
U_ITEM = (
    "10|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Mis%E9rables|0|1|1\n"
    "20|unknown||||1|0|0\n"
    "30|Good Morning (1971)|4-Feb-1971||http://us.imdb.com/M/title-exact?Good|0|0|1\n"
).encode("latin-1")

RATINGS_DAT = b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
USERS_DAT = b"1::F::1::10::48067\n2::M::56::16::70072-1234\n3::M::25::15::V5A2B\n"
MOVIES_DAT = (
    "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
    "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
    "3::Misérables, Les (1995)::Drama|Musical\n"
    "5::What Now: (2001)::Comedy\n"
    "7::Ends With A Colon:::Drama\n"
    "8::No Genres (1999)::\n"
).encode("latin-1")

RATINGS_CSV = b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,3.5,964981247\n7,3,0.5,1106635946\n"
MOVIES_CSV = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '3,"American President, The (1995)",Comedy|Drama|Romance\n'
    '5,"Amélie (Fabuleux destin d\'Amélie Poulain, Le) (2001)",Comedy|Romance\n'
    '9,"A ""Quoted"" Title, The (2000)",(no genres listed)\n'
).encode()


@pytest.fixture
def zip_100k(tmp_path: Path) -> Path:
    members = {
        "ml-100k/": b"",
        "ml-100k/README": b"readme",
        "ml-100k/u.data": U_DATA,
        "ml-100k/u.user": U_USER,
    }
    members |= {"ml-100k/u.genre": U_GENRE, "ml-100k/u.item": U_ITEM, "ml-100k/u1.base": b"1\t10\t5\t1\n"}
    return _zip(tmp_path / "ml-100k.zip", members)


@pytest.fixture
def zip_1m(tmp_path: Path) -> Path:
    members = {"ml-1m/ratings.dat": RATINGS_DAT, "ml-1m/users.dat": USERS_DAT, "ml-1m/movies.dat": MOVIES_DAT}
    return _zip(tmp_path / "ml-1m.zip", members)


@pytest.fixture
def zip_latest(tmp_path: Path) -> Path:
    members = {
        "ml-latest-small/ratings.csv": RATINGS_CSV,
        "ml-latest-small/movies.csv": MOVIES_CSV,
        "ml-latest-small/links.csv": b"movieId,imdbId,tmdbId\n1,0114709,862\n",
    }
    return _zip(tmp_path / "ml-latest-small.zip", members)


def _by(table: pa.Table, key: str) -> dict[str, dict]:
    return {row[key]: row for row in table.to_pylist()}


def test_detect_layout(zip_100k: Path, zip_1m: Path, zip_latest: Path, tmp_path: Path) -> None:
    assert detect_layout(zip_100k) == "100k"
    assert detect_layout(zip_1m) == "1m"
    assert detect_layout(zip_latest) == "latest"
    flat = _zip(tmp_path / "flat.zip", {"ratings.dat": RATINGS_DAT, "users.dat": USERS_DAT, "movies.dat": MOVIES_DAT})
    assert detect_layout(flat) == "1m"
    assert read_movielens(flat).events.num_rows == 3


def test_read_100k(zip_100k: Path) -> None:
    tables = read_movielens(zip_100k)
    assert tables.layout == "100k"
    assert tables.users is not None
    assert (tables.events.num_rows, tables.users.num_rows, tables.videos.num_rows) == (4, 3, 3)
    assert tables.events.schema == EVENTS_SCHEMA
    assert tables.users.schema == USERS_SCHEMA
    assert tables.videos.schema == VIDEOS_SCHEMA

    events = tables.events.to_pylist()
    assert events[0] == {
        "user_id": "1",
        "video_id": "10",
        "ts": _utc(1997, 12, 4, 15, 55, 49),
        "watch_seconds": None,
        "rating": 5.0,
    }
    assert events[2]["ts"] == _utc(1997, 9, 20, 3, 5, 10)
    assert [e["rating"] for e in events] == [5.0, 3.0, 1.0, 4.0]

    users = _by(tables.users, "user_id")
    assert users["1"] == {
        "user_id": "1",
        "country": "zip:8",
        "device": None,
        "gender": "M",
        "age": 24.0,
        "logged_in": True,
        "occupation": "technician",
    }
    assert users["2"]["country"] is None  # a Canadian postal code is not numeric
    assert users["2"]["gender"] == "F"
    assert users["3"]["country"] == "zip:0"  # the zip is read as text: the leading zero survives

    videos = _by(tables.videos, "video_id")
    assert videos["10"]["title"] == "Misérables, Les (1995)"  # Latin-1 0xE9 decoded
    assert videos["10"]["upload_ts"] == _utc(1995, 1, 1)
    assert videos["10"]["genres"] == ["Action", "Comedy"]
    assert videos["20"] == {"video_id": "20", "title": "unknown", "upload_ts": None, "genres": ["unknown"]}
    assert videos["30"]["upload_ts"] == _utc(1971, 2, 4)  # one-digit day
    assert videos["30"]["genres"] == ["Comedy"]


def test_read_1m(zip_1m: Path) -> None:
    tables = read_movielens(zip_1m)
    assert tables.layout == "1m"
    assert tables.users is not None
    assert (tables.events.num_rows, tables.users.num_rows, tables.videos.num_rows) == (3, 3, 6)
    assert tables.events.schema == EVENTS_SCHEMA
    assert tables.users.schema == USERS_SCHEMA
    assert tables.videos.schema == VIDEOS_SCHEMA

    assert tables.events.to_pylist()[1] == {
        "user_id": "1",
        "video_id": "661",
        "ts": _utc(2000, 12, 31, 22, 35, 9),
        "watch_seconds": None,
        "rating": 3.0,
    }
    users = _by(tables.users, "user_id")
    assert (users["1"]["gender"], users["1"]["age"], users["1"]["occupation"]) == ("F", 1.0, "10")
    assert users["1"]["country"] == "zip:4"
    assert (users["2"]["age"], users["2"]["country"]) == (56.0, "zip:7")  # ZIP+4 counts as numeric
    assert users["3"]["country"] is None
    assert set(pc.unique(tables.users["logged_in"]).to_pylist()) == {True}

    videos = _by(tables.videos, "video_id")
    assert videos["661"]["genres"] == ["Animation", "Children's", "Musical"]
    assert videos["3"]["title"] == "Misérables, Les (1995)"
    assert videos["5"]["title"] == "What Now: (2001)"
    assert videos["7"] == {
        "video_id": "7",
        "title": "Ends With A Colon:",
        "upload_ts": None,
        "genres": ["Drama"],
    }
    assert videos["8"]["genres"] == []


def test_read_latest(zip_latest: Path) -> None:
    tables = read_movielens(zip_latest)
    assert tables.layout == "latest"
    assert tables.users is None
    assert (tables.events.num_rows, tables.videos.num_rows) == (3, 4)
    assert tables.events.schema == EVENTS_SCHEMA
    assert tables.videos.schema == VIDEOS_SCHEMA

    events = tables.events.to_pylist()
    assert [e["rating"] for e in events] == [4.0, 3.5, 0.5]
    assert events[2]["user_id"] == "7" and events[2]["video_id"] == "3"
    assert events[0]["ts"] == _utc(2000, 7, 30, 18, 45, 3)

    videos = _by(tables.videos, "video_id")
    assert videos["3"]["title"] == "American President, The (1995)"
    assert videos["3"]["genres"] == ["Comedy", "Drama", "Romance"]
    assert videos["5"]["title"] == "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)"
    assert videos["9"]["title"] == 'A "Quoted" Title, The (2000)'
    assert videos["9"]["genres"] == ["(no genres listed)"]
    assert videos["1"]["upload_ts"] is None


def test_extra_columns_extend_the_contract() -> None:
    assert schema_columns(EVENTS_SCHEMA) == [*schema_columns(WATCH_EVENTS), "rating"]
    assert schema_columns(USERS_SCHEMA) == [*schema_columns(USERS), "occupation"]
    assert schema_columns(VIDEOS_SCHEMA) == [*schema_columns(VIDEOS), "genres"]


# --- errors ----------------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_movielens(tmp_path / "nope.zip")


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "ratings.zip"
    path.write_bytes(b"userId,movieId\n1,2\n")
    with pytest.raises(InputError, match=r"ratings\.zip: not a zip archive"):
        detect_layout(path)
    with pytest.raises(InputError, match="not a zip archive"):
        read_movielens(tmp_path)  # a directory


def test_zip_without_a_layout(tmp_path: Path) -> None:
    path = _zip(tmp_path / "other.zip", {"data/readme.txt": b"hello", "data/ratings.json": b"{}"})
    with pytest.raises(InputError, match=r"other\.zip: not a MovieLens zip.*u\.data.*ratings\.dat.*ratings\.csv"):
        read_movielens(path)


def test_layout_without_ratings(tmp_path: Path) -> None:
    path = _zip(tmp_path / "ml-1m.zip", {"ml-1m/users.dat": USERS_DAT, "ml-1m/movies.dat": MOVIES_DAT})
    assert detect_layout(path) == "1m"
    with pytest.raises(InputError, match=r"ml-1m\.zip: MovieLens 1m layout in 'ml-1m/' has no ratings\.dat"):
        read_movielens(path)


def test_layout_without_its_movies_file(tmp_path: Path) -> None:
    path = _zip(tmp_path / "x.zip", {"ml-latest-small/ratings.csv": RATINGS_CSV})
    with pytest.raises(InputError, match=r"has no movies\.csv"):
        read_movielens(path)


def test_ambiguous_zip(tmp_path: Path) -> None:
    path = _zip(tmp_path / "both.zip", {"a/u.data": U_DATA, "b/ratings.csv": RATINGS_CSV})
    with pytest.raises(InputError, match="ambiguous"):
        detect_layout(path)


def test_malformed_ratings_name_the_member(tmp_path: Path) -> None:
    bad = RATINGS_DAT + b"3::12::five::978300760\n"
    path = _zip(tmp_path / "ml-1m.zip", {"ml-1m/ratings.dat": bad, "ml-1m/users.dat": USERS_DAT})
    with pytest.raises(InputError, match=r"ml-1m\.zip!ml-1m/ratings\.dat: cannot parse"):
        read_movielens(path)


@pytest.mark.parametrize(
    ("member", "data", "message"),
    [
        (
            "movies.dat",
            MOVIES_DAT + b"99 Broken Line (2000)|Drama\n",
            r"movies\.dat: line 7 is not 'MovieID::Title::Genres'",
        ),
        ("movies.dat", MOVIES_DAT + b"x9::Bad Id (2000)::Drama\n", r"movies\.dat: line 7 is not"),
        ("ratings.dat", RATINGS_DAT + b"3::12::4::978300760\x1f\n", r"ratings\.dat: holds the byte 0x1f"),
    ],
)
def test_malformed_1m_files(tmp_path: Path, member: str, data: bytes, message: str) -> None:
    files = {"ratings.dat": RATINGS_DAT, "users.dat": USERS_DAT, "movies.dat": MOVIES_DAT, member: data}
    path = _zip(tmp_path / "ml-1m.zip", {f"ml-1m/{name}": body for name, body in files.items()})
    with pytest.raises(InputError, match=message):
        read_movielens(path)


def test_unknown_gender_is_null(tmp_path: Path) -> None:
    users = USERS_DAT + b"4::X::18::0::12345\n"
    files = {"ratings.dat": RATINGS_DAT, "users.dat": users, "movies.dat": MOVIES_DAT}
    tables = read_movielens(_zip(tmp_path / "ml-1m.zip", files))
    assert tables.users is not None
    assert tables.users["gender"].to_pylist() == ["F", "M", "M", None]
    assert tables.users["occupation"].to_pylist()[3] == "0"


def test_empty_id_is_an_error(tmp_path: Path) -> None:
    bad = RATINGS_CSV + b",3,4.0,964982703\n"
    path = _zip(tmp_path / "l.zip", {"ratings.csv": bad, "movies.csv": MOVIES_CSV})
    with pytest.raises(InputError, match=r"l\.zip!ratings\.csv: cannot parse"):
        read_movielens(path)


def test_duplicate_video_ids(tmp_path: Path) -> None:
    dup = MOVIES_CSV + b"3,Again (1999),Drama\n"
    path = _zip(tmp_path / "l.zip", {"ratings.csv": RATINGS_CSV, "movies.csv": dup})
    with pytest.raises(InputError, match="1 duplicate IDs"):
        read_movielens(path)


# --- writing ---------------------------------------------------------------------------------------------


def test_write_round_trip(zip_100k: Path, tmp_path: Path) -> None:
    tables = read_movielens(zip_100k)
    out = tmp_path / "out" / "ml-100k"
    counts = write_movielens(tables, out)
    assert counts == {"events": 4, "users": 3, "videos": 3}
    assert sorted(p.name for p in out.iterdir()) == [
        "events.parquet",
        "manifest.json",
        "users.parquet",
        "videos.parquet",
    ]
    events = pq.read_table(out / "events.parquet")
    assert events.schema.remove_metadata() == EVENTS_SCHEMA
    assert events.equals(tables.events)
    assert pq.read_table(out / "users.parquet").schema.remove_metadata() == USERS_SCHEMA
    videos = pq.read_table(out / "videos.parquet")
    assert videos.schema.remove_metadata() == VIDEOS_SCHEMA
    assert videos.column("title").to_pylist()[0] == "Misérables, Les (1995)"

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layout"] == "100k"
    assert manifest["counts"] == counts
    assert manifest["columns"]["events"] == schema_columns(EVENTS_SCHEMA)
    assert manifest["ts_min"] == "1997-09-20T03:05:10+00:00"

    # A second write replaces the first; no temporary or old directory is left behind.
    assert write_movielens(tables, out) == counts
    assert sorted(p.name for p in out.parent.iterdir()) == ["ml-100k"]


def test_write_latest_has_no_users_file(zip_latest: Path, tmp_path: Path) -> None:
    out = tmp_path / "latest"
    counts = write_movielens(read_movielens(zip_latest), out)
    assert counts == {"events": 3, "videos": 4}
    assert not (out / "users.parquet").exists()
    assert json.loads((out / "manifest.json").read_text())["files"] == {
        "events": "events.parquet",
        "videos": "videos.parquet",
    }


def test_write_refuses_to_replace_unrelated_directory(zip_latest: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(InputError, match="refusing to replace"):
        write_movielens(read_movielens(zip_latest), out)
    assert (out / "thesis.tex").read_text() == "do not delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-latest-small.zip", "precious"]

    (out / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="refusing to replace"):
        write_movielens(read_movielens(zip_latest), out)
    assert (out / "thesis.tex").exists()


def test_write_failure_leaves_nothing(zip_1m: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tables = read_movielens(zip_1m)
    out = tmp_path / "out"
    write_movielens(tables, out)
    before = (out / "events.parquet").read_bytes()
    real_write = pq.write_table
    written: list[str] = []

    def failing_write(table: pa.Table, where: Path, **kwargs: object) -> None:
        if written:
            raise OSError("disk full")
        written.append(str(where))
        real_write(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_movielens(tables, out)
    assert len(written) == 1  # it failed half way through
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-1m.zip", "out"]
    assert (out / "events.parquet").read_bytes() == before  # the earlier output is untouched


def test_failed_swap_restores_old_output(zip_1m: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tables = read_movielens(zip_1m)
    out = tmp_path / "out"
    write_movielens(tables, out)
    real_replace = os.replace

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        if ".tmp-" in Path(src).name:
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        write_movielens(tables, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-1m.zip", "out"]
    assert (out / "manifest.json").is_file()


# --- the real MovieLens 100K -----------------------------------------------------------------------------


def test_real_ml_100k() -> None:
    if not REAL_100K.is_file():
        pytest.skip(f"real MovieLens 100K zip not found at {REAL_100K} (shared/data/ml-100k.zip)")
    assert detect_layout(REAL_100K) == "100k"
    tables = read_movielens(REAL_100K)
    assert tables.users is not None
    assert tables.events.num_rows == 100_000
    assert tables.users.num_rows == 943
    assert tables.videos.num_rows == 1_682
    assert pc.count_distinct(tables.events["user_id"]).as_py() == 943
    assert pc.count_distinct(tables.events["video_id"]).as_py() == 1_682

    ts = pc.min_max(tables.events["ts"]).as_py()
    assert ts["min"].date().isoformat() == "1997-09-20"
    assert ts["max"].date().isoformat() == "1998-04-22"
    assert ts["min"].utcoffset().total_seconds() == 0

    counts = pc.value_counts(tables.events["rating"]).to_pylist()
    assert {int(c["values"]): c["counts"] for c in counts} == {
        1: 6110,
        2: 11370,
        3: 27145,
        4: 34174,
        5: 21201,
    }

    assert pc.sum(pc.is_null(tables.users["country"])).as_py() == 18  # Canadian postal codes
    assert set(pc.unique(tables.users["gender"]).to_pylist()) == {"M", "F"}
    videos = _by(tables.videos, "video_id")
    assert videos["1633"]["title"] == "Á köldum klaka (Cold Fever) (1994)"
    assert videos["1"]["genres"] == ["Animation", "Children's", "Comedy"]
    assert pc.sum(pc.is_null(tables.videos["upload_ts"])).as_py() == 1
