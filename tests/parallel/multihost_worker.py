"""One process of a multi-process training run, for tests/parallel/test_multihost.py.

    python tests/parallel/multihost_worker.py DATA_DIR WORKDIR [COORDINATOR NUM_PROCESSES PROCESS_ID]

Without the last three arguments it is a single-process run. Device counts come from XLA_FLAGS.
"""

import os
import sys


def main(argv):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  from mmjax import experiment
  from tests.conftest import small_config

  data_dir, workdir = argv[1:3]
  config = small_config(data_dir, num_steps=6, log_every=1, eval_every=6, checkpoint_every=3)
  config.mesh.update({"data": 2, "fsdp": -1, "model": 1})
  config.sharding.fsdp_min_size = 0
  if len(argv) > 3:
    config.distributed.update(
        {"enabled": True, "coordinator_address": argv[3], "num_processes": int(argv[4]), "process_id": int(argv[5])}
    )
  experiment.train(config, workdir)


if __name__ == "__main__":
  main(sys.argv)
