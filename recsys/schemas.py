"""Arrow schemas of every table the project reads or writes: the one definition all layers share."""

from __future__ import annotations

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")

# Index 0 of every vocabulary is reserved for out-of-vocabulary (and unknown/missing) values.
OOV_INDEX = 0
OOV_TOKEN = "[OOV]"

# --- raw inputs (the watch-log contract) ---------------------------------------------------------------

WATCH_EVENTS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("ts", TIMESTAMP, nullable=False),
        pa.field("watch_seconds", pa.float64()),
    ]
)
WATCH_REQUIRED = ("user_id", "video_id", "ts")

SEARCH_EVENTS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("ts", TIMESTAMP, nullable=False),
        pa.field("query", pa.string(), nullable=False),
    ]
)
SEARCH_REQUIRED = ("user_id", "ts", "query")

USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("country", pa.string()),
        pa.field("device", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("age", pa.float64()),
        pa.field("logged_in", pa.bool_()),
    ]
)
USERS_REQUIRED = ("user_id",)

VIDEOS = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("upload_ts", TIMESTAMP),
    ]
)
VIDEOS_REQUIRED = ("video_id",)

# --- the unified per-user input of the example transform -----------------------------------------------
# Watches and searches of a set of users in one table (a search has a null video_id and a query; a watch the
# reverse), with the user's side-table attributes repeated on every row so that one group is self-contained.
USER_EVENTS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("ts", TIMESTAMP, nullable=False),
        pa.field("video_id", pa.string()),
        pa.field("query", pa.string()),
        pa.field("country", pa.string()),
        pa.field("device", pa.string()),
        pa.field("gender", pa.string()),
        pa.field("age", pa.float64()),
        pa.field("logged_in", pa.bool_()),
    ]
)

# --- outputs -------------------------------------------------------------------------------------------

SPLITS = ("train", "validation", "test")

EXAMPLES = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("label_ts", TIMESTAMP, nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("history", pa.list_(pa.int32()), nullable=False),
        pa.field("search_tokens", pa.list_(pa.int32()), nullable=False),
        pa.field("example_age_days", pa.float32(), nullable=False),
        pa.field("country", pa.int32(), nullable=False),
        pa.field("device", pa.int32(), nullable=False),
        pa.field("gender", pa.int32(), nullable=False),
        pa.field("age", pa.float32(), nullable=False),
        pa.field("logged_in", pa.float32(), nullable=False),
    ]
)

VOCAB = pa.schema(
    [
        pa.field("index", pa.int32(), nullable=False),
        pa.field("value", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)
# The video vocabulary names its value column video_id, as the contract says.
VIDEO_VOCAB = pa.schema(
    [
        pa.field("index", pa.int32(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("count", pa.int64(), nullable=False),
    ]
)

# Quarantined rows keep every original column as text so nothing is lost, whatever made them bad.
QUARANTINE = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("row", pa.string(), nullable=False),
    ]
)


def schema_columns(schema: pa.Schema) -> list[str]:
    """Column names of a schema, in order."""
    return [f.name for f in schema]
