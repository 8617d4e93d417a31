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
from collections.abc import Sequence
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
        """At most `limit` terms matching `query` (case-insensitive), best first: names that
        start with it, then names with a word that starts with it, then names containing it,
        then descriptions containing it; file order within each group. An empty query gives
        the first `limit` terms."""
        needle = query.strip().casefold()
        if not needle:
            return self.terms[:limit]
        ranked: list[tuple[int, int]] = []
        for position, (name, description) in enumerate(self._folded):
            if name.startswith(needle):
                rank = 0
            elif any(word.startswith(needle) for word in name.replace(",", " ").split()):
                rank = 1
            elif needle in name:
                rank = 2
            elif needle in description:
                rank = 3
            else:
                continue
            ranked.append((rank, position))
        ranked.sort()
        return [self.terms[position] for _, position in ranked[:limit]]


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
