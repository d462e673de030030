"""A training process that SIGKILLs itself at a chosen point, for tests/train/test_crash_recovery.py.

    python tests/train/crash_worker.py DATA_DIR WORKDIR KILL_POINT

KILL_POINT is ``none`` or ``<where>:<step>`` with <where> one of:
  after_step        right after the step's update is computed, before anything is saved
  metrics_write     half-way through writing the step's line of metrics.jsonl
  evaluate          during the step's evaluation
  checkpoint_write  half-way through writing the step's checkpoint (a file written in part)

The kill is a real SIGKILL of this process: no handler, no cleanup, no flush.
"""

import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kill():
  os.kill(os.getpid(), signal.SIGKILL)


def install(where: str, at: int) -> None:
  import jax
  from orbax.checkpoint._src.handlers import json_checkpoint_handler

  from mmjax.train import checkpoints, loop, metric_writers

  if where == "after_step":
    original_step = loop.Trainer.train_step

    def train_step(self, state, batch):
      state, metrics = original_step(self, state, batch)
      if int(jax.device_get(state.step)) == at:
        jax.block_until_ready(state)
        kill()
      return state, metrics

    loop.Trainer.train_step = train_step

  elif where == "evaluate":
    original_evaluate = loop.Trainer.evaluate

    def evaluate(self, state):
      if int(jax.device_get(state.step)) == at:
        kill()
      return original_evaluate(self, state)

    loop.Trainer.evaluate = evaluate

  elif where == "metrics_write":
    original_write = metric_writers.MetricWriter.write

    def write(self, step, metrics):
      if step == at:
        self._file.write('{"step": %d, "loss": 1.2' % step)  # cut short, no newline
        self._file.flush()
        kill()
      return original_write(self, step, metrics)

    metric_writers.MetricWriter.write = write

  elif where == "checkpoint_write":
    original_save = checkpoints.Checkpointer.save
    saving = {"step": None}

    def save(self, step, state, data_state, force=False):
      if force or self._manager.should_save(step):
        saving["step"] = step  # read by the asynchronous write below
      return original_save(self, step, state, data_state, force)

    checkpoints.Checkpointer.save = save
    original_json = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def save_json(self, x, directory):
      if saving["step"] == at:
        (directory / "metadata").write_text('{"partial": ')
        kill()
      return await original_json(self, x, directory)

    json_checkpoint_handler.JsonCheckpointHandler._save_fn = save_json
  else:
    raise ValueError(f"unknown kill point {where!r}")


def main(argv):
  sys.path.insert(0, ROOT)
  from mmjax import experiment
  from tests.conftest import small_config

  data_dir, workdir, kill_point = argv[1:4]
  if kill_point != "none":
    where, at = kill_point.split(":")
    install(where, int(at))
  config = small_config(data_dir, num_steps=12, log_every=1, eval_every=6, checkpoint_every=4, keep_checkpoints=1)
  experiment.train(config, workdir)


if __name__ == "__main__":
  main(sys.argv)
