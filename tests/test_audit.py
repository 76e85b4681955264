"""`mmw2s audit`: a bootstrap run's decisions scored against the synthetic world's truth."""
from __future__ import annotations

import json

import pytest
import yaml

from mmw2s.data_pipelines import ShardEnd, iter_samples
from mmw2s.data_pipelines.world import SplitConfig, WorldConfig, generate_world
from mmw2s.audit import AuditConfig, attribute_counts, binary_metrics, run
from mmw2s.bootstrap.pipeline import Batch, Selection, decide_stage
from mmw2s.bootstrap.thresholds import Thresholds
from mmw2s.bootstrap.writer import ShardOutputs, write_stage

WRONG = "a small red circle"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(out=str(out), workers=1, samples_per_shard=30, clean=SplitConfig(0),
                               web=SplitConfig(60), test=SplitConfig(0)))
    return out


def oracle_run(world, folder, drop_key=None):
    """A bootstrap output whose 'filter' is an oracle: web kept iff correct; synthetic = [gold, WRONG]."""
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump({"input": str(world / "web")}))
    provenance = {"captioner": {"name": "oracle"}, "filter": {"name": "oracle", "mode": "itm"}, "seed": 0}
    stream = []
    for url in sorted(str(p) for p in (world / "web").glob("*.tar")):
        for s in iter_samples(url):
            truth = s["json"]["truth"]
            web = 0.9 if truth["noise_type"] == "correct" else 0.1
            gold = 0.1 if s["__key__"] == drop_key else 0.8
            stream.append(Batch(url, [s], synthetic=[[truth["gold_caption"], WRONG]], web_scores=[web],
                                synthetic_scores=[[gold, 0.2]]))
        stream.append(ShardEnd(url))
    decided = decide_stage(iter(stream), Thresholds("absolute", 0.5, 0.5), Selection(), provenance)
    with ShardOutputs(folder / "shards") as outputs:
        for _ in write_stage(decided, outputs):
            pass
    return folder


def test_oracle_filter_scores_perfectly_and_dropped_samples_count(world, tmp_path):
    keys = {s["__key__"]: s["json"]["truth"]["noise_type"] for s in iter_samples(str(world / "web"))}
    noisy = next(k for k, t in keys.items() if t != "correct")
    folder = oracle_run(world, tmp_path / "run", drop_key=noisy)
    result = run(AuditConfig(run=str(folder)))
    assert result["samples"] == 60 and result["not_written"] == 1 and result["written"] == 59
    web = result["web_filter"]
    assert web["overall"]["precision"] == 1.0 and web["overall"]["recall"] == 1.0
    assert web["per_noise_type"]["correct"]["kept_fraction"] == 1.0
    noise_types = {t for t in keys.values() if t != "correct"}
    for t in noise_types:
        assert web["per_noise_type"][t]["kept_fraction"] == 0.0
        assert web["per_noise_type"][t]["samples"] == sum(v == t for v in keys.values())
    syn = result["synthetic"]
    assert syn["all"]["captions"] == 2 * 59 and syn["all"]["exact_match"] == 0.5
    assert syn["kept"]["exact_match"] == 1.0 and syn["rejected"]["exact_match"] == 0.0
    assert syn["filter"]["precision"] == 1.0 and syn["kept"]["attributes"]["color"]["precision"] == 1.0
    assert result["chosen"]["chosen_correct"] == 1.0
    assert result["chosen"]["web_correct"] == pytest.approx(sum(v == "correct" for v in keys.values()) / 60, abs=1e-4)
    assert json.loads((folder / "audit.json").read_text())["samples"] == 60
    assert "| correct |" in (folder / "audit.md").read_text()
    assert (folder / "audit_web_scores.png").read_bytes()[:4] == b"\x89PNG"


def test_truth_may_name_more_shards_than_were_bootstrapped(world, tmp_path):
    folder = oracle_run(world, tmp_path / "run")
    (folder / "shards" / "00001.tar").unlink()
    result = run(AuditConfig(run=str(folder), truth=str(world / "web"), out=str(tmp_path / "report")))
    assert result["samples"] == 30 and result["not_written"] == 0
    assert (tmp_path / "report" / "audit.md").exists()


def test_audit_refuses_input_without_truth(tmp_path):
    from mmw2s.data_pipelines import ShardWriter

    with ShardWriter(tmp_path / "in" / "00000.tar") as w:
        w.write({"__key__": "a", "jpg": b"x", "txt": "t", "json": {"key": "a"}})
        w.close()
    with ShardWriter(tmp_path / "run" / "shards" / "00000.tar") as w:
        w.write({"__key__": "a", "jpg": b"x", "txt": "t", "json": {"key": "a", "mmw2s": {}}})
        w.close()
    with pytest.raises(ValueError, match="truth"):
        run(AuditConfig(run=str(tmp_path / "run"), truth=str(tmp_path / "in")))


def test_attribute_counts_match_distinct_values():
    scene = {"objects": [{"color": "red", "shape": "circle", "size": "small"},
                         {"color": "red", "shape": "square", "size": "large"}]}
    counts = attribute_counts("a red circle above a blue circle", scene)
    assert counts["color"] == (1, 2, 1)  # red is right, blue is wrong
    assert counts["shape"] == (1, 1, 2) and counts["size"] == (0, 0, 2)  # the square is missed


def test_binary_metrics_hand_case():
    m = binary_metrics([(True, True), (True, False), (False, True), (False, False)])
    assert (m["precision"], m["recall"], m["accuracy"]) == (0.5, 0.5, 0.5)
