"""Deterministic synthetic watch log with planted structure: the default data and the scale-test source.

The world: ``topics`` topics, each with a small vocabulary of made-up words; every video has one topic
and a Zipf popularity; every user has a few interest topics (sparse Dirichlet, shifted by the user's
demographics so side features carry signal). Users watch in sessions that stick to one of their topics,
some sessions start with a search made of that topic's words, and a tenth of the watches are pure
popularity noise. The planted truth is written next to the tables (``truth/``) so that tests and
evaluations can check what a model recovers.

Everything is vectorised per chunk of users (no Python loop per event or per user) and streamed to
Parquet, so memory stays bounded by ``chunk_events`` whatever the size of the log. The same config (seed
included) gives the same table contents.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray
from tqdm import tqdm

from recsys.config import GeneratorConfig
from recsys.errors import RecsysError
from recsys.logs import progress_enabled
from recsys.publish import Owner, publish_dir
from recsys.schemas import SEARCH_EVENTS, TIMESTAMP, USERS, VIDEOS, WATCH_EVENTS

log = logging.getLogger(__name__)
GENERATOR_VERSION = "1.0.0"
START = datetime(2026, 1, 1, tzinfo=UTC)
_START_S = int(START.timestamp())
_US = 1_000_000

# --- the shape of the simulated world (recorded in the manifest) -------------------------------------------
INTEREST_ALPHA = 0.1  # per-topic Dirichlet concentration of a user's interests (sparse)
INTEREST_TOPICS = 3  # interest topics kept per user (the top few of the Dirichlet draw)
INTEREST_MIN_WEIGHT = 0.03  # kept weights below this are dropped
NOISE_SHARE = 0.10  # watches drawn from global popularity, ignoring the user
SESSION_STAY = 0.8  # chance a watch stays on the session's topic (else a fresh draw from the user's interests)
SESSION_MEAN_WATCHES = 6.0  # mean watches per session (geometric)
SESSION_GAP_S = 1800.0  # least idle time between two sessions of a user
SEARCH_LEAD_S = 120.0  # searches happen up to this long before the session's first watch
BROWSE_GAP_MEAN_S = 20.0  # mean idle seconds between the end of one watch and the start of the next
ACTIVITY_SIGMA = 1.2  # lognormal sigma of per-user activity (heavy tail)
NULL_WATCH_SECONDS = 0.02  # share of watches whose watch_seconds is missing
NEW_VIDEO_SHARE = 0.10  # videos uploaded during the log window (before their first watch)
WORDS_PER_TOPIC = 10

COUNTRIES = (
    "US", "IN", "BR", "ID", "MX", "JP", "DE", "GB", "FR", "PH",
    "TR", "VN", "KR", "IT", "ES", "CA", "NG", "PL", "AU", "NL",
)  # fmt: skip
DEVICES = ("mobile", "desktop", "tablet", "tv")
DEVICE_P = (0.62, 0.24, 0.09, 0.05)
GENDERS = ("M", "F")
GENDER_P = (0.46, 0.44)  # the rest is missing
AGE_BANDS = (18.0, 25.0, 35.0, 50.0)  # edges: 13-17, 18-24, 25-34, 35-49, 50+ (plus one band for missing)
NULL_AGE = 0.03
LOGGED_IN_P = 0.8
# Demographic shifts of the topic prior (std of a per-value log-multiplier on each topic).
EFFECT_STD = {"country": 1.0, "age": 0.6, "gender": 0.4, "device": 0.3}
GENERIC_WORDS = (
    "best", "new", "top", "how", "to", "review", "live", "official", "full", "guide", "funny", "2026",
)  # fmt: skip

_ONSETS = (
    "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v",
    "w", "z", "br", "cr", "dr", "fl", "gr", "kl", "pr", "sk", "sl", "st", "tr", "ch", "sh", "th",
)  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ou")
_CODAS = ("", "", "", "", "n", "r", "s", "l", "k", "m", "x")

_STREAM_WORLD, _STREAM_USERS, _STREAM_COUNTS, _STREAM_CHUNK, _STREAM_UPLOAD = range(5)


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent PCG64 stream for one purpose (and one chunk), derived from the seed."""
    entropy = seed % (1 << 128)  # SeedSequence wants a non-negative seed; keeps negative seeds distinct
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=key)))


