"""The training data stream: shards -> (caption, weight) -> shuffled -> tensor batches, forever.

- Ranks: shards are shuffled once with the run's seed and dealt `urls[rank::world]`; with fewer
  shards than ranks every rank reads every shard and keeps samples `position % world == rank`.
  Each rank cycles its shards forever and the loop counts optimizer steps, so every rank runs
  exactly `steps` steps whatever the shard sizes (no rank runs dry and hangs the others).
- Workers: `event_pipeline` deals whole shards to DataLoader workers; captions are chosen, samples
  shuffled in a small buffer, images turned into tensors and (clip) captions tokenized inside the
  workers, so the training thread only trains: on a few CPU cores every millisecond of per-batch
  work in the training process adds to the step. The shuffle and
  the `mix` draws use a `random.Random` seeded from (seed, rank, worker); image augmentations are
  seeded per batch. The stream is therefore a pure function of (seed, rank, worker, batch index).
- Resume: the DataLoader takes batches from its `N` workers round-robin, always starting with
  worker 0, so batch `j` of the stream is batch `j // N` of worker `j % N`. After `consumed`
  batches, a resumed worker replays its stream from the start and drops its first
  `consumed // N` batches before turning any image into a tensor, and the loader drops the
  `consumed % N` batches that complete the last round: the data continue exactly where the
  checkpoint left off, at the cost of re-reading (not re-processing) the consumed samples.
- Skipped samples (corrupt, no caption, no text for the chosen source, or anything else that
  fails on one sample's bytes) and finished or damaged shards are counted in the workers and ride
  along with the next batch (`batch["events"]`, the first skips named by shard and key), so the
  main process counts them exactly once; they never stop the run. A run whose shards give no
  usable sample at all stops with a clear error instead of spinning.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from mmw2s.data_pipelines import ReadLimits, ShardEnd, Skip, clip_text, event_loader, expand_urls
from mmw2s.train.texts import TextSelector
from mmw2s.errors import StageError

ImagesToTensor = Callable[[list[Image.Image]], torch.Tensor]  # list of B PIL -> (B, 3, H, W)
LISTED_SKIPS = 100  # skipped samples named (shard, key, reason) in the stats; the rest only counted


@dataclass
class DataStats:
    """What the stream skipped and read, summed over batches (and ranks, after `merge`)."""

    samples: int = 0
    skipped: Counter = field(default_factory=Counter)
    shards_read: int = 0
    damaged: list[str] = field(default_factory=list)
    skipped_samples: list[dict] = field(default_factory=list)  # the first LISTED_SKIPS

    def add(self, events: dict) -> None:
        """Count the `events` that rode along with one batch."""
        self.skipped.update(events.get("skipped", {}))
        room = LISTED_SKIPS - len(self.skipped_samples)
        self.skipped_samples.extend(events.get("skipped_samples", [])[:max(room, 0)])
        self.shards_read += events.get("shards", 0)
        # a damaged shard shows up again on every pass over the data; name it once
        self.damaged.extend(u for u in events.get("damaged", []) if u not in self.damaged)

    def to_dict(self) -> dict:
        """Plain data for `trainer_state.json`."""
        return {"samples": self.samples, "skipped": dict(self.skipped),
                "shards_read": self.shards_read, "damaged": sorted(set(self.damaged)),
                "skipped_samples": list(self.skipped_samples)}

    @classmethod
    def from_dict(cls, data: dict) -> "DataStats":
        """The inverse of `to_dict` (a resumed run keeps counting from the checkpoint)."""
        return cls(data.get("samples", 0), Counter(data.get("skipped", {})),
                   data.get("shards_read", 0), list(data.get("damaged", [])),
                   list(data.get("skipped_samples", [])))


def rank_shards(urls: list[str], rank: int, world: int,
                seed: int) -> tuple[list[str], Optional[tuple[int, int]]]:
    """This rank's shards, and `(rank, world)` when samples must be split instead of shards.

    The deal is webdataset's `split_by_node` (`islice(urls, rank, None, world)`), done here rather
    than as its pipeline stage: `split_by_node` reads the rank from `torch.distributed` or RANK /
    WORLD_SIZE instead of taking ours, and deals lazily inside the workers, while this rank's shard
    count is needed before they start (the worker count, the empty-stream guard), and with fewer
    shards than ranks the split is by sample (`_split_samples`), which webdataset has no stage for.
    """
    urls = list(urls)
    # The same order on every rank: the same seed. (`wds.SimpleShardList(urls, seed=seed)` shuffles
    # the same way today; the standard library keeps that order whatever webdataset's version.)
    random.Random(seed).shuffle(urls)
    if world == 1:
        return urls, None
    if len(urls) >= world:
        return urls[rank::world], None
    return urls, (rank, world)


class TrainStream:
    """The event_pipeline stage that turns one worker's shard events into training batches."""

    def __init__(self, select: TextSelector, to_tensor: ImagesToTensor, batch_size: int,
                 seed: int, rank: int, sample_split: Optional[tuple[int, int]] = None,
                 shuffle_buffer: int = 256, consumed: int = 0, num_shards: int = 1,
                 tokenize: Optional[Callable[[list[str]], torch.Tensor]] = None) -> None:
        self.select, self.to_tensor, self.batch_size = select, to_tensor, batch_size
        self.tokenize = tokenize  # texts -> (B, L) token ids, when the task has a tokenizer
        self.seed, self.rank, self.sample_split = seed, rank, sample_split
        self.shuffle_buffer, self.consumed, self.num_shards = shuffle_buffer, consumed, num_shards

    def __call__(self, src: Iterable) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = random.Random(f"mmw2s-train/{self.seed}/{self.rank}/{worker}")
        stream: Iterable = src
        if self.sample_split is not None:
            stream = _split_samples(stream, *self.sample_split)
        # after the text choice: shards whose samples all lack usable text must not spin either
        stream = _guard_empty(_select(stream, self.select, rng), self.num_shards)
        stream = _shuffle(stream, rng, self.shuffle_buffer)
        yield from self._batches(stream, self.consumed // workers, worker)

    def _batches(self, stream: Iterable, skip: int, worker: int) -> Iterator[dict]:
        samples: list[dict] = []
        events = _new_events()
        index = 0  # this worker's batch index, counting skipped batches
        for item in stream:
            if isinstance(item, Skip):
                events["skipped"][item.reason] += 1
                if len(events["skipped_samples"]) < LISTED_SKIPS:
                    events["skipped_samples"].append({"shard": item.url, "key": clip_text(item.key),
                                                      "reason": item.reason, "detail": clip_text(item.detail)})
            elif isinstance(item, ShardEnd):
                events["shards"] += 1
                if item.damaged:
                    events["damaged"].append(item.url)
            else:
                samples.append(item)
            if len(samples) < self.batch_size:
                continue
            if index >= skip:
                yield self._collate(samples, events, index, worker)
            # A replayed batch is dropped with its events: the checkpoint already counted them.
            samples, events, index = [], _new_events(), index + 1

    def _collate(self, samples: list[dict], events: dict, index: int, worker: int) -> dict:
        # Seed augmentations by batch, so a replayed stream gets the same crops; fork_rng keeps
        # the caller's RNG untouched when this runs in the main process (workers=0).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash_seed(self.seed, self.rank, worker, index))
            pixels = self.to_tensor([s["image"] for s in samples])  # (B, 3, H, W)
        texts = [s["text"] for s in samples]
        batch = {"pixel_values": pixels, "texts": texts,
                 "weights": torch.tensor([s["weight"] for s in samples], dtype=torch.float32),
                 "keys": [s["__key__"] for s in samples],
                 "events": {"skipped": dict(events["skipped"]), "shards": events["shards"],
                            "damaged": events["damaged"], "skipped_samples": events["skipped_samples"]}}
        if self.tokenize is not None:  # here, in a worker, rather than on the training thread
            batch["tokens"] = self.tokenize(texts)  # (B, L)
        return batch


def hash_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's `hash` of a tuple varies across runs)."""
    return random.Random("/".join(map(str, parts))).getrandbits(63)


def _new_events() -> dict:
    return {"skipped": Counter(), "shards": 0, "damaged": [], "skipped_samples": []}


def _guard_empty(src: Iterable, num_shards: int) -> Iterator:
    """Pass events through; fail clearly when whole cycles of shards yield no usable sample at all
    (unreadable, or without text for the chosen source), instead of reading them forever."""
    empty_ends, usable = 0, 0
    for item in src:
        if isinstance(item, ShardEnd):
            empty_ends = empty_ends + 1 if usable == 0 else 0
            usable = 0
            if empty_ends > max(2 * num_shards, 2):
                raise StageError(
                    f"no readable samples with usable text in {empty_ends} shards in a row (last: "
                    f"{item.url}, damage: {item.damaged}, skipped: {item.skipped}); check the training shards")
        elif not isinstance(item, Skip):
            usable += 1
        yield item


def _split_samples(src: Iterable, rank: int, world: int) -> Iterator:
    """Keep every `world`-th sample of each shard, starting at `rank` (fewer shards than ranks)."""
    position = 0
    for item in src:
        if isinstance(item, ShardEnd):
            position = 0
        elif not isinstance(item, Skip):
            position += 1
            if (position - 1) % world != rank:
                continue
        yield item


def _select(src: Iterable, select: TextSelector, rng: random.Random) -> Iterator:
    """Attach `text` and `weight`; a sample without usable text becomes a `no_text` Skip."""
    for item in src:
        if isinstance(item, (Skip, ShardEnd)):
            yield item
            continue
        try:
            chosen = select(item, rng)
        except Exception as exn:  # noqa: BLE001 - a sample's odd JSON is that sample's skip reason
            yield Skip(item["__url__"], item["__key__"], "text_error", clip_text(f"{type(exn).__name__}: {exn}"))
            continue
        if chosen is None:
            yield Skip(item["__url__"], item["__key__"], "no_text")
            continue
        yield {"__key__": item["__key__"], "image": item["image"],
               "text": chosen[0], "weight": chosen[1]}


def _shuffle(src: Iterable, rng: random.Random, bufsize: int) -> Iterator:
    """Shuffle samples in a buffer of `bufsize` (events pass straight through).

    Not webdataset's `shuffle(bufsize, initial=bufsize, rng=rng)`, although it draws the same for a
    stream of samples alone (`randint(0, n - 1)` is `randrange(n)`, and the pick is swapped with
    the last): its buffer would also hold the `Skip` / `ShardEnd` events, which must reach the
    batch being filled when they happen (counted with it, dropped with it on resume), and each
    event in the buffer would shift which draw picks which sample, so the samples' order, and so
    every output byte, would change. It also spends a draw per item at `bufsize=1` (the same `rng`
    draws the `mix` captions) and empties its buffer in another order at the end of a stream.
    """
    buffer: list = []
    for item in src:
        if isinstance(item, (Skip, ShardEnd)) or bufsize <= 1:
            yield item
            continue
        buffer.append(item)
        if len(buffer) >= bufsize:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class TrainLoader:
    """An endless iterable of one rank's training batches, resumable after `consumed` batches."""

    def __init__(self, loader: DataLoader, drop: int) -> None:
        self.loader, self.drop = loader, drop

    def __iter__(self) -> Iterator[dict]:
        return itertools.islice(iter(self.loader), self.drop, None)


def make_loader(spec: str, select: TextSelector, to_tensor: ImagesToTensor, *, batch_size: int,
                workers: int, seed: int, rank: int, world: int, consumed: int = 0,
                shuffle_buffer: int = 256, tokenize: Optional[Callable[[list[str]], torch.Tensor]] = None,
                replay_mb: int = 0,
                **loader_options: Any) -> TrainLoader:
    """This rank's endless training batches, continuing after `consumed` batches.

    With `tokenize`, batches also carry `tokens` (B, L), made in the workers. `loader_options` go to
    the DataLoader (`pin_memory`, `persistent_workers`, `prefetch_factor`; `loader_settings` makes
    them from the config).
    """
    urls, sample_split = rank_shards(expand_urls(spec), rank, world, seed)
    workers = min(workers, len(urls))  # a worker without a shard of its own would duplicate one
    # Each worker drops consumed // N batches itself; the loader drops the rest of the last round.
    stream = TrainStream(select, to_tensor, batch_size, seed, rank, sample_split,
                         shuffle_buffer, consumed, num_shards=len(urls), tokenize=tokenize)
    # A sample without a caption member is still usable when the text comes from its JSON.
    limits = ReadLimits(require_caption=select.cfg.source == "txt")
    options = {"prefetch_factor": 4, **loader_options}
    loader = event_loader(urls, limits, stages=[stream], repeat=True, workers=workers,
                          replay_bytes=replay_mb << 20, **options)
    return TrainLoader(loader, consumed % max(workers, 1))


def loader_settings(prefetch_factor: int, pin_memory: Optional[bool], persistent_workers: bool,
                    device: torch.device) -> dict:
    """The DataLoader options that keep an accelerator fed.

    Pinned (page-locked) batches let the host-to-GPU copy run asynchronously (`non_blocking`);
    on CPU pinning is only a wasted copy, so `pin_memory=None` means "on with CUDA".
    """
    pin = device.type == "cuda" if pin_memory is None else pin_memory
    return {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers,
            "pin_memory": pin and torch.cuda.is_available()}


class TokenCache:
    """`tokenize` with a memory of the texts it has seen: a caption comes back once per pass over
    the data (a demo student makes ~6 passes), and open_clip's tokenizer (ftfy, regexes and BPE
    per text) cost ~10% of a data worker's time. Same ids as `tokenize` row for row."""

    def __init__(self, tokenize: Callable[[list[str]], torch.Tensor], max_texts: int = 200_000) -> None:
        self.tokenize, self.max_texts = tokenize, max_texts
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.rows]
        fresh = dict(zip(new, self.tokenize(new))) if new else {}  # (len(new), L) rows
        for text, row in fresh.items():
            if len(self.rows) >= self.max_texts:
                break  # a web-scale stream rarely repeats a caption: stop remembering, keep working
            self.rows[text] = row
        return torch.stack([self.rows[t] if t in self.rows else fresh[t] for t in texts])  # (B, L)


