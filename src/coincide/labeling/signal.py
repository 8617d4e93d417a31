"""When to stop labeling: the precision and coverage of a session's labels, estimated from the
answers so far.

- Coverage: the share of the store's windows that carry a label once the `label` answers are
  propagated to their clusters (exact, no estimate).
- Precision: the share of those window labels that are right. Propagation is right for the
  members of a cluster that hold its answer's labels, which one answer cannot tell. A check
  (`coincide.labeling.select`: a second random member of a cluster asked earlier, drawn in
  proportion to the cluster's size) can: its answer's agreement with the cluster's labels,
  |L_cluster & L_check| / |L_cluster| (0 when the check is answered "nothing to label"), is an
  unbiased estimate of the precision of that cluster's propagated labels, and its mean over the
  checks estimates the precision over the windows of clusters with two or more members. A
  one-window cluster is labeled by its own answer, so it counts as right; the estimate weighs
  both groups by their labeled windows. The standard error is the binomial one of the checks.
- Gain: the windows the next `lookahead` pending cluster requests would label, as a share of
  the store: when it falls (only small clusters left) and precision is known well enough,
  further answers buy little.

Without checks the precision is unknown (None): `coincide label --checks N` asks one check per
N clusters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from coincide.labeling.clusters import ClusterMembers
from coincide.labeling.select import is_check
from coincide.store.labels import Answer, Request


@dataclass(frozen=True)
class Signal:
    """The estimate after the answers so far (see the module docstring)."""

    answered: int  # requests answered (clusters and checks)
    requests: int  # requests in the session (its budget so far)
    labeled_windows: int  # windows with a propagated or direct label
    windows: int  # windows in the store
    coverage: float  # labeled_windows / windows
    checks: int  # checks compared with an answered cluster
    precision: float | None  # estimated share of right window labels; None without checks
    precision_error: float | None  # its standard error
    next_gain: float  # share of the store the next `lookahead` pending clusters would label
    lookahead: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for the terminal and the page."""
        text = (
            f"coverage {self.coverage:.1%} of {self.windows:,} windows "
            f"({self.labeled_windows:,} labeled)"
        )
        if self.precision is None:
            text += "; precision unknown (no checks answered)"
        else:
            text += (
                f"; estimated label precision {self.precision:.2f} "
                f"± {self.precision_error:.2f} from {self.checks} checks"
            )
        if self.lookahead:
            text += f"; the next {self.lookahead} clusters would label {self.next_gain:.1%} more"
        return text


def estimate(
    requests: Sequence[Request],
    answers: Sequence[Answer],
    members: ClusterMembers,
    windows: int,
    lookahead: int = 10,
) -> Signal:
    """The signal of a cluster-labeling session.

    Args:
        requests: the session's requests in order (the served ones); answers: their current
            answers.
        members: the clustering's members (cluster id -> windows).
        windows: windows in the store.
        lookahead: pending cluster requests whose sizes make the gain.
    """
    asked = {r.cluster_id for r in requests}
    answers = [a for a in answers if a.cluster_id in asked]
    cluster_labels = {
        a.cluster_id: set(a.labels)
        for a in answers
        if not is_check(a.cluster_id) and a.kind == "label" and a.labels
    }
    labeled = set()
    for cluster_id in cluster_labels:
        labeled.update(members.members(cluster_id).tolist())
    labeled.update(
        a.window_index for a in answers if is_check(a.cluster_id) and a.kind == "label" and a.labels
    )

    # Checks of clusters answered with labels: their agreement with the cluster's labels.
    assignment = members.assignment
    agreement = []
    for a in answers:
        if not is_check(a.cluster_id) or a.kind not in ("label", "skip"):
            continue
        truth = cluster_labels.get(int(assignment[a.window_index]))
        if truth:
            agreement.append(len(truth & set(a.labels)) / len(truth))
    single = sum(members.size(c) for c in cluster_labels if members.size(c) == 1)
    several = sum(members.size(c) for c in cluster_labels if members.size(c) >= 2)
    precision = error = None
    if agreement and several:
        mean = float(np.mean(agreement))
        share = several / (single + several)
        precision = (single + several * mean) / (single + several)
        error = share * math.sqrt(max(mean * (1 - mean), 0.0) / len(agreement))
    elif cluster_labels and not several:
        precision, error = 1.0, 0.0  # every labeled cluster has one window: its own answer

    answered_ids = {a.cluster_id for a in answers}
    pending = [
        r.cluster_id
        for r in requests
        if not is_check(r.cluster_id) and r.cluster_id not in answered_ids
    ][:lookahead]
    gain = sum(members.size(c) for c in pending) / max(windows, 1)
    return Signal(
        answered=len(answered_ids),
        requests=len(requests),
        labeled_windows=len(labeled),
        windows=windows,
        coverage=len(labeled) / max(windows, 1),
        checks=len(agreement),
        precision=precision,
        precision_error=error,
        next_gain=gain,
        lookahead=len(pending),
    )