def make_ids(prefix: str, n: int) -> pa.StringArray:
    """Zero-padded 1-based ids (u0000001, v0000001...) built in Arrow, for the tables and for `take`."""
    width = max(7, len(str(n)))
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(1, n + 1, dtype=np.int64)), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _make_words(rng: np.random.Generator, topics: int) -> list[list[str]]:
    """Distinct pronounceable made-up words, WORDS_PER_TOPIC per topic."""
    taken: set[str] = set(GENERIC_WORDS)
    words: list[str] = []
    while len(words) < topics * WORDS_PER_TOPIC:
        syllables = int(rng.integers(2, 4))
        word = "".join(
            _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syllables)
        )
        word += _CODAS[rng.integers(len(_CODAS))]
        if word not in taken:
            taken.add(word)
            words.append(word)
    return [words[t * WORDS_PER_TOPIC : (t + 1) * WORDS_PER_TOPIC] for t in range(topics)]


@dataclass
class _World:
    """The planted truth and the lookup tables that sampling needs."""

    topics: int
    topic_share: NDArray[np.float64]  # base popularity of each topic
    video_topic: NDArray[np.int32]
    popularity: NDArray[np.float64]  # global sampling probability of each video (sums to 1)
    duration: NDArray[np.float32]  # seconds
    sample_key: NDArray[np.float64]  # sorted: topic t occupies (t, t+1]; the global Zipf is "topic" `topics`
    sample_video: NDArray[np.int32]  # video of each slot of sample_key
    vocab: pa.StringArray  # topic words (topic t at t*WORDS_PER_TOPIC...), then GENERIC_WORDS
    topic_words: list[list[str]]
    video_ids: pa.StringArray


