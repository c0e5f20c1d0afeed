"""MovieLens adapter: reads an original GroupLens zip (100K, 1M or latest) into the watch-log contract.

Every rating becomes one watch event (the rating is kept as an extra column); the users and movies files
become the users and videos side tables. The zip is read in place: nothing is extracted, nothing downloaded.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys.errors import InputError
from recsys.publish import Owner, publish_dir
from recsys.schemas import TIMESTAMP, USERS, VIDEOS, WATCH_EVENTS

LAYOUTS = ("100k", "1m", "latest")

# The contract's tables plus the MovieLens-specific columns, which downstream steps may ignore.
EVENTS_SCHEMA = WATCH_EVENTS.append(pa.field("rating", pa.float64(), nullable=False))
USERS_SCHEMA = USERS.append(pa.field("occupation", pa.string()))
VIDEOS_SCHEMA = VIDEOS.append(pa.field("genres", pa.list_(pa.string())))

MANIFEST_FORMAT = "movielens"

# The files each layout needs, by role. Any of them found in the zip identifies the layout.
_FILES: dict[str, dict[str, str]] = {
    "100k": {"ratings": "u.data", "users": "u.user", "videos": "u.item", "genres": "u.genre"},
    "1m": {"ratings": "ratings.dat", "users": "users.dat", "videos": "movies.dat"},
    "latest": {"ratings": "ratings.csv", "videos": "movies.csv"},
}

# 1M files separate fields by "::", which pyarrow.csv cannot take; it is swapped in memory for this byte.
_UNIT_SEPARATOR = b"\x1f"
_NUMERIC_ZIP = r"^[0-9]+(-[0-9]+)?$"
_RELEASE_DATE_FORMAT = "%d-%b-%Y"  # 100K, e.g. "01-Jan-1995"


@dataclass(frozen=True)
class MovieLensTables:
    """The three tables read from one MovieLens zip, already in the project's contract."""

    layout: str  # "100k" | "1m" | "latest"
    events: pa.Table  # EVENTS_SCHEMA: WATCH_EVENTS + rating
    users: pa.Table | None  # USERS_SCHEMA: USERS + occupation; None for "latest" (it has no users file)
    videos: pa.Table  # VIDEOS_SCHEMA: VIDEOS + genres


# --- locating the layout inside the zip ------------------------------------------------------------------


@dataclass(frozen=True)
class _Located:
    layout: str
    folder: str  # prefix of the layout's files inside the zip ("" or e.g. "ml-100k/")
    members: dict[str, str]  # file name -> member name, for the files of the layout that are present


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    if not zip_path.exists():
        raise InputError(f"{zip_path}: no such file (expected a MovieLens .zip from GroupLens)")
    if not zip_path.is_file() or not zipfile.is_zipfile(zip_path):
        raise InputError(f"{zip_path}: not a zip archive (expected a MovieLens .zip from GroupLens)")
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{zip_path}: cannot open the zip archive: {exc}") from exc


def _expected_files() -> str:
    return ", ".join(f"{files['ratings']} ({layout})" for layout, files in _FILES.items())


def _locate(zf: zipfile.ZipFile, zip_path: Path) -> _Located:
    found: dict[tuple[str, str], dict[str, str]] = {}
    for name in zf.namelist():
        if name.endswith("/") or name.startswith("__MACOSX/"):
            continue
        pure = PurePosixPath(name)
        if pure.name.startswith("._"):
            continue
        folder = "" if str(pure.parent) == "." else f"{pure.parent}/"
        for layout, files in _FILES.items():
            if pure.name in files.values():
                found.setdefault((layout, folder), {})[pure.name] = name
    if not found:
        raise InputError(
            f"{zip_path}: not a MovieLens zip: none of the known layouts found (expected one of {_expected_files()})"
        )
    if len(found) > 1:
        where = ", ".join(f"{layout} in '{folder or '/'}'" for layout, folder in sorted(found))
        raise InputError(f"{zip_path}: ambiguous MovieLens zip: several layouts found ({where}); expected exactly one")
    (layout, folder), members = next(iter(found.items()))
    return _Located(layout, folder, members)


def _member(zf: zipfile.ZipFile, zip_path: Path, where: _Located, role: str) -> str:
    file = _FILES[where.layout][role]
    member = where.members.get(file)
    if member is None:
        needed = ", ".join(_FILES[where.layout].values())
        raise InputError(
            f"{zip_path}: MovieLens {where.layout} layout in '{where.folder or '/'}' has no {file} "
            f"(its {role} file); expected the files {needed}"
        )
    return member


