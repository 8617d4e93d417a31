"""The settings of one command: a frozen dataclass per stage, stored with what the stage writes.

The CLI parses a command's options into its stage's settings (`ClusterSettings`,
`LabelSettings`, ...) and calls `stages.<name>.run(settings)`; the stage writes
`settings.record()` next to its outputs (`settings.json` in the folder it writes, or a
`settings` entry of the record it keeps, or a script element of the HTML page it writes), so
every output says which command, options and version made it. Training's settings are the
configuration tree (`config.yaml`) plus the command's own options (`TrainSettings`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

from coincide import __version__
from coincide.files import write_json_atomic

SETTINGS_FILE = "settings.json"


def _plain(value: Any) -> Any:
    """A settings value as JSON: paths absolute, sequences as lists, dataclasses as dicts."""
    if isinstance(value, Path):
        return str(value.absolute())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """Base of every stage's settings; a subclass names its `command` and lists its options."""

    command: ClassVar[str]

    def record(self) -> dict[str, Any]:
        """`{"command", "coincide" (version), "settings": {option: value}}`, JSON-ready."""
        return {"command": self.command, "coincide": __version__, "settings": _plain(self)}

    def html_script(self) -> str:
        """`record()` as the element `<script type="application/json" id="settings">` of an HTML
        page (`</` is written `<\\/`, so no value can end the element early)."""
        payload = json.dumps(self.record()).replace("</", "<\\/")
        return f'<script type="application/json" id="settings">{payload}</script>'

    def write(self, folder: Path) -> Path:
        """Write `record()` to `folder/settings.json` (atomically); returns the path."""
        path = Path(folder) / SETTINGS_FILE
        write_json_atomic(path, self.record())
        return path