def _cdf_keys(group: NDArray[np.int64], weight: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-group CDFs laid end to end: group g's items (contiguous, ascending g) map to (g, g+1]."""
    csum = np.cumsum(weight)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    ends = np.r_[starts[1:], len(group)]
    base = np.repeat(csum[starts] - weight[starts], ends - starts)
    total = np.repeat(csum[ends - 1] - (csum[starts] - weight[starts]), ends - starts)
    key = group + (csum - base) / np.maximum(total, np.finfo(np.float64).tiny)
    key[ends - 1] = group[ends - 1] + 1.0  # exact top of each group, whatever the rounding
    return key


def _make_world(config: GeneratorConfig) -> _World:
    """Topics, words, videos (topic, popularity, duration) and the sampling tables."""
    rng = _rng(config.seed, _STREAM_WORLD)
    n_topics, n_videos = config.topics, config.videos
    topic_words = _make_words(rng, n_topics)
    # Some topics are much bigger than others: Zipf-ish over a random order, exponent 0.7.
    topic_share = np.power(rng.permutation(n_topics) + 1.0, -0.7, dtype=np.float64)
    topic_share /= topic_share.sum()
    video_share = 0.5 / n_topics + 0.5 * topic_share
    if n_videos >= n_topics:  # every topic gets at least one video
        extra = rng.choice(n_topics, size=n_videos - n_topics, p=video_share)
        video_topic = rng.permutation(np.r_[np.arange(n_topics), extra]).astype(np.int32)
    else:
        video_topic = rng.choice(n_topics, size=n_videos, p=video_share).astype(np.int32)
    rank = rng.permutation(n_videos).astype(np.float64) + 1.0
    popularity = rank**-config.zipf_exponent
    popularity /= popularity.sum()
    duration = np.clip(rng.lognormal(np.log(240.0), 0.9, n_videos), 15.0, 4 * 3600.0).astype(np.float32)

    by_topic = np.argsort(video_topic, kind="stable")
    by_rank = np.argsort(rank, kind="stable")
    group = np.r_[video_topic[by_topic].astype(np.int64), np.full(n_videos, n_topics, dtype=np.int64)]
    order = np.r_[by_topic, by_rank]
    sample_key = _cdf_keys(group, popularity[order])

    flat_words = [w for words in topic_words for w in words]
    return _World(
        topics=n_topics,
        topic_share=topic_share,
        video_topic=video_topic,
        popularity=popularity,
        duration=duration,
        sample_key=sample_key,
        sample_video=order.astype(np.int32),
        vocab=pa.array(flat_words + list(GENERIC_WORDS), pa.string()),
        topic_words=topic_words,
        video_ids=make_ids("v", n_videos),
    )


@dataclass
class _Users:
    table: pa.Table  # USERS
    interest_topic: NDArray[np.int32]  # (users, k), by weight descending
    interest_cdf: NDArray[np.float64]  # (users, k) cumulative weights, last column 1
    interest_weight: NDArray[np.float64]  # (users, k), 0 where dropped


def _make_users(config: GeneratorConfig, world: _World, user_ids: pa.StringArray) -> _Users:
    """Demographics, then sparse topic interests drawn from a prior that the demographics shift."""
    rng = _rng(config.seed, _STREAM_USERS)
    n, n_topics = config.users, config.topics
    country_p = (np.arange(len(COUNTRIES)) + 1.5) ** -1.1
    country = rng.choice(len(COUNTRIES), size=n, p=country_p / country_p.sum())
    device = rng.choice(len(DEVICES), size=n, p=DEVICE_P)
    g = rng.random(n)
    gender = np.where(g < GENDER_P[0], 0, np.where(g < GENDER_P[0] + GENDER_P[1], 1, 2))
    age = np.minimum(np.floor(13.0 + rng.gamma(2.0, 9.0, n)), 80.0)
    age_missing = rng.random(n) < NULL_AGE
    age_band = np.where(age_missing, len(AGE_BANDS) + 1, np.searchsorted(AGE_BANDS, age, side="right"))
    logged_in = rng.random(n) < LOGGED_IN_P

    effects = {
        "country": rng.normal(0, EFFECT_STD["country"], (len(COUNTRIES), n_topics)),
        "age": rng.normal(0, EFFECT_STD["age"], (len(AGE_BANDS) + 2, n_topics)),
        "gender": rng.normal(0, EFFECT_STD["gender"], (3, n_topics)),
        "device": rng.normal(0, EFFECT_STD["device"], (len(DEVICES), n_topics)),
    }
    has_videos = np.bincount(world.video_topic, minlength=n_topics) > 0
    base = world.topic_share * has_videos  # a topic without videos can't be an interest
    k = min(INTEREST_TOPICS, n_topics)
    top_topic = np.empty((n, k), dtype=np.int32)
    top_weight = np.empty((n, k), dtype=np.float64)
    block = max(1, 4_000_000 // n_topics)  # bounded (block, topics) matrices
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        logit = (
            effects["country"][country[lo:hi]]
            + effects["age"][age_band[lo:hi]]
            + effects["gender"][gender[lo:hi]]
            + effects["device"][device[lo:hi]]
        )
        prior = base * np.exp(logit)
        prior /= prior.sum(axis=1, keepdims=True)
        draw = rng.standard_gamma(INTEREST_ALPHA * n_topics * prior)
        dead = draw.sum(axis=1) <= 0  # all-underflow rows (vanishingly rare): fall back to the prior's mode
        draw[dead, np.argmax(prior[dead], axis=1)] = 1.0
        idx = np.argpartition(-draw, k - 1, axis=1)[:, :k] if k < n_topics else np.tile(np.arange(k), (hi - lo, 1))
        val = np.take_along_axis(draw, idx, axis=1)
        sort = np.argsort(-val, axis=1, kind="stable")
        top_topic[lo:hi] = np.take_along_axis(idx, sort, axis=1)
        top_weight[lo:hi] = np.take_along_axis(val, sort, axis=1)
    top_weight /= top_weight.sum(axis=1, keepdims=True)
    top_weight[top_weight < INTEREST_MIN_WEIGHT] = 0.0  # the top one is >= 1/k, so a row never empties
    top_weight /= top_weight.sum(axis=1, keepdims=True)
    cdf = np.cumsum(top_weight, axis=1)
    cdf[:, -1] = 1.0

    table = pa.Table.from_arrays(
        [
            user_ids,
            pa.array(np.asarray(COUNTRIES, dtype=object)[country], pa.string()),
            pa.array(np.asarray(DEVICES, dtype=object)[device], pa.string()),
            pa.array(np.asarray((*GENDERS, None), dtype=object)[gender], pa.string()),
            pa.array(age, pa.float64(), mask=age_missing),
            pa.array(logged_in, pa.bool_()),
        ],
        schema=USERS,
    )
    return _Users(table, top_topic, cdf, top_weight)


def _event_counts(config: GeneratorConfig) -> NDArray[np.int64]:
    """Heavy-tailed (lognormal) events per user, each at least 1, summing exactly to config.events."""
    if config.events < config.users:
        raise RecsysError(
            f"generate: events ({config.events}) must be at least users ({config.users}): every user watches"
        )
    rng = _rng(config.seed, _STREAM_COUNTS)
    activity = rng.lognormal(0.0, ACTIVITY_SIGMA, config.users)
    counts = 1 + rng.multinomial(config.events - config.users, activity / activity.sum())
    return counts.astype(np.int64)


@dataclass
class _Segments:
    """Units of generation: a user's events within a time window (heavy users are cut into several)."""

    user: NDArray[np.int64]
    n: NDArray[np.int64]
    t0: NDArray[np.float64]  # seconds after START
    t1: NDArray[np.float64]


def _segments(counts: NDArray[np.int64], chunk_events: int, window_s: float) -> _Segments:
    """One segment per user, except users with more than chunk_events events, cut into consecutive windows."""
    pieces = -(-counts // chunk_events)
    user = np.repeat(np.arange(len(counts), dtype=np.int64), pieces)
    first = np.cumsum(pieces) - pieces
    j = np.arange(len(user), dtype=np.int64) - np.repeat(first, pieces)  # piece number within its user
    p = pieces[user]
    n = counts[user] // p + (j < counts[user] % p)
    return _Segments(user, n, window_s * j / p, window_s * (j + 1) / p)


def _chunk_bounds(n: NDArray[np.int64], chunk_events: int) -> list[tuple[int, int]]:
    """Greedy runs of whole segments holding at most chunk_events events each (one loop turn per chunk)."""
    incl = np.cumsum(n)
    bounds = []
    lo = 0
    while lo < len(n):
        done = incl[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(incl, done + chunk_events, side="right")))
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _draw_interest(users: _Users, who: NDArray[np.int64], r: NDArray[np.float64]) -> NDArray[np.int64]:
    """One topic per row of `who`, drawn from that user's interest weights with uniforms `r`."""
    cdf = users.interest_cdf[who]
    pick = (r[:, None] >= cdf[:, :-1]).sum(axis=1)
    return users.interest_topic[who, pick].astype(np.int64)


def _segmented_exclusive_cumsum(
    x: NDArray[np.float64], starts: NDArray[np.int64], group: NDArray[np.int64]
) -> NDArray[np.float64]:
    """Cumulative sum of x before each element, restarting at each group's start index."""
    excl = np.cumsum(x) - x
    return excl - excl[starts][group]


def _join_words(vocab: pa.StringArray, slots: list[tuple[NDArray[np.int64], NDArray[np.bool_]]]) -> pa.Array:
    """Space-joined words; each slot is (vocab index, present mask), absent slots are skipped."""
    parts = [vocab.take(pa.array(idx, pa.int64(), mask=~present)) for idx, present in slots]
    return pc.binary_join_element_wise(*parts, " ", null_handling="skip")


def _timestamps(seconds: NDArray[np.int64]) -> pa.Array:
    """Whole seconds after START as a timestamp[us, UTC] array."""
    return pa.array((seconds + _START_S) * _US, TIMESTAMP)


@dataclass
class _Chunk:
    events: pa.Table
    searches: pa.Table
    sessions: int
    video: NDArray[np.int32]
    ts: NDArray[np.int64]


def _generate_chunk(
    world: _World,
    users: _Users,
    seg: _Segments,
    user_ids: pa.StringArray,
    rng: np.random.Generator,
    search_probability: float,
) -> _Chunk:
    """All events (and searches) of a run of segments, vectorised over events and sessions."""
    n_seg = len(seg.n)
    total = int(seg.n.sum())
    seg_first = np.cumsum(seg.n) - seg.n
    ev_seg = np.repeat(np.arange(n_seg, dtype=np.int64), seg.n)
    ev_user = seg.user[ev_seg]

    # Sessions: geometric lengths, restarted at every segment.
    is_start = rng.random(total) < 1.0 / SESSION_MEAN_WATCHES
    is_start[seg_first] = True
    sess_first = np.flatnonzero(is_start)
    n_sess = len(sess_first)
    sess_id = np.cumsum(is_start) - 1
    sess_seg = ev_seg[sess_first]
    sess_topic = _draw_interest(users, seg.user[sess_seg], rng.random(n_sess))

    # Each watch's topic: the session's, a fresh interest draw, or (pseudo-topic `topics`) global popularity.
    mode = rng.random(total)
    ev_topic = sess_topic[sess_id]
    deviate = np.flatnonzero((mode >= NOISE_SHARE) & (mode < NOISE_SHARE + (1 - NOISE_SHARE) * (1 - SESSION_STAY)))
    deviate = deviate[~is_start[deviate]]  # a session opens on its topic (what its search was about)
    ev_topic[deviate] = _draw_interest(users, ev_user[deviate], rng.random(len(deviate)))
    ev_topic[mode < NOISE_SHARE] = world.topics
    # Inverse-CDF sampling within the topic; sorted queries make searchsorted cache-friendly.
    query = ev_topic + rng.random(total)
    order = np.argsort(query)
    slot = np.searchsorted(world.sample_key, query[order], side="right")
    np.minimum(slot, len(world.sample_key) - 1, out=slot)
    video = np.empty(total, dtype=np.int32)
    video[order] = world.sample_video[slot]

    # Watch time and the gap to the next watch.
    watch = np.round(world.duration[video] * rng.random(total) ** (1 / 1.3), 1)
    step = watch + rng.exponential(BROWSE_GAP_MEAN_S, total) + 1.0
    offset = _segmented_exclusive_cumsum(step, sess_first, sess_id)
    sess_last = np.r_[sess_first[1:], total] - 1
    sess_span = offset[sess_last] + step[sess_last]

    # Lay sessions out in the segment's window: random idle gaps (sorted uniforms via exponential spacings),
    # compressed proportionally for users too active to fit.
    seg_sess_first = np.searchsorted(sess_first, seg_first)
    lead = np.minimum(SEARCH_LEAD_S, 0.25 * (seg.t1 - seg.t0))
    room = seg.t1 - seg.t0 - lead
    need = np.add.reduceat(sess_span + SESSION_GAP_S, seg_sess_first)
    free = np.maximum(room - need, 0.0)
    scale = np.minimum(1.0, room / need)
    spacing = rng.exponential(1.0, n_sess)
    spacing_total = np.add.reduceat(spacing, seg_sess_first) + rng.exponential(1.0, n_seg)
    spacing_upto = _segmented_exclusive_cumsum(spacing, seg_sess_first, sess_seg) + spacing
    busy_before = _segmented_exclusive_cumsum(sess_span + SESSION_GAP_S, seg_sess_first, sess_seg)
    sess_start = (
        seg.t0[sess_seg]
        + lead[sess_seg]
        + spacing_upto / spacing_total[sess_seg] * free[sess_seg]
        + scale[sess_seg] * busy_before
    )
    limit = np.floor(seg.t1)[ev_seg].astype(np.int64)
    ts = np.minimum(np.floor(sess_start[sess_id] + scale[ev_seg] * offset).astype(np.int64), limit)

    missing = rng.random(total) < NULL_WATCH_SECONDS
    events = pa.Table.from_arrays(
        [
            user_ids.take(pa.array(ev_user)),
            world.video_ids.take(pa.array(video)),
            _timestamps(ts),
            pa.array(watch, pa.float64(), mask=missing),
        ],
        schema=WATCH_EVENTS,
    )

    # Searches: 1-3 distinct words of the session's topic, sometimes with a generic word, just before it.
    searched = np.flatnonzero(rng.random(n_sess) < search_probability)
    m = len(searched)
    r = rng.random(m)
    n_words = 1 + (r >= 0.45) + (r >= 0.85)
    first_word = rng.integers(0, WORDS_PER_TOPIC, m)
    stride = rng.integers(1, max(2, (WORDS_PER_TOPIC + 1) // 2), m)
    topic_base = sess_topic[searched] * WORDS_PER_TOPIC
    generic = len(world.topic_words) * WORDS_PER_TOPIC + rng.integers(0, len(GENERIC_WORDS), m)
    g = rng.random(m)
    slots = [(generic, g < 0.1)]  # a generic word before, after (or not at all)
    slots += [(topic_base + (first_word + i * stride) % WORDS_PER_TOPIC, n_words > i) for i in range(3)]
    slots += [(generic, (g >= 0.1) & (g < 0.25))]
    lead_before = np.ceil(rng.uniform(0.05, 1.0, m) * lead[sess_seg[searched]]).astype(np.int64)
    search_ts = ts[sess_first[searched]] - lead_before
    searches = pa.Table.from_arrays(
        [
            user_ids.take(pa.array(seg.user[sess_seg[searched]])),
            _timestamps(np.maximum(search_ts, np.floor(seg.t0[sess_seg[searched]]).astype(np.int64))),
            _join_words(world.vocab, slots),
        ],
        schema=SEARCH_EVENTS,
    )
    return _Chunk(events, searches, n_sess, video, ts)


def _videos_table(config: GeneratorConfig, world: _World, first_watch: NDArray[np.int64], window_s: float) -> pa.Table:
    """Titles from topic words; uploads mostly before the log, a share inside it (before the first watch)."""
    rng = _rng(config.seed, _STREAM_UPLOAD)
    n = config.videos
    new = rng.random(n) < NEW_VIDEO_SHARE
    before = -np.floor(rng.uniform(86_400.0, 3 * 365 * 86_400.0, n)).astype(np.int64)
    latest = np.where(first_watch < np.iinfo(np.int64).max, first_watch, np.floor(window_s)).astype(np.float64)
    during = np.floor(rng.random(n) * latest).astype(np.int64)
    upload = np.where(new, during, before)

    r = rng.random(n)
    n_words = 1 + (r >= 0.3) + (r >= 0.75)
    first_word = rng.integers(0, WORDS_PER_TOPIC, n)
    stride = rng.integers(1, max(2, (WORDS_PER_TOPIC + 1) // 2), n)
    topic_base = world.video_topic.astype(np.int64) * WORDS_PER_TOPIC
    generic_base = world.topics * WORDS_PER_TOPIC
    g = rng.random(n)
    slots = [(generic_base + rng.integers(0, len(GENERIC_WORDS), n), g < 0.2)]
    slots += [(topic_base + (first_word + i * stride) % WORDS_PER_TOPIC, n_words > i) for i in range(3)]
    slots += [(generic_base + rng.integers(0, len(GENERIC_WORDS), n), g >= 0.6)]
    return pa.Table.from_arrays([world.video_ids, _join_words(world.vocab, slots), _timestamps(upload)], schema=VIDEOS)


def _is_earlier_output(out: Path) -> bool:
    """Whether a directory holds an earlier generate() output (the only kind that overwrite may replace)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == "pipelines.synthetic"


_EARLIER_OUTPUT = Owner(_is_earlier_output, "an earlier `recsys generate` output (no generator manifest.json)")


def generate(config: GeneratorConfig, out: Path, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Write a synthetic watch log (events, searches, users, videos, truth, manifest) to `out`, atomically.

    With ``overwrite`` an earlier output of this function at `out` is replaced; any other non-empty `out` is refused.
    """
    counts = _event_counts(config)  # validates the config before anything touches the disk
    with publish_dir(Path(out), overwrite=overwrite, owner=_EARLIER_OUTPUT) as tmp:
        summary = _generate_into(config, counts, tmp, progress)
    return summary


def _generate_into(config: GeneratorConfig, counts: NDArray[np.int64], tmp: Path, progress: bool) -> dict[str, Any]:
    """Generate every file into the directory `tmp` and return the manifest."""
    window_s = config.days * 86_400.0
    world = _make_world(config)
    user_ids = make_ids("u", config.users)
    users = _make_users(config, world, user_ids)
    pq.write_table(users.table, tmp / "users.parquet", compression="zstd")

    seg = _segments(counts, config.chunk_events, window_s)
    first_watch = np.full(config.videos, np.iinfo(np.int64).max, dtype=np.int64)
    n_events = n_searches = n_sessions = 0
    ts_min, ts_max = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    # Chunk k is written by a background thread while chunk k+1 is generated (Parquet encoding releases the
    # GIL); at most one write is in flight, so memory holds about two chunks.
    options: dict[str, Any] = {"compression": "zstd", "use_dictionary": ["user_id"]}
    with (
        pq.ParquetWriter(tmp / "events.parquet", WATCH_EVENTS, **options) as events_writer,
        pq.ParquetWriter(tmp / "searches.parquet", SEARCH_EVENTS, **options) as searches_writer,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthetic-writer") as pool,
        tqdm(
            total=config.events, unit="ev", unit_scale=True, disable=not progress_enabled(progress), desc="generate"
        ) as bar,
    ):

        def write(chunk: _Chunk) -> None:
            events_writer.write_table(chunk.events)
            searches_writer.write_table(chunk.searches)

        pending: Future[None] | None = None
        done = 0
        for k, (lo, hi) in enumerate(_chunk_bounds(seg.n, config.chunk_events)):
            part = _Segments(seg.user[lo:hi], seg.n[lo:hi], seg.t0[lo:hi], seg.t1[lo:hi])
            chunk = _generate_chunk(
                world, users, part, user_ids, _rng(config.seed, _STREAM_CHUNK, k), config.search_probability
            )
            np.minimum.at(first_watch, chunk.video, chunk.ts)
            n_events += chunk.events.num_rows
            n_searches += chunk.searches.num_rows
            n_sessions += chunk.sessions
            ts_min, ts_max = min(ts_min, int(chunk.ts.min())), max(ts_max, int(chunk.ts.max()))
            if pending is not None:
                pending.result()
                bar.update(done)
            pending, done = pool.submit(write, chunk), chunk.events.num_rows
            del chunk
        if pending is not None:
            pending.result()
            bar.update(done)
    if n_events != config.events:  # an internal invariant, not a user error
        raise AssertionError(f"generated {n_events} events, expected {config.events}")
    log.info("generate: %d watch events, %d searches, %d sessions", n_events, n_searches, n_sessions)

    pq.write_table(_videos_table(config, world, first_watch, window_s), tmp / "videos.parquet", compression="zstd")
    _write_truth(config, world, users, user_ids, tmp / "truth")

    def iso(seconds: float) -> str:
        return (START + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")

    summary: dict[str, Any] = {
        "generator": "pipelines.synthetic",
        "version": GENERATOR_VERSION,
        "seed": config.seed,
        "config": config.model_dump(),
        "counts": {
            "events": n_events,
            "searches": n_searches,
            "sessions": n_sessions,
            "users": config.users,
            "videos": config.videos,
            "topics": config.topics,
        },
        "time_range": {
            "start": iso(0),
            "end": iso(window_s),
            "first_event": iso(ts_min),
            "last_event": iso(ts_max),
        },
        "model": {
            "interest_alpha": INTEREST_ALPHA,
            "interest_topics": INTEREST_TOPICS,
            "noise_share": NOISE_SHARE,
            "session_stay": SESSION_STAY,
            "session_mean_watches": SESSION_MEAN_WATCHES,
            "null_watch_seconds": NULL_WATCH_SECONDS,
            "new_video_share": NEW_VIDEO_SHARE,
            "words_per_topic": WORDS_PER_TOPIC,
            "generic_words": list(GENERIC_WORDS),
        },
        "files": [
            "events.parquet",
            "searches.parquet",
            "users.parquet",
            "videos.parquet",
            "truth/video_topics.parquet",
            "truth/user_interests.parquet",
            "truth/topic_words.json",
        ],
    }
    (tmp / "manifest.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_truth(config: GeneratorConfig, world: _World, users: _Users, user_ids: pa.StringArray, truth: Path) -> None:
    """The planted structure: video topics and popularity, user interests, topic vocabularies."""
    truth.mkdir()
    pq.write_table(
        pa.table(
            {
                "video_id": world.video_ids,
                "topic": pa.array(world.video_topic, pa.int32()),
                "popularity": pa.array(world.popularity, pa.float64()),
            }
        ),
        truth / "video_topics.parquet",
    )
    keep = users.interest_weight > 0
    row_user = np.nonzero(keep)[0]
    pq.write_table(
        pa.table(
            {
                "user_id": user_ids.take(pa.array(row_user)),
                "topic": pa.array(users.interest_topic[keep], pa.int32()),
                "weight": pa.array(users.interest_weight[keep], pa.float64()),
            }
        ),
        truth / "user_interests.parquet",
    )
    words = {str(t): w for t, w in enumerate(world.topic_words)}
    (truth / "topic_words.json").write_text(json.dumps(words, indent=1) + "\n")
