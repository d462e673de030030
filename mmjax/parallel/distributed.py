"""Multi-process (multi-host) runs: start-up from config or environment, host-side gathers.

Every process runs the same program. `initialize` connects them through
`jax.distributed.initialize` before JAX touches a device; afterwards `jax.devices()` lists the
devices of all processes, the mesh spans them, each process feeds its own rows of every global
batch, Orbax writes checkpoints collectively and only process 0 writes logs.

Settings come from the ``distributed`` config section, each overridable by an environment
variable (what a cluster launcher sets), else JAX's own cluster detection (Cloud TPU, SLURM, Open
MPI) fills them in:

======================  ==============================  ====================================
config field            environment variable            meaning
======================  ==============================  ====================================
``enabled``             ``MMJAX_DISTRIBUTED=1``         initialise at all
``coordinator_address`` ``MMJAX_COORDINATOR_ADDRESS``   ``host:port`` of process 0
``num_processes``       ``MMJAX_NUM_PROCESSES``         number of processes
``process_id``          ``MMJAX_PROCESS_ID``            this process's index
======================  ==============================  ====================================
"""

import os
import sys
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmjax.schema import Field

CONFIG_SCHEMA = {
    "enabled": Field(bool),
    "coordinator_address": Field(str),
    "num_processes": Field(int, low=0),
    "process_id": Field(int, low=-1),
    "cpu_collectives": Field(str, choices=("gloo", "mpi")),
}


def settings(config) -> dict[str, Any] | None:
  """The arguments for `jax.distributed.initialize`, or None for a single-process run.

  Unset values (empty address, 0 processes, process id -1) are left for JAX to detect.
  """
  enabled = config.enabled or os.environ.get("MMJAX_DISTRIBUTED", "") == "1"
  address = os.environ.get("MMJAX_COORDINATOR_ADDRESS") or config.coordinator_address
  num_processes = int(os.environ.get("MMJAX_NUM_PROCESSES") or config.num_processes)
  process_id = int(os.environ.get("MMJAX_PROCESS_ID") or config.process_id)
  if not (enabled or address):
    return None
  return {
      "coordinator_address": address or None,
      "num_processes": num_processes or None,
      "process_id": process_id if process_id >= 0 else None,
  }


def initialize(config) -> bool:
  """Joins the other processes of the run if the config or environment asks for it.

  Must run before anything queries JAX's devices. Returns whether this is a multi-process run.
  """
  arguments = settings(config)
  if arguments is None:
    return False
  if not jax.distributed.is_initialized():
    # Collectives between CPU devices of different processes need an implementation; GPUs and
    # TPUs bring their own and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    jax.distributed.initialize(**arguments)
    # One line per process: the first thing to check when a launch hangs or runs alone.
    print(
        f"mmjax: process {jax.process_index()} of {jax.process_count()} joined the run "
        f"({jax.local_device_count()} of {jax.device_count()} devices here)",
        file=sys.stderr,
    )
  return True


def to_host(tree: Any) -> Any:
  """NumPy copies of (possibly sharded, possibly multi-process) global arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
