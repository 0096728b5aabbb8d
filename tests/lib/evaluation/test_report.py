"""The report page: sections that have nothing to show name the command that makes them; the browser check that
the report tests rely on fails on a broken image and on a chart that does not render."""

import base64

import altair as alt
import pandas as pd
import pytest

from agreemate_lib.evaluation.figures import save_chart
from agreemate_lib.evaluation.report import COMMANDS, build_report
from tests.browser import Browser, check_report_in_browser


def test_sections_without_inputs_name_the_command(tmp_path):
    path = build_report(tmp_path, pd.DataFrame(), pd.DataFrame(), published_dir=None, include_human=False)
    html = path.read_text()
    for title in ("The paper reproduced", "Our study", "Fine-tuning", "Probing", "Data quality", "Provenance"):
        assert f">{title}</h2>" in html, title
    for key in ("published", "study", "adapters", "probing", "quality"):
        assert COMMANDS[key].split("(")[0].strip().replace("'", "&#x27;") in html, key
    assert html.count('class="missing"') >= 5


def _page(tmp_path, images: list[bytes], chart_spec_edit=None):
    figs = tmp_path / "figures"
    chart = alt.Chart(pd.DataFrame({"x": [1, 2, 3], "y": [2, 1, 3]})).mark_line().encode(x="x:Q", y="y:Q")
    paths = save_chart(chart, figs, "line")
    if chart_spec_edit:
        paths["html"].write_text(chart_spec_edit(paths["html"].read_text()))
    imgs = "".join(f'<img alt="i{k}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                   for k, b in enumerate(images))
    report = tmp_path / "report.html"
    report.write_text(f'<!doctype html><html><body>{imgs}<a class="interactive" href="figures/line.html">i</a>'
                      '<div id="ca">filled by the page</div></body></html>')
    return report, paths["png"].read_bytes()


@pytest.mark.slow
def test_the_browser_check_fails_on_a_broken_image_or_chart(tmp_path):
    report, png = _page(tmp_path / "good", [])
    report, png = _page(tmp_path / "good", [png])
    with Browser() as browser:
        seen = check_report_in_browser(report, browser)
        assert seen["images"] == 1 and seen["charts"]["line.html"] > 0

        bad_image, _ = _page(tmp_path / "bad_image", [png, png[:40]])  # a truncated PNG
        with pytest.raises(AssertionError, match="images that did not load.*i1"):
            check_report_in_browser(bad_image, browser)

        # a spec Vega-Lite cannot compile: vega-embed's catch writes a console error
        bad_chart, _ = _page(tmp_path / "bad_chart", [png],
                             lambda s: s.replace('"mark": {"type": "line"}', '"mark": {"type": "no-such-mark"}'))
        assert "no-such-mark" in (tmp_path / "bad_chart" / "figures" / "line.html").read_text()
        with pytest.raises(AssertionError, match="line.html.*console: TypeError"):
            check_report_in_browser(bad_chart, browser)


def test_a_pair_that_failed_its_blocking_check_is_named_as_left_out(tmp_path):
    """The data-quality section names the pair whose transcripts failed the blocking check (it never reaches the
    metrics table) with the check, and counts blocking and warning failures apart."""
    from agreemate_lib.evaluation.report import ReportExtras

    quality = pd.DataFrame([
        {"partition": "a|b", "check": "transcripts_valid", "passed": False, "severity": "ERROR", "detail": ""},
        {"partition": "a|b", "check": "transcripts_behaviour", "passed": False, "severity": "WARN", "detail": ""},
        {"partition": "c|d", "check": "transcripts_valid", "passed": True, "severity": "ERROR", "detail": ""},
    ])
    html = build_report(tmp_path, pd.DataFrame(), pd.DataFrame(), include_human=False,
                        extras=ReportExtras(quality=quality)).read_text()
    assert "1 blocking (ERROR) and 1 warning (WARN) checks failed, of 3" in html
    assert "Pairs left out of the metrics" in html and "failed the blocking check transcripts_valid" in html
    assert "c|d" not in html.split("Pairs left out")[1]
