"""Softmax losses over a large output-embedding table: the exact reference and the sampled estimators.

Every loss takes user vectors ``u`` [B, d], the output table ``V`` [n, d] (a tf.Variable), an optional bias ``b`` [n]
and integer labels ``y`` [B], and returns the batch-mean cross-entropy. Only ``full_softmax_loss`` touches all n rows;
the others gather the rows they score, so the gradient w.r.t. ``V``/``b`` is an IndexedSlices over those rows and
the update can stay sparse (see ``recsys.sparse_optim``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

__all__ = [
    "ClassSample",
    "build_head",
    "candidate_logits",
    "estimator_diagnostics",
    "full_softmax_loss",
    "inbatch_softmax_loss",
    "loguniform_sampled_softmax_loss",
    "per_example_log_partition",
    "sample_classes",
    "sample_complement",
    "sampled_log_partition",
    "sampled_softmax_from_sample",
    "sorted_difference",
    "topk_random_loss",
    "topk_random_loss_per_example",
]

_NEG_INF = float("-inf")
# candidate_logits takes the dense [B, U] product while the batch's distinct rows U are at most this many times the
# columns C per example. Both ways cost about B·C·d (the gathered block) against B·U·d (the product, forward and
# backward); measured at B 1024, d 256 on the 2-core box the dense product was cheaper up to about 75 rows per column.
DENSE_ROWS_PER_COLUMN = 48


@dataclass(frozen=True)
class ClassSample:
    """The classes one step scores: the exact head S and the uniform tail sample T, shared by the whole batch."""

    s: tf.Tensor  # [|S|] int64, sorted, unique; holds every label of the batch
    t: tf.Tensor  # [|T|] int64, unique, disjoint from S
    label_pos: tf.Tensor  # [B] int64, column of y_i inside s
    log_tail_weight: tf.Tensor  # scalar, log((n - |S|) / |T|); 0 when T is empty

    @property
    def indices(self) -> tf.Tensor:
        """Rows of V to gather, S first then T (the column order of the sampled logits)."""
        return tf.concat([self.s, self.t], axis=0)


def _num_rows(V: Any) -> int:
    """Number of classes n of an output table, which must be known statically."""
    n = V.shape[0]
    if n is None:
        raise ValueError("the output table needs a static number of rows")
    return int(n)


def _exclusion_mask(columns: tf.Tensor, exclude: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Bool [B, C]: True where column j's class is in example i's exclude list and is not y_i.

    ``columns`` [C] are distinct class ids; ``exclude`` [B, H] are class ids padded with negatives.
    """
    columns = tf.cast(columns, tf.int64)
    exclude = tf.cast(exclude, tf.int64)
    y = tf.cast(y, tf.int64)
    batch = tf.shape(exclude, out_type=tf.int64)[0]
    width = tf.shape(exclude, out_type=tf.int64)[1]
    num_cols = tf.size(columns, out_type=tf.int64)
    # Look each excluded id up in the sorted columns instead of comparing [B, C, H] (too big at C ~ 30k).
    perm = tf.cast(tf.argsort(columns), tf.int64)
    sorted_cols = tf.gather(columns, perm)
    flat = tf.reshape(exclude, [-1])
    pos = tf.searchsorted(sorted_cols, flat, side="left", out_type=tf.int64)
    pos = tf.minimum(pos, tf.maximum(num_cols - 1, 0))
    found = tf.gather(sorted_cols, pos)
    rows = tf.repeat(tf.range(batch), width)
    own_label = tf.gather(y, rows)
    hit = (num_cols > 0) & (flat >= 0) & tf.equal(found, flat) & tf.not_equal(flat, own_label)
    col = tf.gather(perm, pos)
    where = tf.boolean_mask(tf.stack([rows, col], axis=1), hit)
    counts = tf.scatter_nd(where, tf.ones(tf.shape(where)[:1], tf.float32), tf.stack([batch, num_cols]))
    return counts > 0


def _logits(u: tf.Tensor, V: Any, b: Any | None, idx: tf.Tensor | None = None) -> tf.Tensor:
    """u · V_j (+ b_j) for the rows idx (all rows when idx is None), as [B, |idx|]."""
    if idx is None:
        logits = tf.matmul(u, V, transpose_b=True)
        if b is not None:
            logits += tf.expand_dims(tf.convert_to_tensor(b), 0)
        return logits
    logits = tf.matmul(u, tf.gather(V, idx), transpose_b=True)
    if b is not None:
        logits += tf.expand_dims(tf.gather(b, idx), 0)
    return logits


