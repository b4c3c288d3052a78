"""Every job kind, declared once: who runs it and what it may do."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JobKind:
    """One value of a job's `action`."""

    action: str
    runs_model_code: bool  # True: submitted to the job backend (a worker process); False: lives in the API
    cancel_kills: bool  # a cancel stops a process (else the kind ends at once, e.g. the annotation controller)
    description: str


KINDS: dict[str, JobKind] = {
    kind.action: kind
    for kind in (
        JobKind("train", runs_model_code=True, cancel_kills=True, description="Train or fine-tune the bundle."),
        JobKind("batchinfer", runs_model_code=True, cancel_kills=True, description="Inference on a whole dataset."),
        JobKind(
            "annotation",
            runs_model_code=False,
            cancel_kills=False,
            description="Continual learning: starts train jobs as labels arrive (controller in the API).",
        ),
    )
}
# Actions an experiment may list and a client may start ("inference" is real-time, not a job).
EXPERIMENT_ACTIONS = ["train", "inference", "annotation", "batchinfer"]
BACKEND_ACTIONS = tuple(action for action, kind in KINDS.items() if kind.runs_model_code)


def kind_of(action: str) -> JobKind | None:
    return KINDS.get(action)
