"""The label vocabulary offered by the page's autocomplete (`--vocab FILE`).

Two formats are read:
- a plain text list: one label per line; blank lines and lines starting with `#` are ignored;
- the AudioSet `ontology.json`: a JSON list of objects with `name` and `description` (other
  fields ignored). Classes restricted as `blacklist` are left out, as AudioSet leaves them out of
  its labels; `abstract` classes (e.g. "Human sounds") stay, as coarse labels are still labels.

The vocabulary only suggests: the annotator may always type a label that is not in it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from coincide.errors import UserError


@dataclass(frozen=True)
class Term:
    """One suggested label: the text that is stored, and a description shown beside it."""

    name: str
    description: str = ""


class Vocabulary:
    """An ordered list of terms, searched by name first and description second."""

    def __init__(self, terms: Sequence[Term] = ()) -> None:
        unique: dict[str, Term] = {}
        for term in terms:
            unique.setdefault(term.name, term)
        self.terms = list(unique.values())
        self._folded = [(t.name.casefold(), t.description.casefold()) for t in self.terms]

    def __len__(self) -> int:
        return len(self.terms)

    def search(self, query: str, limit: int = 20) -> list[Term]:
        """At most `limit` terms matching `query` (case-insensitive), best first (see
        `match_rank`); file order within each rank. An empty query gives the first `limit`
        terms."""
        needle = query.strip().casefold()
        ranked: list[tuple[int, int]] = []
        for position, (name, description) in enumerate(self._folded):
            rank = match_rank(needle, name, description)
            if rank is not None:
                ranked.append((rank, position))
        ranked.sort()
        return [self.terms[position] for _, position in ranked[:limit]]


def match_rank(needle: str, name: str, description: str = "") -> int | None:
    """How well a casefolded `needle` matches a casefolded term: 0 the name starts with it, 1 a
    word of the name does, 2 the name contains it, 3 the description does; None no match.
    An empty needle matches everything at rank 0."""
    if name.startswith(needle):
        return 0
    if any(word.startswith(needle) for word in name.replace(",", " ").split()):
        return 1
    if needle in name:
        return 2
    if needle in description:
        return 3
    return None


@dataclass(frozen=True)
class Suggestion:
    """A label offered by the page: a term of the vocabulary, or a label already given in this
    session (`uses` answers carry it; 0 for a vocabulary term nobody has used yet)."""

    name: str
    description: str = ""
    uses: int = 0


def suggest(
    vocabulary: Vocabulary, used: Mapping[str, int], query: str, limit: int = 9
) -> list[Suggestion]:
    """At most `limit` labels for the page, best first: by `match_rank`, and within a rank the
    labels already given (most used first, ties in the order `used` lists them) before the
    vocabulary's terms (in file order). A label is matched as stored, so 'dog' and 'Dog' are
    two suggestions and a typed label is never replaced by one of them. An empty query gives
    the most used labels, then the first terms of the vocabulary."""
    needle = query.strip().casefold()
    ranked: list[tuple[int, int, int, Suggestion]] = []
    descriptions = {term.name: term.description for term in vocabulary.terms}
    for name, uses in used.items():
        description = descriptions.get(name, "")
        rank = match_rank(needle, name.casefold(), description.casefold())
        if rank is not None:
            ranked.append((rank, 0, -uses, Suggestion(name, description, uses)))
    for position, term in enumerate(vocabulary.search(query, limit + len(used))):
        if term.name not in used:
            rank = match_rank(needle, term.name.casefold(), term.description.casefold())
            assert rank is not None  # search returned it
            ranked.append((rank, 1, position, Suggestion(term.name, term.description)))
    ranked.sort(key=lambda item: item[:3])
    return [suggestion for *_, suggestion in ranked[:limit]]


def _ontology_terms(entries: object, path: Path) -> list[Term]:
    if not isinstance(entries, list):
        raise UserError(
            f"vocabulary {path} is JSON but not a list of classes; give an AudioSet "
            "ontology.json or a plain text file with one label per line."
        )
    terms = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UserError(
                f"vocabulary {path} has an entry without a 'name' ({str(entry)[:60]}); give an "
                "AudioSet ontology.json or a plain text file with one label per line."
            )
        if "blacklist" in (entry.get("restrictions") or []):
            continue
        name = entry["name"].strip()
        if name:
            description = entry.get("description")
            terms.append(Term(name, description.strip() if isinstance(description, str) else ""))
    return terms


def load_vocabulary(path: str | Path | None) -> Vocabulary:
    """Read a vocabulary file (format chosen by content: JSON when it starts with `[` or `{`);
    None gives an empty vocabulary. A missing or unreadable file is a UserError."""
    if path is None:
        return Vocabulary()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise UserError(f"vocabulary file {path} does not exist; check the --vocab path.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(
            f"cannot read vocabulary file {path} ({err}); give a UTF-8 text or JSON file."
        ) from err
    if text.lstrip().startswith(("[", "{")):
        try:
            entries = json.loads(text)
        except ValueError as err:
            raise UserError(
                f"vocabulary {path} looks like JSON but does not parse ({err}); fix the file."
            ) from err
        return Vocabulary(_ontology_terms(entries, path))
    lines = (line.strip() for line in text.splitlines())
    return Vocabulary([Term(line) for line in lines if line and not line.startswith("#")])
