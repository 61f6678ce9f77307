"""``fieldkit report`` and the report.html every run writes: one self-contained page that a real headless
browser (Chromium, driven by playwright) renders with no console errors and with plots and images that are
not blank; labelled sample grids; a comparison of runs; clear errors for folders that are not runs."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli_run import invoke

from fieldkit.eval.grid import BACKGROUND, LABELS_FORMAT, grid, labelled_grid, save_grid

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def browser():
    """A headless Chromium from the system packages, through playwright; skip when there is none."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])"
    )
    executable = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium); .ci/run installs it")
    return sync_api, executable


WIDTHS = (390, 800, 1400)  # a phone, a small laptop window, a desktop


def watch(page) -> list[str]:
    """The console errors and warnings, page errors and failed requests of ``page``, as they happen."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    return problems


def render(page_file: Path, shots: Path | None = None) -> dict[int, dict[str, object]]:
    """Open the page in headless Chromium at each of WIDTHS; per width: console problems, the page's scroll
    width, every grid decoded, the step shown after moving the first slider to its start, and screenshots
    (the page, the loss plot, the first grid; also saved under ``shots``)."""
    sync_api, executable = browser()
    seen: dict[int, dict[str, object]] = {}
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            for width in WIDTHS:
                page = chromium.new_page(viewport={"width": width, "height": 900})
                problems = watch(page)
                page.goto(page_file.as_uri())
                page.wait_for_load_state("load")
                decoded = page.eval_on_selector_all(
                    "figure img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"
                )
                shots_at = {
                    "page": page.screenshot(full_page=True),
                    "plot": page.locator(".plot svg").first.screenshot(),
                    "grid": page.locator("figure img:not([hidden])").first.screenshot(),
                }
                slider = page.locator("figure.steps input").first
                slider.fill("0")
                seen[width] = {
                    "problems": problems,
                    "scroll_width": page.evaluate("document.documentElement.scrollWidth"),
                    "decoded": decoded,
                    "shots": shots_at,
                    "step_after_slide": page.locator("figure.steps .step").first.inner_text(),
                    "visible": page.eval_on_selector_all(
                        "figure.steps:first-of-type img", "imgs => imgs.map(i => !i.hidden)"
                    ),
                }
                if shots is not None:
                    (shots / f"report-{width}.png").write_bytes(shots_at["page"])
                page.close()
        finally:
            chromium.close()
    return seen


def test_every_run_writes_a_report_that_reads_in_a_browser_at_phone_laptop_and_desktop_widths(
    quickstart_runs: tuple[Path, Path],
) -> None:
    page_file = quickstart_runs[0] / "report.html"
    text = page_file.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)  # nothing loaded from the network
    for width, seen in render(page_file).items():
        assert seen["problems"] == [], width
        assert seen["scroll_width"] <= width, f"the page is wider than a {width} px screen"
        assert seen["decoded"] and all(seen["decoded"]), width  # every grid decoded
        assert seen["step_after_slide"] == "step 2" and seen["visible"] == [True, False], width
        for name, png in seen["shots"].items():  # type: ignore[union-attr]
            pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
            assert pixels.std() > 10, f"the {name} screenshot at {width} px is blank"
        # The plot has dark lines and text on white: a few percent of its pixels are ink.
        plot = np.asarray(Image.open(io.BytesIO(seen["shots"]["plot"])).convert("L"))  # type: ignore[index]
        assert 0.005 < (plot < 128).mean() < 0.5


def test_the_report_holds_the_verdict_graph_losses_grids_over_steps_and_the_yaml(
    quickstart_runs: tuple[Path, Path],
) -> None:
    text = (quickstart_runs[0] / "report.html").read_text()
    results = json.loads((quickstart_runs[0] / "results.json").read_text())
    assert results["teachers"] == {"t2i": "guided"} and results["bar"] == 0.95
    assert "<th>guided (serves t2i)</th>" in text and "<th>student</th>" in text
    [verdict] = results["verdicts"]
    assert f"{verdict['ratio']:.3f}x {'pass' if verdict['passed'] else 'FAIL'}" in text
    assert "t2i: accuracy ↑" in text
    assert "weights after the last update (no EMA" in text  # which weights were scored
    picture = text[text.index('<svg xmlns="http://www.w3.org/2000/svg" class="graph"') :]
    picture = picture[: picture.index("</svg>")]
    for name in ("sources", "operators", "routes", "mixture", "guided", "t2i", "student"):
        assert f">{name}<" in picture
    assert text.count('class="plot"') == 2  # one loss axis, then the training metrics that change:
    assert "<!-- grad_norm -->" in text and "<!-- lr -->" not in text  # a constant lr is a sentence
    assert "lr 0.001 throughout" in text
    assert text.count("data-step=") == 2 and 'data-step="2" hidden' in text and 'data-step="4">' in text
    assert "rows: teacher: guided / student; columns: 1 component " in text  # labels in the alt text
    assert "lr_schedule: constant" in text  # the graph, as YAML


def test_report_compares_runs_side_by_side_with_the_settings_that_differ(
    quickstart_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "compare.html"
    result = invoke("report", *map(str, quickstart_runs), "-o", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "comparison of constant, cosine" in text
    assert "<th>constant: student</th>" in text and "<th>cosine: student</th>" in text
    assert text.count("<th>guided (serves t2i)</th>") == 1  # the same teacher scores, shown once
    diff = text[text.index("Settings that differ") :]
    diff = diff[: diff.index("</table>")]
    rows = re.findall(r"<tr><td>([^<]+)</td>", diff)
    assert set(rows) == {"run.steps", "run.lr_schedule", "run.sample_every", "run.out"}
    assert '<div class="side">' in text and text.count('<figure class="steps">') == 2
    assert "Graph of cosine (YAML)" in text and "lr_schedule: cosine" in text


def test_report_of_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke("report", str(tmp_path), "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 2
    assert "not a run folder (no graph.json)" in result.output
    assert not (tmp_path / "r.html").exists()


def test_report_rewrites_a_report_but_never_a_users_file(
    quickstart_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    page = tmp_path / "page.html"
    for _ in range(2):  # a report fieldkit wrote is rewritten
        result = invoke("report", str(quickstart_runs[0]), "-o", str(page))
        assert result.exit_code == 0, result.output
    for name, text in (("existing.txt", "my notes\n"), ("index.html", "<!DOCTYPE html><title>mine</title>")):
        theirs = tmp_path / name
        theirs.write_text(text)
        refused = invoke("report", str(quickstart_runs[0]), "-o", str(theirs))
        assert refused.exit_code == 2, name
        assert "is not a report fieldkit wrote; nothing was written" in refused.output
        assert "choose another path" in refused.output and "Traceback" not in refused.output
        assert theirs.read_text() == text


def test_a_run_without_metrics_says_there_are_no_results(
    quickstart_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(quickstart_runs[0], bare)
    (bare / "results.json").unlink()
    shutil.rmtree(bare / "samples")
    assert invoke("report", str(bare)).exit_code == 0
    text = (bare / "report.html").read_text()
    assert "No route has metrics" in text and "No sample grids" in text
    assert "no verdict" in text


def test_labelled_grid_keeps_the_tiles_and_adds_ink_for_labels(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    rows = [torch.rand(3, 1, 4, 6, generator=g) * 2 - 1 for _ in range(2)]
    tiles = grid(rows).numpy()
    plain = np.asarray(labelled_grid(rows))
    np.testing.assert_array_equal(plain, tiles)  # no labels: the grid as it was
    image = np.asarray(labelled_grid(rows, ["teacher", "student"], ["a", "b", "c"]))
    left = image.shape[1] - tiles.shape[1]
    top = next(i for i in range(image.shape[0]) if (image[i, left:] == tiles[0]).all())
    np.testing.assert_array_equal(image[top : top + tiles.shape[0], left:], tiles)
    assert left > 0 and top > 0
    ink = np.abs(image.astype(int) - BACKGROUND).sum(-1) > 100
    assert ink[top:, :left].any()  # row names on the left
    assert ink[:top, left:].any()  # column numbers on top
    assert ink[top + tiles.shape[0] :].any()  # the captions below
    path = save_grid(rows, tmp_path / "g.png", row_labels=["teacher", "student"], captions=["a", "b", "c"])
    assert json.loads(path.with_suffix(".json").read_text()) == {
        "format": LABELS_FORMAT,
        "rows": ["teacher", "student"],
        "captions": ["a", "b", "c"],
    }
    with pytest.raises(ValueError, match="3 row labels for 2 rows"):
        labelled_grid(rows, ["a", "b", "c"])
