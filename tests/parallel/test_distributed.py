"""The ``distributed`` config section and the MMJAX_* variables that start a multi-process run."""

import jax
import ml_collections
import pytest

from mmjax.parallel import distributed

VARIABLES = ("MMJAX_DISTRIBUTED", "MMJAX_COORDINATOR_ADDRESS", "MMJAX_NUM_PROCESSES", "MMJAX_PROCESS_ID")


def _section(**overrides):
  section = dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1, cpu_collectives="gloo")
  return ml_collections.ConfigDict({**section, **overrides})


@pytest.fixture
def environment(monkeypatch):
  for name in VARIABLES:
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


def test_no_section_and_no_variables_is_a_single_process_run(environment):
  assert distributed.settings(_section()) is None


def test_the_variables_alone_start_a_multi_process_run(environment):
  environment.setenv("MMJAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  environment.setenv("MMJAX_NUM_PROCESSES", "4")
  environment.setenv("MMJAX_PROCESS_ID", "3")
  assert distributed.settings(_section()) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}


def test_mmjax_distributed_leaves_the_rest_to_jax_detection(environment):
  environment.setenv("MMJAX_DISTRIBUTED", "1")
  assert distributed.settings(_section()) == {"coordinator_address": None, "num_processes": None, "process_id": None}
  environment.setenv("MMJAX_DISTRIBUTED", "0")
  assert distributed.settings(_section()) is None


def test_variables_override_the_config(environment):
  environment.setenv("MMJAX_NUM_PROCESSES", "8")
  environment.setenv("MMJAX_PROCESS_ID", "0")  # process 0 is a real id, not "unset"
  config = _section(enabled=True, coordinator_address="host:1", num_processes=2, process_id=1)
  assert distributed.settings(config) == {"coordinator_address": "host:1", "num_processes": 8, "process_id": 0}


def test_initialize_passes_the_settings_to_jax_once(environment):
  calls = []
  environment.setattr(jax.distributed, "is_initialized", lambda: bool(calls))
  environment.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  environment.setattr(jax.config, "update", lambda *args: calls.append(args))
  assert not distributed.initialize(_section())
  assert calls == []
  environment.setenv("MMJAX_COORDINATOR_ADDRESS", "h:9")
  environment.setenv("MMJAX_NUM_PROCESSES", "2")
  environment.setenv("MMJAX_PROCESS_ID", "1")
  assert distributed.initialize(_section(cpu_collectives="mpi"))
  assert calls == [("jax_cpu_collectives_implementation", "mpi"), {"coordinator_address": "h:9", "num_processes": 2, "process_id": 1}]
  assert distributed.initialize(_section())  # already joined: nothing more
  assert len(calls) == 2