def detect_layout(zip_path: Path) -> str:
    """The MovieLens layout ("100k", "1m", "latest") of a zip, by member names, so callers branch early."""
    zip_path = Path(zip_path)
    with _open_zip(zip_path) as zf:
        return _locate(zf, zip_path).layout


# --- parsing ---------------------------------------------------------------------------------------------


def _parse(
    source: bytes | IO[bytes],
    *,
    what: str,
    names: Sequence[str],
    types: dict[str, pa.DataType],
    delimiter: str,
    header: bool = False,
    quoting: bool = False,
    encoding: str = "utf8",
    empty_is_null: bool = False,
) -> pa.Table:
    """Parse one delimited member with explicit options; `names` are the columns to read (header's if any)."""
    read = pacsv.ReadOptions(column_names=None if header else list(names), encoding=encoding)
    parse = pacsv.ParseOptions(
        delimiter=delimiter,
        quote_char='"' if quoting else False,
        double_quote=quoting,
        newlines_in_values=False,
    )
    convert = pacsv.ConvertOptions(
        column_types=types,
        include_columns=list(names),
        null_values=[""] if empty_is_null else [],
        strings_can_be_null=empty_is_null,
        quoted_strings_can_be_null=False,
    )
    stream = pa.BufferReader(source) if isinstance(source, bytes) else source
    try:
        table = pacsv.read_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowException, UnicodeDecodeError) as exc:
        raise InputError(f"{what}: cannot parse: {exc}") from exc
    for name, type_ in types.items():
        if pa.types.is_integer(type_) and table[name].null_count:
            raise InputError(f"{what}: {table[name].null_count} rows have an empty {name}")
    return table


def _double_colon_to_byte(data: bytes, what: str) -> bytes:
    if _UNIT_SEPARATOR in data:
        raise InputError(f"{what}: holds the byte 0x1f, which the '::' parser needs as a stand-in separator")
    return data.replace(b"::", _UNIT_SEPARATOR)


