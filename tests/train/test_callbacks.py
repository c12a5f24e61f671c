"""NonFiniteStop: the first NaN or infinite gradient, trained weight or logged loss stops training with
TrainingDiverged (exit code 2), naming the step and the learning rate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tunesmith.errors import TrainingDiverged
from tunesmith.train.callbacks import NonFiniteStop

ARGS = SimpleNamespace(fp16=False)
STATE = SimpleNamespace(global_step=6)


def _model(grad: float | None = 1.0, weight: float = 0.5) -> torch.nn.Module:
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(weight)
    model.bias.requires_grad_(False)  # frozen parameters are not checked (a base model under LoRA)
    model.bias.data.fill_(float("nan"))
    if grad is not None:
        model.weight.grad = torch.full_like(model.weight, grad)
    return model


def test_finite_training_passes():
    stop = NonFiniteStop(2e-4)
    stop.on_pre_optimizer_step(ARGS, STATE, None, model=_model())
    stop.on_optimizer_step(ARGS, STATE, None, model=_model())
    stop.on_log(ARGS, STATE, None, logs={"loss": 2.5, "grad_norm": 0.3, "learning_rate": 2e-4})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_gradient_stops_before_the_optimizer_step(bad):
    with pytest.raises(TrainingDiverged) as exc:
        NonFiniteStop(2e-4).on_pre_optimizer_step(ARGS, STATE, None, model=_model(grad=bad))
    text = exc.value.render()
    assert (
        exc.value.exit_code == 2 and "step 7" in text and "gradient norm" in text and "learning_rate is 0.0002" in text
    )


def test_fp16_loss_scaling_skips_the_gradient_check_but_not_the_weights():
    fp16 = SimpleNamespace(fp16=True)
    NonFiniteStop().on_pre_optimizer_step(fp16, STATE, None, model=_model(grad=float("inf")))  # the scaler's job
    with pytest.raises(TrainingDiverged, match="trained weights"):
        NonFiniteStop().on_optimizer_step(fp16, STATE, None, model=_model(weight=float("inf")))


def test_weights_that_overflow_after_a_step_stop_training():
    with pytest.raises(TrainingDiverged, match="norm of the trained weights"):
        NonFiniteStop(1e30).on_optimizer_step(ARGS, STATE, None, model=_model(weight=3e38))  # norm overflows fp32


@pytest.mark.parametrize("key", ["loss", "grad_norm"])
def test_non_finite_logged_values_stop_training(key):
    with pytest.raises(TrainingDiverged, match=f"logged {key}"):
        NonFiniteStop().on_log(ARGS, STATE, None, logs={key: float("nan")})
