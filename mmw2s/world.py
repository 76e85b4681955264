"""`mmw2s world`: generate the synthetic web world, with a progress bar and a preview sheet."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from mmw2s.console import progress_bar, running_stage

from mmw2s.data_pipelines import iter_samples, write_json_atomic
from mmw2s.data_pipelines.world import WorldConfig, generate_world
from mmw2s.config import save_config

log = logging.getLogger(__name__)
PREVIEW_SAMPLES = 16


def run(cfg: WorldConfig) -> dict:
    """Write the world's three splits under `cfg.out`, its config, summary and a preview PNG."""
    out = Path(cfg.out)
    save_config(cfg, out)
    total = cfg.clean.samples + cfg.web.samples + cfg.test.samples
    with progress_bar(total=total, desc="world", unit="img", dynamic_ncols=True) as bar:
        summary = generate_world(cfg, progress=bar.update)
    write_json_atomic(out / "summary.json", summary)
    preview = write_preview(out / "web", out / "preview.png")
    print_summary(cfg, summary, preview)
    return summary


def write_preview(split_dir: Path, path: Path, n: int = PREVIEW_SAMPLES) -> Path | None:
    """A contact sheet of the first web samples with their alt-text and noise type."""
    samples = []
    if not any(split_dir.glob("*.tar")):
        return None
    for sample in iter_samples(str(split_dir)):
        samples.append(sample)
        if len(samples) == n:
            break
    if not samples:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = (len(samples) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 3.4))
    for ax in axes.flat:
        ax.axis("off")
    for ax, sample in zip(axes.flat, samples):
        truth = sample["json"].get("truth", {})
        ax.imshow(sample["image"])
        ax.set_title(f"{_wrap(sample['caption'])}\n[{truth.get('noise_type', '?')}]", fontsize=7)
    fig.suptitle("web split: image, alt-text, [noise type]", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 38) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:3])


def print_summary(cfg: WorldConfig, summary: dict, preview: Path | None) -> None:
    """Tell the user where the world is and how to look at it."""
    out = Path(cfg.out)
    print(f"\nSynthetic web world written to {out}/ ({summary['images_per_s']} images/s)")
    for split in cfg.splits():
        info = summary[split]
        print(f"  {split:<5} {info['samples']:>6} samples in {info['shards']} shard(s): {info['path']}/")
    web_noise = {k: v for k, v in summary["web"]["noise_types"].items() if v}
    print(f"  web alt-text noise types: {json.dumps(web_noise)}")
    if running_stage():  # inside `mmw2s run`: its report is where to look
        return
    first = sorted((out / "web").glob("*.tar"))
    print("How to look at it:")
    if preview:
        print(f"  open {preview}                # 16 web samples with alt-text and noise type")
    if first:
        print(f"  tar tvf {first[0]} | head       # img2dataset layout: .jpg .txt .json")
    print(f"  cat {out / 'web' / '00000_stats.json'}")
