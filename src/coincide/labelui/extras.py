"""Routes of the labeling page beyond answering clusters, kept apart from `app.py`:

    GET /api/extra   what kind of session this is, and what the page adds for it:
                     a search session's question ("is this a <class>?", with the query that
                     found the hits), and a cluster session's stopping signal (the estimated
                     label precision and coverage from the answers so far,
                     `coincide.labeling.signal`).

The page's `static/extra.js` shows them; like every route, they only read the label store.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coincide.labeling.clusters import ClusterMembers
from coincide.labeling.signal import estimate
from coincide.labelui.campaign import Campaign


def extra_info(campaign: Campaign, members: ClusterMembers | None) -> dict[str, Any]:
    """The `/api/extra` answer for the campaign's session."""
    session = campaign.session
    info: dict[str, Any] = {"strategy": session.strategy}
    if session.strategy == "search":
        info["question"] = str(session.params.get("class", ""))
        info["query"] = str(session.params.get("query", ""))
    if members is not None:
        served = campaign.labels.requests(session.id)[: campaign.budget]
        signal = estimate(served, campaign.current_answers(), members, len(campaign.assignment))
        info["signal"] = {**signal.as_dict(), "text": signal.describe()}
    return info


def extra_routes(campaign: Campaign) -> list[Route]:
    """The routes above, for one campaign."""
    clustered = campaign.session.strategy not in ("random", "search")
    members = ClusterMembers(campaign.assignment) if clustered else None

    async def extra(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(extra_info, campaign, members))

    return [Route("/api/extra", extra)]
