"""Files that decode only in part are stored as far as they decode and reported with a warning,
in the console and in `ingest_report.json`."""

from __future__ import annotations

import json

import coincide
from test_ingest import ingest, store_content
from test_ingest_stream import write_wav


def test_a_truncated_wav_is_kept_with_a_warning_in_the_output_and_the_report(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    whole = write_wav(media / "whole.wav", 6).resolve()
    data = whole.read_bytes()
    cut = media.resolve() / "cut.wav"
    cut.write_bytes(data[: 44 + 3 * 16000 * 2])  # the header, then 3 of the 6 seconds
    store_path = tmp_path / "store"

    result = ingest(media, "--store", store_path)

    assert result.exit_code == 0, result.output
    warning = "truncated: its header promises 6.00 s of audio, only 3.00 s decoded (kept)"
    assert f"warning {cut}: {warning}" in result.output
    assert "2 ingested (9 windows)" in result.output
    assert "0 skipped, 1 ingested with warnings;" in result.output
    store = coincide.open_store(store_path)
    media_ids = dict(zip(store.media["media_path"], store.media["media_id"], strict=True))
    # What decoded is stored: the first 3 seconds, equal to those of the whole file.
    assert store.media.set_index("media_path").loc[str(cut), "n_windows"] == 3
    rows = store.windows_of(media_ids[str(cut)])
    whole_rows = store.windows_of(media_ids[str(whole)])[:3]
    assert (store.logmel[rows] == store.logmel[whole_rows]).all()
    report = json.loads((store_path / "ingest_report.json").read_text())
    assert [(w["path"], w["media_id"], w["warning"]) for w in report["warnings"]] == [
        (str(cut), media_ids[str(cut)], warning)
    ]
    assert report["runs"][-1]["stored_with_warnings"] == 1
    assert report["skipped"] == []

    # Run again: nothing is decoded again, and the warning stays with the stored file.
    again = ingest(media, "--store", store_path)
    assert "0 ingested (0 windows), 2 already in the store" in again.output
    assert "warning" not in again.output
    report = json.loads((store_path / "ingest_report.json").read_text())
    assert [w["path"] for w in report["warnings"]] == [str(cut)]
    assert report["runs"][-1]["stored_with_warnings"] == 0

    # The user mends the file (a complete recording) and ingests it again: its warning goes.
    windows_before = len(store_content(store_path)["windows"])
    write_wav(cut, 6, hz=500)
    mended = ingest(media, "--store", store_path)
    assert "1 ingested (6 windows), 1 already in the store" in mended.output
    report = json.loads((store_path / "ingest_report.json").read_text())
    assert report["warnings"] == []
    assert len(store_content(store_path)["windows"]) == windows_before + 6
