"""Property-based bad inputs (hypothesis): whatever a user or a client sends, the answer is a
result or one clear refusal, never an unexpected exception.

- labels CSV files of arbitrary text: parsed, or a UserError;
- `--set` overrides of arbitrary keys and values: a Config, or a UserError;
- JSON bodies of any shape to the labeling page's API: a 2xx or 4xx JSON answer, never a 500;
- media files with a real header and damaged bytes after it: decoded, or skipped with a reason.

Examples are derandomized (the same on every run, so CI is reproducible) and few enough to keep
the file under half a minute.
"""

from __future__ import annotations

import contextlib
import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mediagen
from coincide.config.settings import load_config
from coincide.errors import UserError
from coincide.media.frontend import frontend_parameters
from coincide.stages.ingest_workers import Decoded, Skipped, examine
from coincide.store.chunk_files import SPOOL_LOGMEL, Spool
from coincide.store.media_labels import read_labels_csv

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from coincide.labelui import server  # noqa: E402
from coincide.labelui.app import create_app  # noqa: E402
from coincide.labelui.vocab import Vocabulary  # noqa: E402
from test_labelui_api import BASE, build_labeling_run, write_media  # noqa: E402

FRONTEND = frontend_parameters()
FEW = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# CSV-ish text: separators, quotes, newlines, control characters, and any other text.
CSV_TEXT = st.text(
    alphabet=st.sampled_from(list(',"\n\r\t;|\\\x00\x0b') + list("pathlabel.wav/ "))
    | st.characters(),
    max_size=200,
)


@FEW
@given(body=CSV_TEXT, header=st.sampled_from(["path,label\n", "label,path\n", "", "path\n"]))
def test_any_labels_csv_parses_or_is_refused(tmp_path_factory, body: str, header: str) -> None:
    path = tmp_path_factory.mktemp("csv") / "labels.csv"
    path.write_text(header + body, encoding="utf-8", errors="surrogatepass")
    try:
        parsed = read_labels_csv(path)
    except UserError as err:
        assert "\n" not in str(err).strip() or "line" in str(err)
        return
    for media, label in parsed.rows:
        assert isinstance(media, Path) and label.strip() == label and label


KEYS = st.sampled_from(
    [
        "optim.lr",
        "data.batch_size",
        "curriculum.alpha",
        "curriculum.stages",
        "model.audio.arch",
        "model.head_dropout",
        "augment.audio.mix_snr_db",
        "augment.image.hflip",
        "clustering.K",
        "nope.key",
        "optim",
        "",
    ]
)
VALUES = st.one_of(
    st.sampled_from(["nan", "inf", "-1", "0", "1e-4", "[1, 2]", "{a: 1}", "true", "~", "[", "'"]),
    st.text(alphabet=string.printable, max_size=20),
)


@FEW
@given(key=KEYS, value=VALUES)
def test_any_override_gives_a_config_or_a_user_error(key: str, value: str) -> None:
    with contextlib.suppress(UserError):
        load_config(["small"], [f"{key}={value}"])


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "claimant": JSON | st.just("tab-a"),
        "cluster_id": JSON | st.integers(-2, 8),
        "window": JSON | st.integers(-2, 20),
        "kind": JSON | st.sampled_from(["label", "skip", "unsure", "mixed"]),
        "labels": JSON | st.lists(st.text(max_size=8), max_size=3),
        "annotator": JSON | st.just("ann"),
    },
)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    setup = build_labeling_run(root / "labeling", write_media(root / "sources"))
    opened = server.open_campaign(setup.run, setup.store, budget=5)
    app = create_app(opened.campaign, Vocabulary(), allowed_hosts=server.LOOPBACK_NAMES)
    yield TestClient(app, base_url=BASE, raise_server_exceptions=False)
    opened.labels.close()


@FEW
@given(endpoint=st.sampled_from(["/api/answer", "/api/next", "/api/undo"]), body=FIELDS | JSON)
def test_any_json_body_gets_a_json_answer_never_a_500(page, endpoint: str, body) -> None:
    response = page.post(
        endpoint, content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/json")


@pytest.fixture(scope="module")
def headers(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("headers")
    return {
        "wav": mediagen.write_audio(folder / "a.wav", "wav", seconds=2).read_bytes(),
        "flac": mediagen.write_audio(folder / "a.flac", "flac", seconds=2).read_bytes(),
        "mp4": mediagen.write_video(
            folder / "a.mp4", "mp4", seconds=2, width=32, height=32
        ).read_bytes(),
    }


@settings(
    derandomize=True,
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["wav", "flac", "mp4"]),
    cut=st.integers(min_value=4, max_value=400),
    noise=st.binary(min_size=0, max_size=300),
    where=st.integers(min_value=0, max_value=2000),
)
def test_damaged_media_is_decoded_or_skipped(tmp_path_factory, headers, kind, cut, noise, where):
    """A real file's first bytes (its header), then damage: random bytes spliced in, the rest
    truncated or kept."""
    data = headers[kind]
    damaged = data[:cut] + noise + data[cut + where :]
    folder = tmp_path_factory.mktemp("media")
    path = folder / f"damaged.{kind}"
    path.write_bytes(damaged)
    spools = folder / "spools"
    spools.mkdir()
    outcome = examine(
        str(path), frozenset().__contains__, lambda src: Spool(spools / "one", FRONTEND, src)
    )
    assert isinstance(outcome, Decoded | Skipped)
    if isinstance(outcome, Skipped):
        assert outcome.reason
        assert not any(spools.iterdir()), "a skipped file left features behind"
    else:
        assert outcome.spooled.n_windows == outcome.n_windows >= 1
        logmel_bytes = outcome.n_windows * FRONTEND["n_mels"] * FRONTEND["window_frames"] * 4
        assert (spools / "one" / SPOOL_LOGMEL).stat().st_size == logmel_bytes
