"""MultiTaskLoss against arithmetic written out in plain Python (math), on tiny batches."""

import math

import pytest
import torch

from losses import DEFAULT_TASK_WEIGHTS, MultiTaskLoss
from utils.tasks import ALL_OUTPUTS, SCORE_FEATURES

NAN = float("nan")


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def bce(logit, y):
    return -(y * math.log(sig(logit)) + (1 - y) * math.log(1 - sig(logit)))


def cross_entropy(logits, cls):
    return -(logits[cls] - math.log(sum(math.exp(v) for v in logits)))


def t(values, dtype=torch.float32, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# One small batch used by several tests (N = 4).
S_LOGIT = [0.2, -1.0, 0.5, 2.0]
C_LOGIT = [0.0, 1.0, -0.5, 0.3]
SCORE = [0.3, NAN, 0.8, 0.0]
CONF = [0.9, 0.5, 0.2, 1.0]


def distance_batch():
    outputs = {"distance_score": t(S_LOGIT, grad=True), "distance_confidence": t(C_LOGIT, grad=True)}
    targets = {"distance_score": t(SCORE), "distance_confidence": t(CONF)}
    return outputs, targets


def expected_score_sum(include_confidence, alpha):
    total = 0.0
    for s, c, y, conf in zip(S_LOGIT, C_LOGIT, SCORE, CONF):
        if math.isnan(y):
            continue
        w = conf if include_confidence else 1.0
        total += w * (sig(s) - y) ** 2 + alpha * (sig(c) - conf) ** 2
    return total


@pytest.mark.parametrize("include_confidence", [False, True])
@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_score_task_matches_hand_computation(include_confidence, alpha):
    outputs, targets = distance_batch()
    loss = MultiTaskLoss("distance", include_confidence=include_confidence, alpha=alpha)
    result = loss(outputs, targets)
    expected_sum = expected_score_sum(include_confidence, alpha)
    # 3 valid samples (one NaN score); weight 1.0 for score features
    assert result.total.item() == pytest.approx(expected_sum / 3, rel=1e-6)
    assert result.sums["distance"].item() == pytest.approx(expected_sum, rel=1e-6)
    assert result.counts["distance"].item() == 3
    assert result.counts["distance"].dtype == torch.int64
    assert result.per_task["distance"].item() == pytest.approx(expected_sum / 3, rel=1e-6)
    assert not result.per_task["distance"].requires_grad and not result.sums["distance"].requires_grad


def test_include_confidence_is_sum_of_weighted_errors_over_valid_count():
    outputs, targets = distance_batch()
    loss = MultiTaskLoss("distance", include_confidence=True, alpha=0.0)
    got = loss(outputs, targets).total.item()
    # (0.9 * se0 + 0.2 * se2 + 1.0 * se3) / 3 -- not divided by the sum of confidences (2.1)
    se = [(sig(s) - y) ** 2 for s, y in zip(S_LOGIT, SCORE)]
    assert got == pytest.approx((0.9 * se[0] + 0.2 * se[2] + 1.0 * se[3]) / 3, rel=1e-6)


@pytest.mark.parametrize("include_confidence", [False, True])
def test_location_bce_plus_confidence_term(include_confidence):
    loc_logit, conf_logit = [1.5, -0.3, 0.7], [0.1, -2.0, 0.4]
    location, conf = [1.0, 0.0, NAN], [0.8, 0.6, 0.9]
    outputs = {"location_score": t(loc_logit), "location_confidence": t(conf_logit)}
    targets = {"location_score": t(location), "location_confidence": t(conf)}
    alpha = 0.7
    result = MultiTaskLoss("location", include_confidence=include_confidence, alpha=alpha)(outputs, targets)
    expected = 0.0
    for i in range(2):  # sample 2 has no location
        w = conf[i] if include_confidence else 1.0
        expected += w * bce(loc_logit[i], location[i]) + alpha * (sig(conf_logit[i]) - conf[i]) ** 2
    assert result.sums["location"].item() == pytest.approx(expected, rel=1e-6)
    assert result.total.item() == pytest.approx(0.1 * expected / 2, rel=1e-6)  # default weight 0.1


def test_peoplecount_cross_entropy_plus_beta_certain():
    logits = [
        [0.1, 0.2, 1.0, -0.5, 0.0],
        [2.0, 0.0, 0.0, 0.0, 0.0],
        [0.3, -1.0, 0.5, 0.2, 1.5],
        [1.0, 1.0, 1.0, 1.0, 1.0],
    ]
    certain_logit = [0.5, -0.2, 1.2, 0.0]
    cls = [2, -1, 4, 0]
    certain = [1.0, 0.0, 1.0, NAN]  # sample 1: unknown class; sample 3: unknown certainty
    beta = 0.5
    outputs = {"peoplecount": t(logits), "peoplecount_certain": t(certain_logit)}
    targets = {"peoplecount": t(cls, dtype=torch.int64), "peoplecount_certain": t(certain)}
    result = MultiTaskLoss("peoplecount", beta=beta)(outputs, targets)
    expected = (
        cross_entropy(logits[0], 2)
        + beta * bce(certain_logit[0], 1.0)
        + cross_entropy(logits[2], 4)
        + beta * bce(certain_logit[2], 1.0)
        + cross_entropy(logits[3], 0)  # no certainty term: certain is NaN
    )
    assert result.counts["peoplecount"].item() == 3
    assert result.sums["peoplecount"].item() == pytest.approx(expected, rel=1e-6)
    assert result.total.item() == pytest.approx(0.04 * expected / 3, rel=1e-6)  # default weight 0.04


def test_task_without_valid_target_adds_exact_zero_and_zero_gradients():
    outputs, targets = distance_batch()
    outputs["object_score"] = t([3.0, -2.0, 0.1, 0.0], grad=True)
    outputs["object_confidence"] = t([0.4, 0.4, 0.4, 0.4], grad=True)
    targets["object_score"] = t([NAN] * 4)
    targets["object_confidence"] = t([0.0] * 4)
    loss = MultiTaskLoss(["distance", "object"])
    only_distance = MultiTaskLoss("distance")(*distance_batch()).total.item()
    for denominators in (None, {"distance": 3.0, "object": 0.0}):
        result = loss(outputs, targets, denominators=denominators)
        assert torch.isfinite(result.total)
        assert result.total.item() == pytest.approx(only_distance, rel=1e-6)
        assert result.sums["object"].item() == 0.0
        assert result.counts["object"].item() == 0
        assert math.isnan(result.per_task["object"].item())  # a mean over nothing
        for p in outputs.values():
            p.grad = None
        result.total.backward()
        assert torch.equal(outputs["object_score"].grad, torch.zeros(4))
        assert torch.equal(outputs["object_confidence"].grad, torch.zeros(4))
        assert outputs["distance_score"].grad[1].item() == 0.0  # the NaN-target sample
        assert torch.isfinite(outputs["distance_score"].grad).all()


def test_zero_denominator_gives_zero_even_with_local_targets():
    outputs, targets = distance_batch()
    result = MultiTaskLoss("distance")(outputs, targets, denominators={"distance": torch.tensor(0.0)})
    assert result.total.item() == 0.0
    result.total.backward()
    assert torch.equal(outputs["distance_score"].grad, torch.zeros(4))


def test_denominators_replace_counts():
    outputs, targets = distance_batch()
    expected_sum = expected_score_sum(False, 1.0)
    for denom in (2.5, torch.tensor(2.5)):
        result = MultiTaskLoss("distance")(outputs, targets, denominators={"distance": denom})
        assert result.total.item() == pytest.approx(expected_sum / 2.5, rel=1e-6)
        assert result.per_task["distance"].item() == pytest.approx(expected_sum / 3, rel=1e-6)
    with pytest.raises(KeyError, match="distance"):
        MultiTaskLoss("distance")(outputs, targets, denominators={"object": 1.0})


def test_denominators_make_rank_average_equal_union_batch():
    """Two 'ranks' with global_count / world_size denominators average to the full-batch gradient."""
    torch.manual_seed(1)
    n = 8
    outputs = {k: torch.randn(n, v) if v > 1 else torch.randn(n) for k, v in ALL_OUTPUTS.items()}
    targets = {k: torch.rand(n) for k in ALL_OUTPUTS if k != "peoplecount"}
    targets["distance_score"][[0, 1, 2]] = NAN  # uneven validity across the two halves
    targets["location_score"] = t([1, 0, NAN, NAN, NAN, NAN, 1, 0])
    targets["peoplecount"] = t([0, -1, -1, -1, 4, 2, 3, -1], dtype=torch.int64)
    targets["peoplecount_certain"] = t([1, 0, NAN, 1, 1, 0, NAN, 1])
    loss = MultiTaskLoss("all", include_confidence=True, alpha=0.3, beta=0.6)

    full = {k: v.clone().requires_grad_() for k, v in outputs.items()}
    loss(full, targets).total.backward()

    halves = {k: v.clone().requires_grad_() for k, v in outputs.items()}
    parts = [slice(0, 4), slice(4, 8)]
    local_counts = [loss.valid_counts({k: v[p] for k, v in targets.items()}) for p in parts]
    global_counts = {task: sum(c[task] for c in local_counts) for task in loss.tasks}
    denominators = {task: global_counts[task].float() / 2 for task in loss.tasks}
    averaged = (
        sum(
            loss({k: v[p] for k, v in halves.items()}, {k: v[p] for k, v in targets.items()}, denominators).total
            for p in parts
        )
        / 2
    )
    averaged.backward()
    for k in outputs:
        torch.testing.assert_close(halves[k].grad, full[k].grad, rtol=1e-5, atol=1e-7)


def test_default_and_overridden_task_weights():
    assert DEFAULT_TASK_WEIGHTS == {**{f: 1.0 for f in SCORE_FEATURES}, "location": 0.1, "peoplecount": 0.04}
    assert MultiTaskLoss().task_weights == DEFAULT_TASK_WEIGHTS
    loss = MultiTaskLoss("distance,location", task_weights={"location": 0.5, "arousal": 2.0})
    assert loss.task_weights == {"distance": 1.0, "location": 0.5}
    outputs, targets = distance_batch()
    weighted = MultiTaskLoss("distance", task_weights={"distance": 3.0})(outputs, targets).total.item()
    assert weighted == pytest.approx(3.0 * expected_score_sum(False, 1.0) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="locaton"):
        MultiTaskLoss(task_weights={"locaton": 1.0})


def test_task_selection_and_missing_keys():
    outputs, targets = distance_batch()
    # only the selected task's keys are needed
    assert set(MultiTaskLoss(["distance"])(outputs, targets).sums) == {"distance"}
    with pytest.raises(ValueError, match="nonsense"):
        MultiTaskLoss("distance,nonsense")
    with pytest.raises(KeyError, match="object_score"):
        MultiTaskLoss("object")(outputs, targets)
    del targets["distance_confidence"]
    with pytest.raises(KeyError, match="distance_confidence"):
        MultiTaskLoss("distance")(outputs, targets)


def test_valid_counts():
    targets = {f"{f}_score": t([0.1, NAN, 0.3]) for f in SCORE_FEATURES}
    targets["distance_score"] = t([NAN, NAN, NAN])
    targets["location_score"] = t([1.0, 0.0, NAN])
    targets["peoplecount"] = t([-1, 4, 0], dtype=torch.int64)
    counts = MultiTaskLoss().valid_counts(targets)
    assert {k: v.item() for k, v in counts.items()} == {
        **{f: 2 for f in SCORE_FEATURES},
        "distance": 0,
        "location": 2,
        "peoplecount": 2,
    }
    assert all(v.dtype == torch.int64 and v.dim() == 0 for v in counts.values())


def test_bf16_autocast_inputs_give_float32_results():
    outputs, targets = distance_batch()
    bf16 = {k: v.detach().to(torch.bfloat16).requires_grad_() for k, v in outputs.items()}
    loss = MultiTaskLoss("distance", include_confidence=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = loss(bf16, targets)
    assert result.total.dtype == torch.float32
    assert result.sums["distance"].dtype == torch.float32
    reference = loss({k: v.detach().float() for k, v in bf16.items()}, targets).total
    assert result.total.item() == pytest.approx(reference.item(), rel=1e-6)
    result.total.backward()
    assert bf16["distance_score"].grad.dtype == torch.bfloat16
    assert torch.isfinite(bf16["distance_score"].grad.float()).all()


def test_gradients_finite_for_extreme_logits_on_all_tasks():
    n = 5
    outputs = {
        k: (torch.full((n, v), 80.0) if v > 1 else torch.tensor([100.0, -100.0, 0.0, 50.0, -50.0]))
        for k, v in ALL_OUTPUTS.items()
    }
    outputs = {k: v.requires_grad_() for k, v in outputs.items()}
    targets = {k: t([0.0, 1.0, NAN, 1.0, 0.0]) for k in ALL_OUTPUTS if k != "peoplecount"}
    targets["peoplecount"] = t([4, 0, -1, 2, 1], dtype=torch.int64)
    result = MultiTaskLoss(include_confidence=True)(outputs, targets)
    assert torch.isfinite(result.total)
    result.total.backward()
    for name, tensor in outputs.items():
        assert torch.isfinite(tensor.grad).all(), name


def test_column_shaped_size_one_outputs_are_accepted():
    outputs, targets = distance_batch()
    column = {k: v.detach().unsqueeze(1) for k, v in outputs.items()}
    loss = MultiTaskLoss("distance")
    assert loss(column, targets).total.item() == pytest.approx(loss(outputs, targets).total.item())
