"""bench/benchlib.py: tokens are counted per optimizer step, so rates over the timed steps use those steps' tokens.

PYTHONPATH=src python -m pytest -q tests/bench/test_benchlib.py
"""

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from benchlib import StepCounter  # noqa: E402


def test_micro_batches_are_summed_under_their_optimizer_step():
    """Three optimizer steps of four micro-batches each: the counts of step i are the sum of its four."""
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=0))
    seen = []
    trainer.training_step = lambda model, inputs, num_items_in_batch=None: seen.append(inputs["n"])
    counter = StepCounter(trainer, lambda inputs: (inputs["n"], 1))
    for step in range(3):
        trainer.state.global_step = step
        for micro in range(4):
            trainer.training_step(None, {"n": 100 * step + micro})
    assert seen[:4] == [0, 1, 2, 3]  # the real training_step still runs, with the inputs
    assert counter.per_step() == [6, 406, 806]
    assert counter.per_step(1) == [4, 4, 4]
    assert counter.after(1) == 406 + 806  # the timed steps after one warm-up step, not 11 micro-batches' worth