def _ids(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.cast(pa.string())


def _unix_seconds(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.multiply_checked(column, 1_000_000).cast(TIMESTAMP)


def _require_unique(ids: pa.ChunkedArray, what: str) -> None:
    distinct = pc.count_distinct(ids).as_py()
    if distinct != len(ids):
        raise InputError(f"{what}: {len(ids) - distinct} duplicate IDs (expected one row per ID)")


def _events(raw: pa.Table) -> pa.Table:
    """user, item, rating, timestamp (unix seconds) -> EVENTS_SCHEMA."""
    return pa.Table.from_arrays(
        [
            _ids(raw["user"]),
            _ids(raw["item"]),
            _unix_seconds(raw["timestamp"]),
            pa.nulls(raw.num_rows, pa.float64()),
            raw["rating"],
        ],
        schema=EVENTS_SCHEMA,
    )


_RATING_TYPES: dict[str, pa.DataType] = {
    "user": pa.int64(),
    "item": pa.int64(),
    "rating": pa.float64(),
    "timestamp": pa.int64(),
}


def _users(raw: pa.Table, what: str) -> pa.Table:
    """user, gender, age, occupation, zip -> USERS_SCHEMA."""
    n = raw.num_rows
    zip_code = pc.utf8_trim_whitespace(raw["zip"])
    first_digit = pc.binary_join_element_wise("zip:", pc.utf8_slice_codeunits(zip_code, 0, 1), "")
    country = pc.if_else(pc.match_substring_regex(zip_code, _NUMERIC_ZIP), first_digit, pa.scalar(None, pa.string()))
    gender = pc.utf8_trim_whitespace(raw["gender"])
    gender = pc.if_else(pc.is_in(gender, pa.array(["M", "F"])), gender, pa.scalar(None, pa.string()))
    users = pa.Table.from_arrays(
        [
            _ids(raw["user"]),
            country,
            pa.nulls(n, pa.string()),
            gender,
            raw["age"].cast(pa.float64()),
            pa.array(np.ones(n, dtype=bool)),
            raw["occupation"],
        ],
        schema=USERS_SCHEMA,
    )
    _require_unique(users["user_id"], what)
    return users


def _genre_lists(per_video: list[list[str]]) -> pa.Array:
    return pa.array(per_video, pa.list_(pa.string()))


def _videos(
    video_id: pa.ChunkedArray,
    title: pa.ChunkedArray,
    upload_ts: pa.ChunkedArray | pa.Array,
    genres: pa.Array,
    what: str,
) -> pa.Table:
    videos = pa.Table.from_arrays([_ids(video_id), title, upload_ts, genres], schema=VIDEOS_SCHEMA)
    _require_unique(videos["video_id"], what)
    return videos


# --- the three layouts -----------------------------------------------------------------------------------


def _read_100k(zf: zipfile.ZipFile, zip_path: Path, where: _Located) -> MovieLensTables:
    def member(role: str) -> tuple[str, str]:
        name = _member(zf, zip_path, where, role)
        return name, f"{zip_path}!{name}"

    ratings_member, what = member("ratings")
    with zf.open(ratings_member) as f:
        raw = _parse(f, what=what, names=list(_RATING_TYPES), types=_RATING_TYPES, delimiter="\t")
    events = _events(raw)

    users_member, what = member("users")
    with zf.open(users_member) as f:
        raw = _parse(
            f,
            what=what,
            names=["user", "age", "gender", "occupation", "zip"],
            types={
                "user": pa.int64(),
                "age": pa.int64(),
                "gender": pa.string(),
                "occupation": pa.string(),
                "zip": pa.string(),
            },
            delimiter="|",
        )
    users = _users(raw, what)

    genres_member, what = member("genres")
    genre_names = _read_100k_genres(zf.read(genres_member), what)

    items_member, what = member("videos")
    flags = [f"genre_{i}" for i in range(len(genre_names))]
    names = ["item", "title", "release_date", "video_release_date", "imdb_url", *flags]
    types: dict[str, pa.DataType] = {name: pa.string() for name in names}
    types.update({"item": pa.int64(), **{flag: pa.bool_() for flag in flags}})
    with zf.open(items_member) as f:
        raw = _parse(f, what=what, names=names, types=types, delimiter="|", encoding="latin1", empty_is_null=True)
    for flag in flags:
        if raw[flag].null_count:
            raise InputError(f"{what}: {raw[flag].null_count} rows have an empty genre flag ({flag})")
    try:
        upload_ts = pc.strptime(raw["release_date"], format=_RELEASE_DATE_FORMAT, unit="us").cast(TIMESTAMP)
    except pa.ArrowException as exc:
        raise InputError(f"{what}: a release date is not like 01-Jan-1995: {exc}") from exc
    matrix = np.column_stack([raw[flag].to_numpy() for flag in flags]) if flags else np.zeros((raw.num_rows, 0))
    per_video = [[genre_names[i] for i in np.flatnonzero(row)] for row in matrix]
    videos = _videos(raw["item"], raw["title"], upload_ts, _genre_lists(per_video), what)
    return MovieLensTables("100k", events, users, videos)


def _read_100k_genres(data: bytes, what: str) -> list[str]:
    by_index: dict[int, str] = {}
    for lineno, line in enumerate(data.decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, index = line.rpartition("|")
        try:
            position = int(index)
        except ValueError:
            position = -1
        if not sep or not name or position < 0 or position in by_index:
            raise InputError(f"{what}: line {lineno} is not 'name|index' with a new index: {line!r}")
        by_index[position] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise InputError(f"{what}: genre indexes are not 0..{len(by_index) - 1}: {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def _read_1m(zf: zipfile.ZipFile, zip_path: Path, where: _Located) -> MovieLensTables:
    sep = _UNIT_SEPARATOR.decode()

    ratings_member = _member(zf, zip_path, where, "ratings")
    what = f"{zip_path}!{ratings_member}"
    data = _double_colon_to_byte(zf.read(ratings_member), what)
    events = _events(_parse(data, what=what, names=list(_RATING_TYPES), types=_RATING_TYPES, delimiter=sep))
    del data

    users_member = _member(zf, zip_path, where, "users")
    what = f"{zip_path}!{users_member}"
    raw = _parse(
        _double_colon_to_byte(zf.read(users_member), what),
        what=what,
        names=["user", "gender", "age", "occupation", "zip"],
        types={
            "user": pa.int64(),
            "gender": pa.string(),
            "age": pa.int64(),
            "occupation": pa.string(),
            "zip": pa.string(),
        },
        delimiter=sep,
        encoding="latin1",
    )
    users = _users(raw, what)

    movies_member = _member(zf, zip_path, where, "videos")
    what = f"{zip_path}!{movies_member}"
    ids: list[int] = []
    titles: list[str] = []
    per_video: list[list[str]] = []
    # Parsed by hand (3,883 lines): the title is whatever lies between the first and the last "::", so a title
    # holding ':' or "::" still splits right, which a byte substitution could not promise.
    for lineno, line in enumerate(zf.read(movies_member).decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        head, first, rest = line.partition("::")
        title, last, genres = rest.rpartition("::")
        try:
            movie_id = int(head)
        except ValueError:
            movie_id = -1
        if not first or not last or movie_id < 0:
            raise InputError(f"{what}: line {lineno} is not 'MovieID::Title::Genres': {line!r}")
        ids.append(movie_id)
        titles.append(title)
        per_video.append(genres.split("|") if genres else [])
    videos = _videos(
        pa.chunked_array([pa.array(ids, pa.int64())]),
        pa.chunked_array([pa.array(titles, pa.string())]),
        pa.nulls(len(ids), TIMESTAMP),
        _genre_lists(per_video),
        what,
    )
    return MovieLensTables("1m", events, users, videos)


def _read_latest(zf: zipfile.ZipFile, zip_path: Path, where: _Located) -> MovieLensTables:
    ratings_member = _member(zf, zip_path, where, "ratings")
    what = f"{zip_path}!{ratings_member}"
    header_names = {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "timestamp"}
    with zf.open(ratings_member) as f:
        raw = _parse(
            f,
            what=what,
            names=list(header_names),
            types={name: _RATING_TYPES[ours] for name, ours in header_names.items()},
            delimiter=",",
            header=True,
            quoting=True,
        )
    events = _events(raw.rename_columns([header_names[name] for name in raw.column_names]))

    movies_member = _member(zf, zip_path, where, "videos")
    what = f"{zip_path}!{movies_member}"
    with zf.open(movies_member) as f:
        raw = _parse(
            f,
            what=what,
            names=["movieId", "title", "genres"],
            types={"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()},
            delimiter=",",
            header=True,
            quoting=True,
        )
    per_video = [genres.split("|") if genres else [] for genres in raw["genres"].to_pylist()]
    videos = _videos(raw["movieId"], raw["title"], pa.nulls(raw.num_rows, TIMESTAMP), _genre_lists(per_video), what)
    return MovieLensTables("latest", events, None, videos)


_READERS = {"100k": _read_100k, "1m": _read_1m, "latest": _read_latest}


def read_movielens(zip_path: Path) -> MovieLensTables:
    """Read a GroupLens MovieLens zip into contract tables (ratings as watches) so the pipeline can use it."""
    zip_path = Path(zip_path)
    with _open_zip(zip_path) as zf:
        where = _locate(zf, zip_path)
        _member(zf, zip_path, where, "ratings")  # the ratings file is the one a layout cannot do without: check first
        return _READERS[where.layout](zf, zip_path, where)


# --- writing ---------------------------------------------------------------------------------------------


def _is_earlier_output(out: Path) -> bool:
    """Whether a non-empty directory is a previous write_movielens output (the only kind it may replace)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT


_EARLIER_OUTPUT = Owner(
    _is_earlier_output, f"an earlier MovieLens output (no manifest.json with format '{MANIFEST_FORMAT}')"
)


def _iso(value: pa.Scalar) -> str | None:
    as_py = value.as_py()
    return None if as_py is None else as_py.isoformat()


def write_movielens(tables: MovieLensTables, out: Path) -> dict[str, int]:
    """Write the tables as Parquet + manifest.json into directory `out` atomically, so none sees half a write.

    Returns the row count of each table written: keys "events" and "videos", and "users" when there are users.
    An existing `out` is replaced only if it is empty or an earlier output of this function.
    """
    out = Path(out)
    if tables.layout not in LAYOUTS:
        raise InputError(f"unknown MovieLens layout {tables.layout!r}; expected one of {', '.join(LAYOUTS)}")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory; expected a directory for the MovieLens tables")

    named = {"events": tables.events, "users": tables.users, "videos": tables.videos}
    present = {name: table for name, table in named.items() if table is not None}
    counts = {name: table.num_rows for name, table in present.items()}
    ts = tables.events["ts"]
    manifest = {
        "format": MANIFEST_FORMAT,
        "layout": tables.layout,
        "counts": counts,
        "files": {name: f"{name}.parquet" for name in present},
        "columns": {name: table.column_names for name, table in present.items()},
        "ts_min": _iso(pc.min(ts)),
        "ts_max": _iso(pc.max(ts)),
    }

    with publish_dir(out, overwrite=True, owner=_EARLIER_OUTPUT) as tmp:
        for name, table in present.items():
            pq.write_table(table, tmp / f"{name}.parquet")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return counts
