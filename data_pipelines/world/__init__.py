"""The synthetic web world: the embedded default data set of mmw2s.

Scenes of 1-3 coloured shapes are rendered with a known truth, and the ``web`` split gets alt-text
from a noise model with a recorded noise type per sample, so the framework can measure what web
data never allows (filter precision and recall per noise type, caption accuracy).

    from mmw2s.data_pipelines.world import WorldConfig, generate_world
    summary = generate_world(WorldConfig(out="runs/world", seed=0))

Module map: ``vocab`` (names), ``spec`` (config), ``scene`` (scenes and gold captions), ``render``
(pixels), ``noise`` (web alt-text), ``generate`` (shards).
"""

from mmw2s.data_pipelines.world.generate import generate_world, shard_samples, shard_tasks
from mmw2s.data_pipelines.world.noise import web_caption
from mmw2s.data_pipelines.world.render import encode_jpeg, render_scene
from mmw2s.data_pipelines.world.scene import gold_caption, sample_scene
from mmw2s.data_pipelines.world.spec import BiasConfig, NoiseConfig, SplitConfig, WorldConfig
from mmw2s.data_pipelines.world.vocab import COLORS, NOISE_TYPES, POSITIONS, RELATIONS, SHAPES, SIZES

__all__ = [
    "BiasConfig", "COLORS", "NOISE_TYPES", "NoiseConfig", "POSITIONS", "RELATIONS", "SHAPES", "SIZES",
    "SplitConfig", "WorldConfig", "encode_jpeg", "generate_world", "gold_caption", "render_scene",
    "sample_scene", "shard_samples", "shard_tasks", "web_caption",
]
