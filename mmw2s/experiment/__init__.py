"""`mmw2s run`: an experiment as a plan of steps with explicit edges, run side by side and summarised.

- `settings.py` the experiment's keys (`ExperimentSettings`); `config.py` the config a run loads,
  checked (`ExperimentConfig`: the settings, then every stage section by planning it);
- `planner.py` what every plan is built with: `Step` (config, output folder, the folders it needs),
  `Planner`, the teachers' stages; `plan.py` the CapFilt plan, its sweep variants and run order;
  `llava_plan.py` the LLaVA plan;
- `scheduler.py` runs the steps, several at once where none needs another's output; `worker.py`
  runs one step in a worker process; `progress.py` the progress line; `run.py` the command itself;
- `summary.py`, `captioning.py` gather a run's results for its report (`mmw2s.report`);
  `display.py` draws the workers' output in the parent process.

Imports run one way: `run` -> `scheduler` -> `worker` -> `planner`, and
`config` -> `plan` -> `llava_plan` -> `planner` -> `settings`.
"""
