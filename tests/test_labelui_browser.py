"""The labeling page end to end in a real headless Chromium (Debian's, driven by Playwright).

Open the page, play the audio, label clusters with the keyboard only (a suggestion taken with
the arrows, a new label kept as typed, a hostile label text, digits picking suggestions, a skip),
undo one, send an answer with Enter in the name field, restart the server, see the answers kept
and the page resume where it was, check that a second tab, on a phone 360 px wide, gets another
cluster and fits the screen, export CSV and read it back. Screenshots at 1280 and 360 px go to
$COINCIDE_SCREENSHOTS when it is set.

Skipped only when /usr/bin/chromium is missing (`apt-get install chromium`).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing; install it with `apt-get install -y chromium`",
        allow_module_level=True,
    )

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from coincide.cli.commands import app as cli_app  # noqa: E402
from coincide.labelui.server import LabelingServer  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_labelui_api import XSS, build_labeling_run, write_media, write_ontology  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000
expect.set_options(timeout=TIMEOUT_MS)


def start_server(setup, vocab: Path, port: int = 0) -> LabelingServer:
    page_server = LabelingServer(
        setup.run, setup.store, 5, port=port, vocab=vocab, annotator="tester"
    )
    page_server.start()
    return page_server


def wait_until(page: Page, expression: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Poll a JS expression until it is true (`page.wait_for_function` evaluates strings with
    eval, which the page's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def expect_cluster(page: Page, cluster_id: int) -> None:
    expect(page.locator("#cluster-title")).to_have_text(f"Cluster {cluster_id}")


def history_labels(page: Page) -> list[str]:
    return page.locator("#history .chip").all_text_contents()


def no_wider_than(page: Page, width: int) -> None:
    """Nothing on the page reaches past `width` CSS pixels (no sideways scrolling)."""
    overflowing = page.evaluate(
        f"""Array.from(document.querySelectorAll('body *'))
            .filter((e) => e.getClientRects().length && e.getBoundingClientRect().right > {width})
            .map((e) => e.tagName + '#' + e.id + '.' + e.className)"""
    )
    assert overflowing == []
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """A full-page PNG in tmp_path, and in $COINCIDE_SCREENSHOTS when set (to look at)."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("COINCIDE_SCREENSHOTS"):
        folder = Path(os.environ["COINCIDE_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
    return path


def test_label_clusters_with_the_keyboard_undo_restart_export(tmp_path):
    setup = build_labeling_run(tmp_path / "labeling", write_media(tmp_path / "sources"))
    vocab = write_ontology(tmp_path / "ontology.json")
    server = start_server(setup, vocab)
    dialogs: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(server.url)

            # The first cluster, its member, its pictures, and the annotator from --annotator.
            expect_cluster(page, 3)
            expect(page.locator("#member-info")).to_have_text("tone.wav at 3 s")
            expect(page.locator("#cluster-size")).to_have_text("3 windows")
            expect(page.locator("#annotator")).to_have_value("tester")
            wait_until(page, "document.getElementById('spectrogram').naturalWidth === 800")
            expect(page.locator("#frame")).to_be_hidden()  # tone.wav has no picture
            expect(page.locator("#progress-text")).to_have_text(
                "0 / 5 clusters answered · 0 windows labeled"
            )
            # Nothing given yet: the vocabulary's first terms are suggestions 1-4.
            expect(page.locator("#suggestions .term")).to_have_text(
                ["Dog", "Bark", "Male speech, man speaking", "Human sounds"]
            )

            # The keys work at once (no field has the focus): Space plays.
            page.keyboard.press(" ")
            wait_until(
                page,
                "(() => { const a = document.getElementById('audio');"
                " return !a.paused && a.currentTime > 0.2; })()",
            )
            assert page.evaluate("document.getElementById('audio').duration") == pytest.approx(
                4.0, abs=0.05
            )
            expect(page.locator("#playhead")).not_to_have_attribute("style", "left: 0.00%;")
            page.keyboard.press(" ")  # pause

            # Cluster 3: a suggestion taken with the arrow keys, then a new label typed: Enter
            # adds it as typed, not the vocabulary's "Dog" it resembles; then a hostile text.
            page.keyboard.press("/")
            page.keyboard.type("do")
            suggestions = page.locator("#suggestions .suggestion")
            # The arrows choose only among suggestions made for the text in the field.
            expect(page.locator("#suggest-title")).to_have_text("matching “do”")
            expect(suggestions.first).to_contain_text("Dog")
            expect(suggestions.first).to_contain_text("All sounds made by a dog.")
            page.keyboard.press("ArrowDown")
            expect(page.locator("#typed-hint")).to_have_text("Enter adds suggestion 1: “Dog”")
            page.keyboard.press("Enter")
            page.keyboard.type("dogg")
            expect(page.locator("#typed-hint")).to_have_text("Enter adds “dogg” as a new label")
            expect(suggestions.first).to_contain_text("Dog")
            page.keyboard.press("Enter")
            # Typed right after choosing a suggestion: the choice does not outlive the text.
            page.keyboard.type("ba")
            expect(page.locator("#suggest-title")).to_have_text("matching “ba”")
            expect(suggestions.first).to_contain_text("Bark")
            page.keyboard.press("ArrowDown")
            page.keyboard.type("y")
            page.keyboard.press("Enter")
            expect(page.locator("#chips .chip")).to_have_text(["Dog×", "dogg×", "bay×"])
            page.keyboard.press("Backspace")  # empty field: drops the last chip
            page.keyboard.type(XSS)
            page.keyboard.press("Enter")
            expect(page.locator("#chips .chip")).to_have_count(3)
            screenshot(page, tmp_path, "labelui-1280.png")
            page.keyboard.press("Enter")  # empty field: submit
            expect_cluster(page, 0)

            # Cluster 0: skipped with S, straight away.
            page.keyboard.press("s")
            expect_cluster(page, 4)

            # Cluster 4: the labels given so far are the first suggestions; digits pick (and
            # drop) them; a new label typed beside them.
            expect(page.locator("#suggestions .term").first).to_have_text("Dog")
            expect(page.locator("#suggestions .term")).to_contain_text(["Dog", "dogg", XSS, "Bark"])
            expect(page.locator("#suggestions .uses").first).to_have_text("×1")
            page.keyboard.press("3")
            expect(page.locator("#chips .chip")).to_have_text([XSS + "×"])
            page.keyboard.press("3")
            page.keyboard.press("1")
            expect(page.locator("#chips .chip")).to_have_text(["Dog×"])
            expect(suggestions.first).to_have_attribute("aria-pressed", "true")
            page.keyboard.press("/")
            page.keyboard.type("cat")
            page.keyboard.press("Enter")
            page.keyboard.press("Enter")
            expect_cluster(page, 1)
            expect(page.locator("#progress-text")).to_have_text(
                "3 / 5 clusters answered · 5 windows labeled"
            )
            # The hostile label is shown as text: no element made of it, no script run.
            expect(page.locator("#history .chip").first).to_have_text("Dog")
            assert XSS in history_labels(page)
            assert page.locator("img[src='x']").count() == 0

            # U undoes the last answer: cluster 4 comes back with its labels ready to resubmit.
            page.keyboard.press("u")
            expect_cluster(page, 4)
            expect(page.locator("#chips .chip")).to_have_text(["Dog×", "cat×"])
            expect(page.locator("#progress-text")).to_have_text(
                "2 / 5 clusters answered · 3 windows labeled"
            )

            # No name: S asks for one; Enter in the name field then sends the skip.
            page.locator("#annotator").fill("")
            page.locator("#annotator").press("Escape")
            page.keyboard.press("s")
            expect(page.locator("#message")).to_contain_text("Type your name")
            expect(page.locator("#annotator")).to_be_focused()
            page.keyboard.type("tester")
            page.keyboard.press("Enter")
            expect_cluster(page, 1)
            expect(page.locator("#progress-text")).to_have_text(
                "3 / 5 clusters answered · 3 windows labeled"
            )

            # Restart the server on the same port: answers kept, the page resumes at cluster 1.
            port = server.port
            server.stop()
            server = start_server(setup, vocab, port)
            page.reload()
            expect_cluster(page, 1)
            expect(page.locator("#progress-text")).to_have_text(
                "3 / 5 clusters answered · 3 windows labeled"
            )
            expect(page.locator("#history li")).to_have_count(3)
            assert history_labels(page) == ["Dog", "dogg", XSS]

            # A second tab, on a phone 360 px wide, is handed the next cluster, not the one
            # this tab holds; the page fits the screen and its buttons work by touch.
            phone = browser.new_context(viewport={"width": 360, "height": 740}, has_touch=True)
            phone.set_default_timeout(TIMEOUT_MS)
            other = phone.new_page()
            other.goto(server.url)
            expect_cluster(other, 5)
            expect_cluster(page, 1)
            wait_until(other, "document.getElementById('frame').naturalWidth > 0")
            no_wider_than(other, 360)
            screenshot(other, tmp_path, "labelui-360.png")
            other.locator("#suggestions .suggestion").first.tap()
            expect(other.locator("#chips .chip")).to_have_text(["Dog×"])
            other.locator("#submit").tap()
            expect(other.locator("#done-title")).to_have_text("Nothing left for this tab right now")
            no_wider_than(other, 360)
            assert dialogs == []
        finally:
            browser.close()
            server.stop()

    result = CliRunner().invoke(
        cli_app, ["labels", "export", str(setup.run), "--format", "csv", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    answers = pd.read_csv(tmp_path / "answers.csv", keep_default_na=False)
    answered = answers[answers["state"] == "answered"]
    assert list(zip(answered["cluster_id"], answered["kind"], answered["label"], strict=True)) == [
        (3, "label", "Dog"),
        (3, "label", "dogg"),
        (3, "label", XSS),
        (0, "skip", ""),
        (4, "skip", ""),
        (5, "label", "Dog"),
    ]
    assert set(answered["annotator"]) == {"tester"}
    assert list(answers.loc[answers["state"] == "pending", "cluster_id"]) == [1]
    windows = pd.read_csv(tmp_path / "windows.csv", keep_default_na=False)
    assert list(windows["window_index"]) == [8, 8, 8, 9, 9, 9, 10, 10, 10, 13, 14]
    assert list(windows["label"]) == ["Dog", "dogg", XSS] * 3 + ["Dog", "Dog"]
