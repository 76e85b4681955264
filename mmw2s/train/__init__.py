"""`mmw2s train`: captioners (LM loss) and CLIP students (contrastive) on shards, with accelerate.

    from mmw2s.train import TrainConfig, run, loss_history
    final = run(TrainConfig(data="runs/world/clean", out="runs/weak_clip", task="clip", steps=500))

Module map: `config` (schema), `texts` (which caption), `data` (shards -> batches, rank split,
resume), `tasks` (captioner / dual-encoder adapters), `loop` (accelerate loop), `checkpoint`
(atomic checkpoints, resume), `metrics` (JSONL, TensorBoard, loss plot).
Only `config` is imported here eagerly: `mmw2s --help` reads the schema without torch.
"""
from mmw2s.train.config import LossConfig, TextConfig, TrainConfig

__all__ = ["LossConfig", "TextConfig", "TrainConfig", "TrainingDiverged", "loss_history", "run"]


def __getattr__(name: str):
    # The runner pulls in torch, accelerate and the models: import it only when asked for.
    if name in ("run", "TrainingDiverged"):
        from mmw2s.train import loop

        return getattr(loop, name)
    if name == "loss_history":
        from mmw2s.train.metrics import loss_history

        return loss_history
    raise AttributeError(name)