class BatchedToTensor:
    """A torchvision `Compose` applied to a batch: its per-image steps image by image, then its
    trailing to-tensor + `Normalize` steps once on the stacked batch.

    Same values as `torch.stack([transform(im) for im in images])` (the same float operations in
    the same order, checked bit-equal in the tests), but the two tail steps cost ~70% of the
    per-image transform time when done one image at a time; on 2 CPU cores the data-loader
    worker competes with training for the same cores, so its time adds to every step.
    A transform of any other shape is applied image by image, as before.
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.transform = transform
        self.head, self.mean, self.std = _split_tensor_tail(transform)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        if self.head is None:
            return torch.stack([self.transform(im) for im in images])
        arrays = [np.asarray(self.head(im)) for im in images]
        if len({a.shape for a in arrays}) != 1 or arrays[0].dtype != np.uint8 or arrays[0].ndim != 3:
            return torch.stack([self.transform(im) for im in images])  # not plain same-size RGB
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W) uint8
        pixels = pixels.to(dtype=torch.get_default_dtype()).div(255)
        return pixels.sub(self.mean).div(self.std)  # (B, C, H, W)


def _split_tensor_tail(transform: Any) -> tuple[Optional[Callable], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """`(per-image head, mean, std)` of a Compose ending in ToTensor + Normalize, else Nones."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or type(steps[-1]) is not T.Normalize or not isinstance(steps[-2], T.ToTensor):
        return None, None, None
    normalize = steps[-1]
    mean = torch.as_tensor(normalize.mean, dtype=torch.get_default_dtype()).view(1, -1, 1, 1)
    std = torch.as_tensor(normalize.std, dtype=torch.get_default_dtype()).view(1, -1, 1, 1)
    return T.Compose(steps[:-2]), mean, std
