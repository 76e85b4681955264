"""`mmw2s browse` and `report.html`: pages built from a bootstrap run's records, checked in headless
Chromium (the rendered DOM: cards per filter, a sorted order, escaped captions) and on disk."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import threading
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mmw2s.data_pipelines import ShardEnd, ShardWriter, iter_samples
from mmw2s.data_pipelines.world import SplitConfig, WorldConfig, generate_world
from mmw2s.bootstrap.pipeline import Batch, Selection, decide_stage
from mmw2s.bootstrap.thresholds import Thresholds
from mmw2s.bootstrap.writer import ShardOutputs, write_stage
from mmw2s.browse import extract
from mmw2s.browse.config import BrowseConfig
from mmw2s.browse.site import build, stratified_sample
from mmw2s.cli import main

CHROMIUM = Path("/usr/bin/chromium")
EVIL = '<script>document.body.setAttribute("data-pwned", "1")</script><b class="evil">bold</b> & "q"'
EVIL_SYN = '<img class="evil" src="x" onerror="document.body.setAttribute(\'data-pwned\', \'2\')">'
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium not installed: apt-get install -y chromium "
                                  "(Debian's package; the browser tests open the pages in it)")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(out=str(out), workers=1, samples_per_shard=12, clean=SplitConfig(0),
                               web=SplitConfig(24), test=SplitConfig(0)))
    return out / "web"


def scores(i: int) -> tuple[float, list[float]]:
    """Web and synthetic scores of sample `i`: kept, dropped (synthetic chosen), nothing, in turn."""
    kind = i % 3
    web = [0.9, 0.2, 0.1][kind] + 0.001 * i  # distinct, so a sort has one right answer
    return web, [[0.3, 0.4], [0.8, 0.3], [0.2, 0.1]][kind]


def decided_run(world: Path, folder: Path) -> Path:
    """A bootstrap run written by the bootstrap's own decide and write stages, scores chosen here.

    Sample 0's web caption and sample 1's first synthetic caption are hostile HTML."""
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"input": str(world),
                                                        "selection": {"choose": "web_first", "nothing_kept": "flag"}}))
    provenance = {"captioner": {"name": "tiny-captioner", "decoding": {"method": "nucleus", "top_p": 0.9}},
                  "filter": {"name": "tiny-itm", "mode": "itm"}, "seed": 0}
    stream, i = [], 0
    for url in sorted(str(p) for p in world.glob("*.tar")):
        for s in iter_samples(url):
            s.pop("image")
            if i == 0:
                s["caption"] = EVIL
            web, syn = scores(i)
            captions = [EVIL_SYN if i == 1 else s["json"]["truth"]["gold_caption"], "a big blue square"]
            stream.append(Batch(url, [s], synthetic=[captions], web_scores=[web], synthetic_scores=[syn]))
            i += 1
        stream.append(ShardEnd(url))
    decided = decide_stage(iter(stream), Thresholds("absolute", 0.5, 0.5), Selection(nothing_kept="flag"), provenance)
    with ShardOutputs(folder / "shards") as outputs:
        for _ in write_stage(decided, outputs):
            pass
    return folder


@pytest.fixture(scope="module")
def site(world, tmp_path_factory):
    run = decided_run(world, tmp_path_factory.mktemp("b") / "run")
    index = build(BrowseConfig(run=str(run), page_size=5))
    return run, index


def truth_noise(world: Path) -> dict[str, str]:
    return {s["__key__"]: s["json"]["truth"]["noise_type"] for s in iter_samples(str(world))}


# --------------------------------------------------------------------------------------------
# Headless Chromium


class Cards(HTMLParser):
    """The cards of a dumped DOM in document order: attributes, hidden flag, caption texts."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict] = []
        self.evil_elements = 0
        self.body: dict = {}
        self._in_cap = 0
        self.counter: dict = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "body":
            self.body = a
        if "evil" in classes:
            self.evil_elements += 1
        if tag == "article" and "card" in classes:
            self.cards.append({**a, "hidden": "hidden" in a, "caps": []})
        if tag == "p" and "cap" in classes and self.cards:
            self._in_cap = 1
            self.cards[-1]["caps"].append("")
        if a.get("id") in ("matching", "page-of"):
            self.counter[a["id"]] = a

    def handle_endtag(self, tag):
        if tag == "p":
            self._in_cap = 0

    def handle_data(self, data):
        if self._in_cap:
            self.cards[-1]["caps"][-1] += data

    @property
    def visible(self) -> list[dict]:
        return [c for c in self.cards if not c["hidden"]]


