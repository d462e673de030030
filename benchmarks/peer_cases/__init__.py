"""The cases of `benchmarks.peers`: each module gives ``mmjax_side(quick)`` and ``torch_side()``."""
