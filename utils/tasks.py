"""The one list of tasks that the model head, the loss and the annotation tables share.

A *task* is what a user selects (``--tasks distance,peoplecount``).  Each task owns one or
more *outputs* of the head, named exactly like the annotation columns, and the same names
are used for the targets built from the table:

==============  ==========================================  =========================
task            head outputs (logits) / target keys          target encoding
==============  ==========================================  =========================
<feature>       ``<feature>_score`` (1), ``<feature>_confidence`` (1)
                                                             float in [0, 1]; NaN = missing
peoplecount     ``peoplecount`` (5), ``peoplecount_certain`` (1)
                                                             class index 0..4 (0, 1, 2, 3, many),
                                                             -1 = unknown; certain 0/1, NaN = unknown
location        ``location_score`` (1), ``location_confidence`` (1)
                                                             1.0 = Outdoor, 0.0 = Indoor, NaN = unknown
                                                             (the earlier Lightning version's encoding)
==============  ==========================================  =========================

Size-1 outputs are returned as shape (N,), ``peoplecount`` as (N, 5).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SCORE_FEATURES: tuple[str, ...] = (
    "distance",
    "object",
    "expanse",
    "facingness",
    "communicating",
    "joint",
    "valence",
    "arousal",
)
CATEGORICAL_TASKS: tuple[str, ...] = ("peoplecount", "location")
TASKS: tuple[str, ...] = SCORE_FEATURES + CATEGORICAL_TASKS

PEOPLECOUNT_CLASSES: tuple[str, ...] = ("0", "1", "2", "3", "many")
# index = target value; the earlier Lightning version used {"Indoor": 0, "Outdoor": 1} and its checkpoints'
# location head predicts p(Outdoor), so we keep that.
LOCATION_CLASSES: tuple[str, ...] = ("Indoor", "Outdoor")


def task_outputs(task: str) -> dict[str, int]:
    """Head outputs (name -> width) that belong to ``task``."""
    if task in SCORE_FEATURES:
        return {f"{task}_score": 1, f"{task}_confidence": 1}
    if task == "peoplecount":
        return {"peoplecount": len(PEOPLECOUNT_CLASSES), "peoplecount_certain": 1}
    if task == "location":
        return {"location_score": 1, "location_confidence": 1}
    raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


def parse_tasks(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"all"``/None -> every task; ``"a,b"`` or a list -> those tasks, in canonical order.

    Unknown names raise ``ValueError`` naming them.
    """
    if spec is None:
        return TASKS
    if isinstance(spec, str):
        names = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        names = [str(s).strip() for s in spec]
    if not names or names == ["all"]:
        return TASKS
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose 'all' or from: {', '.join(TASKS)}")
    return tuple(t for t in TASKS if t in names)


def output_sizes(tasks: Sequence[str] | str | None = "all") -> dict[str, int]:
    """Ordered mapping of every head output of the selected tasks to its width."""
    sizes: dict[str, int] = {}
    for task in parse_tasks(tasks):
        sizes.update(task_outputs(task))
    return sizes


# The earlier (Lightning) version's head: these 20 outputs in this order.
ALL_OUTPUTS: dict[str, int] = output_sizes("all")