def candidate_logits(u: tf.Tensor, V: Any, b: Any | None, ids: tf.Tensor) -> tf.Tensor:
    """u_i · V_j (+ b_j) for each example's own candidate rows ids [B, C] (valid rows only), as [B, C].

    A batch's candidates repeat heavily (a mined top-K head at 1M videos held ~70 distinct rows among 1024 x 64
    ids), so each distinct row is read once, and while there are few of them one dense [B, U] product replaces the
    [B, C, d] block of row copies, forward and backward. The gradient w.r.t. V is one slice per distinct row.
    """
    ids = tf.cast(ids, tf.int64)
    distinct, position = tf.unique(tf.reshape(ids, [-1]))
    position = tf.reshape(position, tf.shape(ids))
    rows = tf.gather(V, distinct)

    def dense() -> tf.Tensor:
        return tf.gather(tf.matmul(u, rows, transpose_b=True), position, batch_dims=1)

    def per_pair() -> tf.Tensor:
        return tf.einsum("bd,bkd->bk", u, tf.gather(rows, position))

    logits = tf.cond(tf.size(distinct) <= DENSE_ROWS_PER_COLUMN * tf.shape(ids)[1], dense, per_pair)
    if b is not None:
        logits += tf.gather(tf.gather(b, distinct), position)
    return logits


def full_softmax_loss(u: tf.Tensor, V: Any, b: Any | None, y: tf.Tensor, exclude: tf.Tensor | None = None) -> tf.Tensor:
    """Exact softmax cross-entropy over all n classes: the O(n)-per-example quality reference."""
    y = tf.cast(y, tf.int64)
    logits = _logits(u, V, b)
    label_logit = tf.gather(logits, y, axis=1, batch_dims=1)
    if exclude is not None:
        n = _num_rows(V)
        mask = _exclusion_mask(tf.range(n, dtype=tf.int64), exclude, y)
        logits = tf.where(mask, tf.constant(_NEG_INF, logits.dtype), logits)
    return tf.reduce_mean(tf.reduce_logsumexp(logits, axis=1) - label_logit)