def chromium(url: str, tmp_path: Path, *extra: str) -> str:
    args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--log-level=3", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra, url]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def dom(index: Path, hash_: str, tmp_path: Path) -> Cards:
    parser = Cards()
    parser.feed(chromium(index.as_uri() + hash_, tmp_path, "--dump-dom"))
    return parser


@needs_chromium
def test_filters_sort_and_paging_in_the_rendered_page(site, world, tmp_path):
    run, index = site
    everything = dom(index, "", tmp_path)
    assert len(everything.cards) == 24  # fewer samples than `samples`: all are on the index
    assert len(everything.visible) == 5 and everything.counter["page-of"]["data-page"] == "1"  # page_size=5
    for decision in ("kept", "dropped", "nothing"):
        page = dom(index, f"#decision={decision}", tmp_path)
        assert page.counter["matching"]["data-count"] == "8"
        assert {c["data-decision"] for c in page.visible} == {decision} and len(page.visible) == 5
    last = dom(index, "#decision=dropped&page=2", tmp_path)
    assert len(last.visible) == 3 and last.counter["page-of"]["data-page"] == "2"
    noise = truth_noise(world)
    wanted = max(set(noise.values()), key=list(noise.values()).count)
    by_noise = dom(index, f"#noise={wanted}", tmp_path)
    assert by_noise.counter["matching"]["data-count"] == str(sum(v == wanted for v in noise.values()))
    synthetic = dom(index, "#source=synthetic&sort=web-desc", tmp_path)
    web_scores = [float(c["data-web-score"]) for c in synthetic.visible]
    assert len(web_scores) == 5 and web_scores == sorted(web_scores, reverse=True)
    # the dropped samples (1, 4, 7, ...) have web scores 0.2 + 0.001 i: highest first is the last one
    assert synthetic.visible[0]["data-order"] == "22"
    ranged = dom(index, "#min=0.5&max=2&sort=web-asc", tmp_path)
    assert ranged.counter["matching"]["data-count"] == "8" and ranged.visible[0]["data-order"] == "0"


@needs_chromium
def test_hostile_captions_render_as_text(site, tmp_path):
    run, index = site
    page = dom(index, "#q=onerror", tmp_path)  # the search finds the hostile synthetic caption
    assert page.counter["matching"]["data-count"] == "1" and page.visible[0]["data-order"] == "1"
    assert EVIL_SYN in page.visible[0]["caps"]
    first = dom(index, "#decision=kept&sort=order", tmp_path)
    assert first.visible[0]["caps"][0] == EVIL  # the web caption, shown verbatim as text
    assert first.evil_elements == 0 and "data-pwned" not in first.body  # no element made, no script ran
    raw = index.read_text()
    assert "<script>document.body" not in raw and "&lt;script&gt;" in raw


@needs_chromium
def test_listing_pages_and_a_screenshot(site, tmp_path):
    run, index = site
    listing = index.parent / "pages" / "nothing" / "00002.html"
    page = dom(listing, "", tmp_path)
    assert len(page.cards) == 3 and {c["data-decision"] for c in page.cards} == {"nothing"}
    assert all(c["caps"][-1] for c in page.cards)  # the gold caption, marked evaluation-only
    assert "evaluation only" in listing.read_text()
    shot = tmp_path / "index.png"
    chromium(index.as_uri() + "#sort=web-asc", tmp_path, f"--screenshot={shot}", "--window-size=1280,900",
             "--hide-scrollbars")
    assert shot.exists() and Image.open(shot).size == (1280, 900)


# --------------------------------------------------------------------------------------------
# On disk


def data_uri_bytes(uri: str) -> bytes:
    head, data = uri.split(",", 1)
    assert head in ("data:image/jpeg;base64", "data:image/png;base64")
    return base64.b64decode(data)


def test_header_listings_and_thumbnails(site, world):
    run, index = site
    out = index.parent
    text = index.read_text()
    assert "tiny-captioner" in text and "top_p=0.9" in text and "tiny-itm" in text
    assert "threshold web" in text and "selection.nothing_kept" in text
    for decision in ("kept", "dropped", "nothing"):
        assert sorted(p.name for p in (out / "pages" / decision).glob("*.html")) == ["00001.html", "00002.html"]
    originals = [s["image_bytes"] for s in iter_samples(str(world))]
    caches = [json.loads(p.read_text()) for p in sorted((out / "cache").glob("*.json"))]
    thumbs = [data_uri_bytes(c["thumb"]) for record in caches for c in record["cards"]]
    assert thumbs == originals  # 64 px < thumb: the original bytes, never re-encoded
    assert text.count("data:image/jpeg;base64,") == 24


