"""Which clusters a labeling session asks, through which member, in which order (paper 3.3).

"If the clusters are sufficiently pure, we can simply request a label for a single,
randomly-selected cluster constituent and propagate that label to the cluster cohabitants."
The paper's choices are the defaults: clusters in a uniformly random order, each shown through
a random member. Beyond the paper, each a named option:

order   `random` (paper), `size` (largest first: most windows labeled per answer), or
        `size-uncertainty` (size x the head's mean uncertainty 1 - p(cluster | x) over the
        members: large clusters the head is least sure of first).
member  `random` (paper), `medoid` (the member with the highest cosine similarity to the mean of
        the members' unit embeddings), or `typical` (the member the head gives the highest
        probability of belonging to its cluster).
checks  every `check_every` cluster requests, one check: a second random member of a cluster
        asked earlier (drawn in proportion to its size), whose answer tells whether the
        cluster's label holds for other members (`coincide.labeling.signal` turns the checks into
        a precision estimate). A check is a request for one window, with the cluster id
        `check_id(window)` (negative), and its answer labels that window only.

Every choice depends only on the seed, the clustering and the position in the list, so a larger
budget extends the same list of requests (earlier answers are kept).
"""

from __future__ import annotations

import numpy as np

from coincide.config.choices import ClusterOrder, MemberChoice
from coincide.errors import UserError
from coincide.labeling.clusters import ClusterMembers

ORDERS: tuple[str, ...] = ("random", "size", "size-uncertainty")
MEMBERS: tuple[str, ...] = ("random", "medoid", "typical")


def check_id(window: int) -> int:
    """The request id of a check of `window`: negative, so it never equals a cluster id."""
    return -1 - int(window)


def is_check(request_id: int) -> bool:
    """Whether a request (its cluster id) is a check of one window."""
    return int(request_id) < 0


def _need_confidence(confidence: np.ndarray | None, what: str) -> np.ndarray:
    if confidence is None:
        raise UserError(
            f"{what} needs the head's probabilities of the clustering; run `coincide cluster` "
            "again to write them."
        )
    return np.asarray(confidence, dtype=np.float64)


def cluster_order(
    sizes: np.ndarray,
    order: ClusterOrder = "random",
    seed: int = 0,
    uncertainty: np.ndarray | None = None,
) -> np.ndarray:
    """The order in which active clusters are put to the annotator.

    Args:
        sizes: `(K,)` windows per cluster; clusters of size 0 are never asked.
        order: "random" (uniform permutation, the paper), "size" (largest first) or
            "size-uncertainty" (largest size x uncertainty first); ties in the seeded random
            order.
        seed: the permutation's seed.
        uncertainty: `(K,)` mean of 1 - p(cluster | x) over each cluster's members, for
            "size-uncertainty".

    Returns:
        `(active,)` int64 cluster ids; a budget of N asks the first N.
    """
    sizes = np.asarray(sizes)
    active = np.flatnonzero(sizes > 0)
    shuffled = active[np.random.default_rng(seed).permutation(len(active))]
    if order == "random":
        return shuffled
    if order == "size":
        return shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    if order == "size-uncertainty":
        value = sizes[shuffled] * _need_confidence(uncertainty, "order size-uncertainty")[shuffled]
        return shuffled[np.argsort(-value, kind="stable")]
    raise UserError(f"cluster order '{order}' is unknown; use one of {', '.join(ORDERS)}.")


def cluster_uncertainty(assignment: np.ndarray, confidence: np.ndarray, k: int) -> np.ndarray:
    """`(K,)` mean of 1 - confidence over each cluster's members (0 for an empty cluster).

    Args:
        assignment: `(n,)` cluster of each window; confidence: `(n,)` p(assigned cluster | x).
    """
    assignment = np.asarray(assignment, dtype=np.int64)
    sizes = np.bincount(assignment, minlength=k)
    doubt = np.bincount(assignment, weights=1.0 - np.asarray(confidence), minlength=k)
    return np.divide(doubt, sizes, out=np.zeros(k), where=sizes > 0)