def build_head(y: tf.Tensor, candidates: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch-shared head S = unique({y_i} ∪ candidates), sorted, and each label's column in it."""
    y = tf.cast(tf.reshape(y, [-1]), tf.int64)
    flat = tf.reshape(tf.cast(candidates, tf.int64), [-1])
    flat = tf.boolean_mask(flat, flat >= 0)  # FAISS pads short result lists with -1
    s = tf.sort(tf.unique(tf.concat([y, flat], axis=0)).y)
    label_pos = tf.searchsorted(s, y, side="left", out_type=tf.int64)
    return s, label_pos


def sample_complement(s: tf.Tensor, n: int, n_uniform: int, rng: tf.random.Generator | None = None) -> tf.Tensor:
    """Up to n_uniform distinct classes drawn uniformly from {0..n-1} minus the sorted, unique set s.

    Draws positions r in [0, n-|S|) of the complement and maps them to class ids, so no draw is ever rejected for
    landing in S. If the complement has at most n_uniform classes, all of it is returned (the tail is then exact).
    """
    s = tf.cast(s, tf.int64)
    size_s = tf.size(s, out_type=tf.int64)
    c = tf.constant(n, tf.int64) - size_s
    if n_uniform <= 0:
        return tf.zeros([0], tf.int64)
    gen = rng if rng is not None else tf.random.get_global_generator()

    def whole() -> tf.Tensor:
        return tf.range(c, dtype=tf.int64)

    def draw() -> tf.Tensor:
        # Oversample iid and keep the first n_uniform distinct values in order of appearance. By symmetry of iid
        # uniform draws under any relabelling of the complement, the kept set is a uniform random subset of its
        # size, so Σ_T (c/|T|)·exp(logit) stays unbiased even in the rare case that fewer than n_uniform are
        # distinct; there is no rejection loop.
        r = gen.uniform([2 * n_uniform], minval=0, maxval=c, dtype=tf.int64)
        return tf.unique(r).y[:n_uniform]

    r = tf.cond(c <= n_uniform, whole, draw)
    # The r-th complement element is r + #{i : s_i - i <= r}  (s_i - i counts the complement below s_i).
    shifted = s - tf.range(size_s, dtype=tf.int64)
    return r + tf.searchsorted(shifted, r, side="right", out_type=tf.int64)


def sample_classes(
    y: tf.Tensor, candidates: tf.Tensor, n: int, n_uniform: int, rng: tf.random.Generator | None = None
) -> ClassSample:
    """Build the batch-shared head S (labels ∪ top-K candidates) and draw the uniform tail T from its complement."""
    s, label_pos = build_head(y, candidates)
    t = sample_complement(s, n, n_uniform, rng)
    size_t = tf.size(t, out_type=tf.int64)
    tail = tf.cast(tf.constant(n, tf.int64) - tf.size(s, out_type=tf.int64), tf.float32)
    # Each T class stands for (n-|S|)/|T| complement classes: the Horvitz-Thompson weight of a uniform sample.
    log_w = tf.where(size_t > 0, tf.math.log(tail) - tf.math.log(tf.cast(tf.maximum(size_t, 1), tf.float32)), 0.0)
    return ClassSample(s=s, t=t, label_pos=label_pos, log_tail_weight=log_w)


def sampled_log_partition(
    u: tf.Tensor, V: Any, b: Any | None, y: tf.Tensor, sample: ClassSample, exclude: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-example log Z_hat [B] and label logit [B] of the top-K-plus-random estimator for a given sample."""
    idx = sample.indices
    logits = _logits(u, V, b, idx)  # [B, |S| + |T|], one gather and one matmul
    label_logit = tf.gather(logits, sample.label_pos, axis=1, batch_dims=1)
    size_s = tf.size(sample.s)
    size_t = tf.size(sample.t)
    offset = tf.concat(
        [tf.zeros([size_s], logits.dtype), tf.fill([size_t], tf.cast(sample.log_tail_weight, logits.dtype))],
        axis=0,
    )
    # Weights enter as log offsets on the tail logits: never exponentiate raw logits.
    weighted = logits + tf.expand_dims(offset, 0)
    if exclude is not None:
        # Masking the history in T too keeps Z_hat unbiased for the history-excluded partition function.
        mask = _exclusion_mask(idx, exclude, y)
        weighted = tf.where(mask, tf.constant(_NEG_INF, weighted.dtype), weighted)
    return tf.reduce_logsumexp(weighted, axis=1), label_logit


def sampled_softmax_from_sample(
    u: tf.Tensor, V: Any, b: Any | None, y: tf.Tensor, sample: ClassSample, exclude: tf.Tensor | None = None
) -> tf.Tensor:
    """Batch-mean loss -logit_y + log Z_hat for an already drawn ClassSample (lets the caller log |S|, |T|)."""
    log_z_hat, label_logit = sampled_log_partition(u, V, b, y, sample, exclude)
    return tf.reduce_mean(log_z_hat - label_logit)


def topk_random_loss(
    u: tf.Tensor,
    V: Any,
    b: Any | None,
    y: tf.Tensor,
    candidates: tf.Tensor,
    n_uniform: int,
    rng: tf.random.Generator | None = None,
    exclude: tf.Tensor | None = None,
) -> tf.Tensor:
    """Top-K-plus-random sampled softmax with a batch-shared S and T: exact head, unbiased uniform tail for Z.

    ``candidates`` [B, K] are top-K class ids per example (negatives are padding); ``exclude`` [B, H] optional
    per-example class ids (e.g. the user's own history) removed from the partition function except the label.
    Pass an explicit ``rng`` inside a tf.function; None uses TensorFlow's global generator.
    """
    sample = sample_classes(y, candidates, _num_rows(V), n_uniform, rng)
    return sampled_softmax_from_sample(u, V, b, y, sample, exclude)


def sorted_difference(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """The elements of the sorted int64 vector a that are not in the sorted int64 vector b, in order."""
    a = tf.cast(a, tf.int64)
    b = tf.cast(b, tf.int64)
    pos = tf.searchsorted(b, a, side="left", out_type=tf.int64)
    found = tf.equal(tf.gather(tf.concat([b, [-1]], 0), pos), a)  # pos == len(b) lands on the sentinel
    return tf.boolean_mask(a, tf.logical_not(found))


def _row_member(ids: tf.Tensor, sets: tf.Tensor) -> tf.Tensor:
    """Bool [B, C]: whether ids[i, j] >= 0 is in row i of sets [B, H] (negative entries of sets are padding)."""
    ids = tf.cast(ids, tf.int64)
    sets = tf.cast(sets, tf.int64)
    pad = -tf.ones([tf.shape(sets)[0], 1], tf.int64)  # keeps H >= 1 so the clamp below is valid
    sorted_sets = tf.sort(tf.concat([sets, pad], axis=1), axis=1)
    pos = tf.searchsorted(sorted_sets, ids, side="left", out_type=tf.int64)
    pos = tf.minimum(pos, tf.shape(sorted_sets, out_type=tf.int64)[1] - 1)
    found = tf.gather(sorted_sets, pos, batch_dims=1)
    return tf.equal(found, ids) & (ids >= 0)


def per_example_log_partition(
    u: tf.Tensor,
    V: Any,
    b: Any | None,
    y: tf.Tensor,
    candidates: tf.Tensor,
    t: tf.Tensor,
    exclude: tf.Tensor | None = None,
    log_tail_weights: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-example log Z_hat [B] and label logit [B] with a per-example head S_i and a shared tail sample t.

    With ``log_tail_weights`` [|t|] (aligned with t) each tail class gets its own weight instead of n/|t|: for t the
    distinct classes of m iid draws from a proposal p and weight count/(m·p), Σ_{j∈T∖S_i} w_j·exp(logit_ij) is
    the Hansen-Hurwitz estimate of the same tail sum, unbiased for any p that covers every class.

    ``t`` must be a uniform random subset of ALL n classes (e.g. ``sample_complement`` of an empty set): each
    class is in it with probability |T|/n, so Σ_{j∈T∖S_i} (n/|T|)·exp(logit_ij) is unbiased for example i's
    tail Σ_{j∉S_i} exp(logit_ij). Members of S_i that were also drawn are dropped from i's tail, which is also what
    keeps y_i out of its own tail.
    """
    n = _num_rows(V)
    y = tf.cast(tf.reshape(y, [-1]), tf.int64)
    cand = tf.sort(tf.cast(candidates, tf.int64), axis=1)
    batch = tf.shape(cand)[0]
    prev = tf.concat([-tf.ones([batch, 1], tf.int64), cand[:, :-1]], axis=1)
    # S_i = {y_i} ∪ candidates_i, each class once: drop padding, copies of the label and repeats.
    keep = (cand >= 0) & tf.not_equal(cand, tf.expand_dims(y, 1)) & tf.not_equal(cand, prev)
    head = tf.concat([tf.expand_dims(y, 1), tf.where(keep, cand, tf.expand_dims(y, 1))], axis=1)  # [B, K+1]
    head_valid = tf.concat([tf.ones([batch, 1], tf.bool), keep], axis=1)
    head_logits = candidate_logits(u, V, b, head)
    label_logit = head_logits[:, 0]
    # Tail columns in sorted order, so membership of any per-example id in T is a binary search over T.
    order = tf.argsort(tf.cast(t, tf.int64))
    t = tf.gather(tf.cast(t, tf.int64), order)
    size_t = tf.size(t, out_type=tf.int64)
    if log_tail_weights is None:
        log_w = tf.where(size_t > 0, math.log(n) - tf.math.log(tf.cast(tf.maximum(size_t, 1), tf.float32)), 0.0)
    else:
        log_w = tf.gather(tf.cast(log_tail_weights, tf.float32), order)
    tail_logits = _logits(u, V, b, t) + tf.cast(log_w, u.dtype)
    # Drop from example i's tail the T columns that are in S_i (and in its exclusion list): B*(K+1) searches
    # into T instead of a [B, |T|] membership test.
    pad = tf.constant(-1, tf.int64)  # a bare -1 would be int32 and break SelectV2 on int64 ids inside tf.function
    drop_ids = tf.where(head_valid, head, pad)
    drop_head = tf.logical_not(head_valid)
    if exclude is not None:
        excl = tf.cast(exclude, tf.int64)
        excl = tf.where(tf.equal(excl, tf.expand_dims(y, 1)), pad, excl)
        drop_head |= _row_member(head, excl)
        drop_ids = tf.concat([drop_ids, excl], axis=1)
    tail_logits += _tail_mask(t, drop_ids, tail_logits.dtype)
    neg_inf = tf.constant(_NEG_INF, head_logits.dtype)
    head_logits = tf.where(drop_head, neg_inf, head_logits)
    log_z_hat = tf.reduce_logsumexp(tf.concat([head_logits, tail_logits], axis=1), axis=1)
    return log_z_hat, label_logit


def _tail_mask(t_sorted: tf.Tensor, ids: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Additive mask [B, |T|]: -inf at (i, j) when t_sorted[j] is among ids[i] (negative ids are padding)."""
    batch = tf.shape(ids, out_type=tf.int64)[0]
    size_t = tf.size(t_sorted, out_type=tf.int64)
    flat = tf.reshape(ids, [-1])
    rows = tf.repeat(tf.range(batch), tf.shape(ids, out_type=tf.int64)[1])
    pos = tf.searchsorted(t_sorted, flat, side="left", out_type=tf.int64)
    safe = tf.minimum(pos, tf.maximum(size_t - 1, 0))
    hit = (flat >= 0) & (pos < size_t) & tf.equal(tf.gather(t_sorted, safe), flat)
    hit = tf.logical_and(hit, size_t > 0)
    where = tf.stack([tf.boolean_mask(rows, hit), tf.boolean_mask(pos, hit)], axis=1)
    # Repeated hits add -inf more than once, which is still -inf.
    updates = tf.fill([tf.shape(where)[0]], tf.constant(_NEG_INF, dtype))
    return tf.scatter_nd(where, updates, tf.stack([batch, size_t]))


def topk_random_loss_per_example(
    u: tf.Tensor,
    V: Any,
    b: Any | None,
    y: tf.Tensor,
    candidates: tf.Tensor,
    n_uniform: int,
    rng: tf.random.Generator | None = None,
    exclude: tf.Tensor | None = None,
) -> tf.Tensor:
    """Top-K-plus-random with a per-example head S_i = {y_i} ∪ TopK_i and a shared uniform tail; also unbiased.

    Costs B·(K+1) + B·m dot products instead of the batch-shared version's B·(|∪S| + m), which matters when the
    batch's top-K lists barely overlap (|∪S| ≈ B·K); in exchange each example's head is only its own K.
    """
    t = sample_complement(tf.zeros([0], tf.int64), _num_rows(V), n_uniform, rng)
    log_z_hat, label_logit = per_example_log_partition(u, V, b, y, candidates, t, exclude)
    return tf.reduce_mean(log_z_hat - label_logit)


def loguniform_sampled_softmax_loss(
    u: tf.Tensor, V: Any, b: Any | None, y: tf.Tensor, num_sampled: int, seed: int | None = None
) -> tf.Tensor:
    """TensorFlow's sampled softmax with the log-uniform (Zipfian) sampler, logQ-corrected, accidental hits removed.

    The sampler gives class k probability ∝ log((k+2)/(k+1)), so it only approximates the label distribution if
    class ids are ordered by decreasing frequency (our vocabularies are: 0 = OOV, then by count).
    """
    n = _num_rows(V)
    labels = tf.reshape(tf.cast(y, tf.int64), [-1, 1])
    biases = b if b is not None else tf.zeros([n], u.dtype)
    sampled = tf.random.log_uniform_candidate_sampler(
        true_classes=labels, num_true=1, num_sampled=num_sampled, unique=True, range_max=n, seed=seed
    )
    losses = tf.nn.sampled_softmax_loss(
        weights=V,
        biases=biases,
        labels=labels,
        inputs=u,
        num_sampled=num_sampled,
        num_classes=n,
        num_true=1,
        sampled_values=sampled,
        remove_accidental_hits=True,
    )
    return tf.reduce_mean(losses)


def inbatch_softmax_loss(u: tf.Tensor, V: Any, b: Any | None, y: tf.Tensor, log_q: tf.Tensor) -> tf.Tensor:
    """In-batch softmax with logQ correction (Yi et al., RecSys 2019): the batch's labels are the negatives.

    ``log_q`` [B] is the log sampling probability (frequency share) of each example's label item. Column j is
    scored logit - log q_j: popular items show up as negatives more often than their share of true positives
    would justify, and subtracting log q undoes that over-penalty. Duplicates of a row's own label elsewhere in
    the batch are masked so they do not act as negatives.
    """
    y = tf.cast(tf.reshape(y, [-1]), tf.int64)
    logits = _logits(u, V, b, y)  # [B, B]
    logits -= tf.expand_dims(tf.cast(log_q, logits.dtype), 0)
    batch = tf.shape(y)[0]
    same = tf.equal(tf.expand_dims(y, 1), tf.expand_dims(y, 0))
    dup = same & tf.logical_not(tf.eye(batch, dtype=tf.bool))
    logits = tf.where(dup, tf.constant(_NEG_INF, logits.dtype), logits)
    return tf.reduce_mean(tf.reduce_logsumexp(logits, axis=1) - tf.linalg.diag_part(logits))


def _row_cosine(a: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
    """Cosine similarity of matching rows of a and c, [B]; 0 where either row is zero."""
    dot = tf.reduce_sum(a * c, axis=1)
    norm = tf.norm(a, axis=1) * tf.norm(c, axis=1)
    return tf.math.divide_no_nan(dot, norm)


def estimator_diagnostics(
    u: tf.Tensor,
    V: Any,
    b: Any | None,
    y: tf.Tensor,
    s_indices: tf.Tensor,
    n_uniform: int,
    rng: tf.random.Generator | None = None,
    exclude: tf.Tensor | None = None,
    n_draws: int = 4,
    per_example: bool = False,
) -> dict[str, float]:
    """Quality of the top-K-plus-random estimator on a small held-out batch, against exact full logits.

    Returns: ``s_share`` mean share of the exact Z captured by S; ``abs_log_z_error`` mean |log Z_hat − log Z|;
    ``log_z_bias`` mean (log Z_hat − log Z) (negative by Jensen); ``grad_cosine`` mean per-example cosine between the
    estimated and exact gradient w.r.t. u; ``s_size`` (|S|, or mean |S_i| when ``per_example``, in which case
    ``s_indices`` must be [B, K]). Averages over ``n_draws`` draws of T. Costs O(B·n·d).
    """
    u = tf.convert_to_tensor(u)
    y = tf.cast(tf.reshape(y, [-1]), tf.int64)
    n = _num_rows(V)
    with tf.GradientTape() as tape:
        tape.watch(u)
        logits = _logits(u, V, b)
        label_logit = tf.gather(logits, y, axis=1, batch_dims=1)
        if exclude is not None:
            mask = _exclusion_mask(tf.range(n, dtype=tf.int64), exclude, y)
            logits = tf.where(mask, tf.constant(_NEG_INF, logits.dtype), logits)
        log_z = tf.reduce_logsumexp(logits, axis=1)
        exact_loss = tf.reduce_sum(log_z - label_logit)
    exact_grad = tape.gradient(exact_loss, u)

    s_share = []
    abs_err = []
    bias = []
    cos = []
    size_s = 0.0
    if per_example:
        heads = tf.concat([tf.expand_dims(y, 1), tf.cast(s_indices, tf.int64)], axis=1)
        all_classes = tf.broadcast_to(tf.range(n, dtype=tf.int64), tf.shape(logits, out_type=tf.int64))
        in_head = _row_member(all_classes, heads)
        size_s = float(tf.reduce_mean(tf.reduce_sum(tf.cast(in_head, tf.float32), axis=1)))
        log_z_s = tf.reduce_logsumexp(tf.where(in_head, logits, _NEG_INF), axis=1)
    for _ in range(max(1, n_draws)):
        with tf.GradientTape() as tape:
            tape.watch(u)
            if per_example:
                t = sample_complement(tf.zeros([0], tf.int64), n, n_uniform, rng)
                log_z_hat, lab = per_example_log_partition(u, V, b, y, s_indices, t, exclude)
            else:
                sample = sample_classes(y, s_indices, n, n_uniform, rng)
                size_s = float(tf.size(sample.s))
                log_z_s = tf.reduce_logsumexp(tf.gather(logits, sample.s, axis=1), axis=1)
                log_z_hat, lab = sampled_log_partition(u, V, b, y, sample, exclude)
            est_loss = tf.reduce_sum(log_z_hat - lab)
        s_share.append(tf.reduce_mean(tf.exp(log_z_s - log_z)))
        est_grad = tape.gradient(est_loss, u)
        diff = log_z_hat - log_z
        abs_err.append(tf.reduce_mean(tf.abs(diff)))
        bias.append(tf.reduce_mean(diff))
        cos.append(tf.reduce_mean(_row_cosine(est_grad, exact_grad)))

    def mean(xs: list[tf.Tensor]) -> float:
        return float(tf.reduce_mean(tf.stack(xs)))

    out = {
        "s_share": mean(s_share),
        "abs_log_z_error": mean(abs_err),
        "log_z_bias": mean(bias),
        "grad_cosine": mean(cos),
        "s_size": size_s,
    }
    if any(math.isnan(v) for v in out.values()):
        raise FloatingPointError(f"non-finite estimator diagnostics: {out}")
    return out