def test_audit_figures_in_the_header(site, tmp_path):
    from mmw2s.audit import AuditConfig
    from mmw2s.audit import run as audit

    run, _ = site
    audit(AuditConfig(run=str(run)))
    text = build(BrowseConfig(run=str(run), out=str(tmp_path / "b"), page_size=5)).read_text()
    result = json.loads((run / "audit.json").read_text())
    assert 'id="audit"' in text and "precision vs correct" in text and "audit_web_scores.png" in text
    for noise in result["web_filter"]["per_noise_type"]:
        assert f"<td>{noise}</td>" in text
    assert (tmp_path / "b" / "audit_web_scores.png").exists()


def test_large_images_are_resized_and_bad_ones_counted(tmp_path):
    run = tmp_path / "run"
    block = {"web_caption": "a cat", "web_score": 0.7, "web_kept": True, "synthetic": [], "chosen": "a cat",
             "chosen_source": "web", "chosen_score": 0.7, "nothing_kept": False}
    big = io.BytesIO()
    Image.new("RGB", (400, 300), "red").save(big, "PNG")
    with ShardWriter(run / "shards" / "00000.tar") as w:
        w.write({"__key__": "a", "png": big.getvalue(), "json": {"mmw2s": block}})
        w.write({"__key__": "b", "jpg": b"not a jpeg", "json": {"mmw2s": block}})
        w.write({"__key__": "c", "jpg": big.getvalue(), "json": {"caption": "no decision here"}})
        w.close()
    index = build(BrowseConfig(run=str(run), thumb=64))
    record = json.loads((index.parent / "cache" / "00000.json").read_text())
    good, bad = record["cards"]
    assert Image.open(io.BytesIO(data_uri_bytes(good["thumb"]))).size == (64, 48)
    assert bad["thumb"] is None and "cannot identify image" in bad["thumb_error"]
    assert record["skipped"] == {"no_decision": 1}
    assert "no thumbnail" in index.read_text()


def test_rebuild_reuses_thumbnails_of_unchanged_shards(site, tmp_path, monkeypatch):
    run, _ = site
    out = tmp_path / "site"
    build(BrowseConfig(run=str(run), out=str(out)))
    calls = []
    original = extract.extract_shard
    monkeypatch.setattr(extract, "extract_shard", lambda *a: calls.append(a) or original(*a))
    build(BrowseConfig(run=str(run), out=str(out), page_size=7))
    assert calls == []  # no shard read again
    assert len(list((out / "pages" / "kept").glob("*.html"))) == 2  # 8 kept at 7 a page; old pages gone
    build(BrowseConfig(run=str(run), out=str(out), thumb=32))  # another thumbnail size: extracted again
    assert len(calls) == 2


def test_index_sample_has_an_equal_share_per_decision():
    cards = [{"order": i, "decision": "kept" if i < 900 else "dropped" if i < 990 else "nothing"}
             for i in range(1000)]
    sample = stratified_sample(iter(cards), 60, seed=0)
    counts = {d: sum(c["decision"] == d for c in sample) for d in ("kept", "dropped", "nothing")}
    assert counts == {"kept": 25, "dropped": 25, "nothing": 10}
    assert [c["order"] for c in sample] == sorted(c["order"] for c in sample)
    assert sample == stratified_sample(iter(cards), 60, seed=0) != stratified_sample(iter(cards), 60, seed=1)