def pick_member(
    members: np.ndarray,
    cluster_id: int,
    how: MemberChoice = "random",
    seed: int = 0,
    embeddings: np.ndarray | None = None,
    confidence: np.ndarray | None = None,
) -> int:
    """The window shown for a cluster.

    Args:
        members: `(m,)` window indices of the cluster (m >= 1).
        cluster_id: the cluster (seeds the random choice together with `seed`, so a cluster's
            member does not depend on which other clusters were asked).
        how: "random" (the paper), "medoid" or "typical" (see the module docstring).
        embeddings: `(n, d)` embeddings of the whole store, needed for "medoid".
        confidence: `(n,)` p(assigned cluster | x) of every window, needed for "typical".

    Returns:
        The chosen window index (the lowest index among equally good members).
    """
    if len(members) == 0:
        raise ValueError(f"cluster {cluster_id} has no members")
    ordered = np.sort(members)
    if how == "random":
        rng = np.random.default_rng([seed, int(cluster_id)])
        return int(members[rng.integers(len(members))])
    if how == "medoid":
        if embeddings is None:
            raise UserError(
                "the medoid member needs the store's embeddings; run `coincide cluster` first."
            )
        vectors = np.asarray(embeddings[ordered], dtype=np.float64)
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return int(ordered[int(np.argmax(unit @ unit.mean(axis=0)))])
    if how == "typical":
        probability = _need_confidence(confidence, "the typical member")[ordered]
        return int(ordered[int(np.argmax(probability))])
    raise UserError(f"member choice '{how}' is unknown; use one of {', '.join(MEMBERS)}.")


def _check(
    asked: list[tuple[int, int]],
    members: ClusterMembers,
    used: set[int],
    rng: np.random.Generator,
) -> tuple[int, int] | None:
    """A check request for one of the clusters asked so far (drawn in proportion to size among
    those with a member not shown yet), or None when there is none."""
    candidates = [(c, members.members(c)) for c, _ in asked]
    candidates = [(c, m[~np.isin(m, list(used))]) for c, m in candidates if len(m) >= 2]
    candidates = [(c, m) for c, m in candidates if len(m)]
    if not candidates:
        return None
    sizes = np.array([members.size(c) for c, _ in candidates], dtype=np.float64)
    _, free = candidates[int(rng.choice(len(candidates), p=sizes / sizes.sum()))]
    window = int(free[rng.integers(len(free))])
    return check_id(window), window


def select_requests(
    assignment: np.ndarray,
    num_clusters: int,
    budget: int,
    order: ClusterOrder = "random",
    member: MemberChoice = "random",
    seed: int = 0,
    embeddings: np.ndarray | None = None,
    members: ClusterMembers | None = None,
    confidence: np.ndarray | None = None,
    check_every: int = 0,
) -> list[tuple[int, int]]:
    """The first `budget` requests of a cluster-labeling session (fewer when there are fewer
    active clusters): `(cluster_id, window_index)` pairs in asking order.

    Args:
        assignment: `(n,)` cluster of each window; num_clusters: K.
        budget: N, the number of requests (clusters, and checks when `check_every`).
        order, member, seed: see `cluster_order` and `pick_member`.
        embeddings: `(n, d)`, for the medoid member; confidence: `(n,)` p(assigned cluster |
            x), for the typical member and the size-uncertainty order.
        members: the grouping of `assignment` when the caller already has it.
        check_every: a check after every this many cluster requests (0: none, the paper).
    """
    if budget < 0:
        raise UserError(f"the label budget is {budget}; give a positive number of labels.")
    if check_every < 0:
        raise UserError(f"checks every {check_every} requests: give 0 (none) or more.")
    members = members or ClusterMembers(assignment)
    sizes = np.bincount(np.asarray(assignment, dtype=np.int64), minlength=num_clusters)
    uncertainty = None
    if order == "size-uncertainty":
        uncertainty = cluster_uncertainty(
            assignment, _need_confidence(confidence, "order size-uncertainty"), len(sizes)
        )
    requests: list[tuple[int, int]] = []
    asked: list[tuple[int, int]] = []
    used: set[int] = set()
    for cluster in cluster_order(sizes, order, seed, uncertainty):
        if len(requests) >= budget:
            break
        shown = pick_member(
            members.members(cluster), int(cluster), member, seed, embeddings, confidence
        )
        asked.append((int(cluster), shown))
        used.add(shown)
        requests.append(asked[-1])
        if check_every and len(asked) % check_every == 0 and len(requests) < budget:
            check = _check(asked, members, used, np.random.default_rng([seed, len(requests), 7]))
            if check is not None:
                used.add(check[1])
                requests.append(check)
    return requests


def random_window_requests(n_windows: int, budget: int, seed: int = 0) -> list[tuple[int, int]]:
    """The first `budget` requests of a random-labeling session: windows drawn uniformly without
    replacement (a seeded permutation, so a larger budget extends a smaller one), each its own
    "cluster": `(window_index, window_index)` pairs."""
    if budget < 0:
        raise UserError(f"the label budget is {budget}; give a positive number of labels.")
    windows = np.random.default_rng(seed).permutation(n_windows)[:budget]
    return [(int(w), int(w)) for w in windows]
