"""The JSON bodies the labeling page's API accepts, as pydantic models.

pydantic parses and checks a body in one pass (its Rust JSON parser refuses nesting deeper than
its recursion limit, so `[[[[...]]]]` is a 400, not a RecursionError), strictly: an integer
field takes a JSON integer only (not `true`, `3.0` or `"3"`), a string field a JSON string.
Unknown fields are ignored. `parse_body` turns the first problem into one sentence for the
`{"error": ...}` answer; size and content type are checked before (see `app._body_bytes`).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StrictInt,
    StringConstraints,
    ValidationError,
)

from coincide.store.labels import AnswerKind

MAX_LABELS = 32
MAX_LABEL_CHARS = 200
MAX_NAME_CHARS = 100
RESERVED_ANNOTATORS = {"oracle"}  # the simulated annotator of `coincide label --oracle`
KEY_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

# What each field must be, said to the client when pydantic refuses it.
FIELD_RULES = {
    "claimant": "must be 1-64 letters, digits, '-' or '_'",
    "owner": "must be 1-64 letters, digits, '-' or '_'",
    "cluster_id": "must be an integer",
    "window": "must be an integer",
    "kind": "must be one of label, skip, unsure, mixed",
    "labels": "must be a list of strings",
    "annotator": f"must be a non-empty string of at most {MAX_NAME_CHARS} characters",
}


class BodyError(ValueError):
    """A body that is not what the endpoint takes; the message is one sentence for the client."""


def _annotator(value: str) -> str:
    name = value.strip()
    if not name:
        raise ValueError("field 'annotator' must be a non-empty string.")
    if name.casefold() in RESERVED_ANNOTATORS:
        raise ValueError(f"annotator name '{name}' is reserved; type your own name.")
    return name


def _labels(values: list[str]) -> list[str]:
    if len(values) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels per answer.")
    cleaned = [" ".join(label.split()) for label in values]
    if any(not label for label in cleaned):
        raise ValueError("a label is empty; remove it or type some text.")
    if any(len(label) > MAX_LABEL_CHARS for label in cleaned):
        raise ValueError(f"a label is longer than {MAX_LABEL_CHARS} characters.")
    return cleaned


Key = Annotated[str, StringConstraints(pattern=KEY_PATTERN)]
Annotator = Annotated[str, StringConstraints(max_length=MAX_NAME_CHARS), AfterValidator(_annotator)]
Labels = Annotated[list[str], AfterValidator(_labels)]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class NextBody(Body):
    """`POST /api/next`: the tab asking for its cluster."""

    claimant: Key


class AnswerBody(Body):
    """`POST /api/answer`. `owner` is the page's private key (kept in the browser across tabs);
    answers given with it can be undone only with it. Optional: a client without one owns its
    answers by its claimant."""

    claimant: Key
    cluster_id: StrictInt
    window: StrictInt
    kind: AnswerKind
    labels: Labels = []
    annotator: Annotator
    owner: Key | None = None


class UndoBody(Body):
    """`POST /api/undo`: take back this page's latest answer by `annotator`."""

    claimant: Key
    annotator: Annotator
    owner: Key | None = None


B = TypeVar("B", bound=Body)


def _sentence(problem: dict[str, Any]) -> str:
    kind, where = problem["type"], problem["loc"]
    if kind == "json_invalid":
        reason = str(problem.get("ctx", {}).get("error", problem["msg"]))
        if "recursion limit" in reason:
            return "request body is nested too deeply to be an answer."
        return f"request body is not valid JSON ({reason})."
    if not where:
        return "request body must be a JSON object."
    if kind == "value_error":  # our own validators' sentences
        return str(problem["ctx"]["error"])
    field = str(where[0])
    if kind == "missing":
        return f"field '{field}' is missing; it {FIELD_RULES.get(field, 'is required')}."
    return f"field '{field}' {FIELD_RULES.get(field, 'is not valid')}."


def parse_body(model: type[B], raw: bytes) -> B:
    """The body `raw` (JSON text) as `model`; BodyError with one sentence otherwise."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise BodyError(_sentence(err.errors(include_url=False)[0])) from err