def test_command_line_and_serving(site, tmp_path, capsys):
    from mmw2s.browse.serve import make_server

    run, _ = site
    out = tmp_path / "cli"
    assert main(["browse", f"run={run}", f"out={out}", "samples=6"]) == 0
    assert f"Browser: {out / 'index.html'}" in capsys.readouterr().out
    assert (out / "index.html").read_text().count('<article class="card') == 6
    assert main(["browse", f"run={tmp_path}"]) == 1
    assert "no output shards" in capsys.readouterr().err
    server = make_server(out, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as resp:
            assert resp.status == 200 and b"mmw2s browse" in resp.read()
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------------
# report.html


def experiment_folder(run: Path, tmp_path: Path) -> tuple[Path, list]:
    """An experiment folder with a report.md (a table, a plot, hostile HTML, a sub-report link),
    and one variant whose seed 0 bootstrapped into `run`."""
    from types import SimpleNamespace as Step  # the fields of mmw2s.experiment.planner.Step it reads

    out = tmp_path / "exp"
    (out / "sweep" / "00-a").mkdir(parents=True)
    Image.new("RGB", (20, 10), "blue").save(out / "pgr.png")
    (out / "report.md").write_text("# Weak-to-strong report\n\n| model | acc |\n|---|---|\n| student | 42.0 |\n\n"
                                   "![PGR](pgr.png)\n\n<script>document.body.setAttribute('data-pwned', '3')</script>\n\n"
                                   "[value a](sweep/00-a/report.md) and ![outside](../secret.png)\n")
    (out / "sweep" / "00-a" / "report.md").write_text("# Sweep value a\n\nok\n")
    steps = {0: [Step(name="world", stage="world", out=tmp_path / "world"),
                 Step(name="bootstrap", stage="bootstrap", out=run)]}
    return out, [Step(value=None, steps_by_seed=steps)]


@needs_chromium
def test_report_html_has_inline_plots_escaped_text_and_browser_links(site, tmp_path):
    from mmw2s.report.html import write_experiment_html

    run = tmp_path / "run"  # a copy: the browser built here must not replace the shared one
    shutil.copytree(site[0], run, ignore=shutil.ignore_patterns("browse"))
    out, variants = experiment_folder(run, tmp_path)
    html_path = write_experiment_html(out / "report.md", variants)
    assert html_path == out / "report.html"
    text = html_path.read_text()
    assert "data:image/png;base64," in text and 'src="../secret.png"' in text  # only the report's own files
    assert "&lt;script&gt;" in text and "<script>" not in text
    assert 'href="sweep/00-a/report.html"' in (text) and (out / "sweep" / "00-a" / "report.html").exists()
    link = os.path.relpath(run / "browse" / "index.html", out)
    assert f'href="{link}"' in text and f"seed 0 · {run.name}" in text
    assert (run / "browse" / "index.html").exists()  # the browser the link points at was built
    page = Cards()
    page.feed(chromium(html_path.as_uri(), tmp_path, "--dump-dom"))
    assert "data-pwned" not in page.body
    rendered = chromium(html_path.as_uri(), tmp_path, "--dump-dom")
    assert "<td>student</td>" in rendered and "<td>42.0</td>" in rendered


def test_bench_row_builds_a_run_of_the_asked_size(tmp_path):
    from mmw2s.bench.browse import bench_browse
    from mmw2s.bench.config import BenchConfig
    from mmw2s.bench.fixtures import make_world
    from mmw2s.config import load_config

    cfg = load_config(BenchConfig, None, [f"out={tmp_path}", "world.samples_per_shard=4", "world.web_shards=2",
                                          "world.test_samples=4", "world.image_size=64", "browse.samples=60",
                                          "browse.samples_per_shard=25", "browse.index_samples=12",
                                          "browse.repeats=1", "memory.large_shards=2", "bootstrap.shards=2",
                                          "caption_vlm.shards=2"])
    row = bench_browse(cfg, make_world(cfg))
    assert row["name"] == "browse" and row["better"] == "lower" and row["target"] == 2.0
    assert row["ours"] > 0 and row["theirs"] > 0 and row["ratio"] > 0  # (ratio of the unrounded times)
    assert row["details"]["shards"] == 3 and row["details"]["pages"] == 1 + 3  # index + one page per decision
    site = tmp_path / "runs" / "browse_site"
    assert (site / "index.html").read_text().count('<article class="card') == 12
    assert sum(len(json.loads(p.read_text())["cards"]) for p in (site / "cache").glob("*.json")) == 60


def test_worker_processes_build_the_same_site(site, tmp_path):
    run, _ = site
    one = build(BrowseConfig(run=str(run), out=str(tmp_path / "one"), page_size=5))
    two = build(BrowseConfig(run=str(run), out=str(tmp_path / "two"), page_size=5, workers=2))
    assert one.read_text() == two.read_text()
    listing = Path("pages") / "dropped" / "00002.html"
    assert (one.parent / listing).read_text() == (two.parent / listing).read_text()
