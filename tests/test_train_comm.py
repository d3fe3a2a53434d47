"""Gradient compression and DDP bucket options in the real loop (2 ranks, gloo on CPU).

Compressed all-reduces must train like the fp32 one.  The measure is the weight update w - w0
relative to fp32's (L2 over all weights) after 4 SGD steps at lr 0.02, with no dropout, BatchNorm
on running statistics and no gradient clipping:

- SGD, because its update is linear in the gradient (Adam blows float noise in near-zero
  gradients up to lr-sized steps);
- no clipping and a small lr, because a clipped step hides a wrong gradient scale and puts the
  measure on a plateau where bf16 and fp16 errors cannot be told apart.

Bounds: bf16 1 %, fp16 0.1 % (fp16's below what bf16 reaches, so the test tells them apart).  A hook
that sums instead of averaging (for SGD, twice the lr) lands two orders of magnitude above both.
The figures behind the bounds: docs/log/test_bounds.md.
"""

import pytest
import torch
from launch_helpers import TINY_WIDTH, train

pytestmark = pytest.mark.slow
STEPS = 4
TOLERANCE = {"bf16": 0.01, "fp16": 0.001}


# SGD's linear update, no dropout, BatchNorm on running statistics, no clipping (see above)
LINEAR = dict(
    batch_size=4,
    epochs=5,
    dropout=0,
    bn="eval",
    val_every=0,
    optimizer="sgd",
    lr=0.02,
    clip_grad=0,
    schedule="constant",
    warmup_steps=0,
    seed=3,
    keep_last=1,
    max_steps=STEPS,
)


def _update(model_state: dict) -> torch.Tensor:
    """w - w0 over every trained weight (the initial weights come from the same seed)."""
    from resnet3d import build_model

    torch.manual_seed(3)
    initial = build_model(depth=18, width=TINY_WIDTH).state_dict()
    keys = [k for k in initial if initial[k].is_floating_point() and "running_" not in k]
    return torch.cat([(model_state[k].double() - initial[k].double()).flatten() for k in keys])


def _relative_error(run, fp32: torch.Tensor) -> float:
    return ((_update(run.checkpoint()["model"]) - fp32).norm() / fp32.norm()).item()


@pytest.fixture(scope="module")
def fp32_update(tiny_demo, tmp_path_factory) -> torch.Tensor:
    fp32 = train(tmp_path_factory.mktemp("fp32") / "run", tiny_demo, nproc=2, **LINEAR)
    assert fp32.checkpoint()["step"] == STEPS
    update = _update(fp32.checkpoint()["model"])
    assert update.norm() > 0.3  # the weights really moved (0.64 measured): the comparisons below are not vacuous
    return update


def test_bf16_compression_trains_close_to_fp32_and_resumes(tiny_demo, tmp_path, fp32_update):
    out = tmp_path / "run"
    first = train(out, tiny_demo, nproc=2, **{**LINEAR, "max_steps": 2}, grad_compression="bf16")
    assert first.checkpoint()["step"] == 2
    resumed = train(out, tiny_demo, nproc=2, **LINEAR, grad_compression="bf16")
    assert "resumed from" in resumed.stdout and ": step 2, epoch 0" in resumed.stdout, resumed.tail()
    state = resumed.checkpoint()
    assert state["step"] == STEPS
    error = _relative_error(resumed, fp32_update)
    # > 0: the hook really ran (an fp32 all-reduce would reproduce fp32's sums exactly)
    assert 0 < error < TOLERANCE["bf16"], error
    assert state["config"]["grad_compression"] == "bf16"  # stored in the checkpoint
    logged = resumed.mlflow_run()  # the resume continued the one MLflow run
    assert logged.info.run_id == state["mlflow_run_id"]
    params = logged.data.params
    assert params["grad_compression"] == "bf16" and params["ddp_bucket_mb"] == "25.0"  # logged to MLflow


def test_fp16_compression_with_small_buckets_as_views_trains_close_and_refuses_other_options_on_resume(
    tiny_demo, tmp_path, fp32_update
):
    out = tmp_path / "run"
    comm = dict(grad_compression="fp16", ddp_bucket_mb=1)
    run = train(out, tiny_demo, nproc=2, **LINEAR, **comm, gradient_as_bucket_view=True)
    assert run.checkpoint()["step"] == STEPS
    error = _relative_error(run, fp32_update)
    assert 0 < error < TOLERANCE["fp16"], error
    # resuming this run with other communication options is refused before anything trains
    longer = {**LINEAR, "max_steps": STEPS + 2}
    res = train(out, tiny_demo, ok=False, timeout=300, **longer, **comm, gradient_as_bucket_view=False)
    assert (
        "was trained with other gradient-communication options (--gradient-as-bucket-view True -> False)" in res.stdout
    ), res.tail()
