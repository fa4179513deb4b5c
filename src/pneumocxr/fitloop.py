"""One resumable epoch loop for every network the pipeline trains.

:func:`run_epochs` owns what the classifiers and the autoencoder share: resuming from the
resume cache (:class:`~pneumocxr.checkpoint.ResumeCache`) after the last finished epoch,
saving the full state after every epoch (weights, optimizer, scheduler, loss scaler, the
shuffling generator, Python/NumPy/torch RNGs, history, best-so-far), keeping the best epoch's
weights beside it, and timing each epoch for the log. The caller says what one epoch is
(``run_epoch``: train, validate, return the history row and a score where larger is better).
A rerun with the same cache continues after the last finished epoch and ends
bitwise-identical to an uninterrupted run.

It knows nothing of what a network is for: the anomaly scores, thresholds and metrics are
elsewhere, so editing them retrains nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from .checkpoint import ResumeCache, atomic_save, rng_state, set_rng_state
from .errors import RunError

log = logging.getLogger(__name__)


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's state dict."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


@dataclass
class Trainable:
    """What an epoch changes, and so what a resume restores."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    scheduler: Any = None
    scaler: Any = None
    #: a running average of ``model`` (``torch.optim.swa_utils.AveragedModel``); when set,
    #: it is the network that is validated and kept as the best
    averaged: Any = None

    @property
    def selected(self) -> torch.nn.Module:
        """The network whose weights are validated and kept: the average where there is one."""
        return self.averaged.module if self.averaged is not None else self.model

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "averaged": self.averaged.state_dict() if self.averaged is not None else None,
                "generator": self.generator.get_state()}

    def load(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.averaged is not None:
            self.averaged.load_state_dict(state["averaged"])
        self.generator.set_state(state["generator"])


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_score: Sequence[float] | None
    best_info: Any
    best_state: dict[str, torch.Tensor]
    seconds: float = 0.0
    resumed_after: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def run_epochs(
    parts: Trainable,
    *,
    epochs: int,
    run_epoch: Callable[[int], tuple[dict[str, float], Sequence[float], Any]],
    cache: ResumeCache | None = None,
    resume: bool = True,
    key: Mapping[str, Any] | None = None,
    label: str = "training",
    log_epoch: Callable[[int, dict[str, float], bool, float], None] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Epochs ``1..epochs`` of ``run_epoch(epoch) -> (history row, score, info)``, resumable.

    The best epoch has the largest ``score`` (a tuple, compared in order; ties keep the
    earlier epoch); its ``info`` (e.g. its val metrics) comes back with it. ``log_epoch`` is
    called as ``(epoch, row, is_best, seconds)``.
    """
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"epoch": 0, "score": None, "info": None}
    best_state = cpu_state(parts.selected)
    start = 1
    best_file = cache.dir / "best_model.pt" if cache is not None else None
    state = cache.load() if cache is not None and resume else None
    if state is not None:
        parts.load(state)
        set_rng_state(state["rng"])
        history, best, start = state["history"], state["best"], state["epoch"] + 1
        log.info("resuming %s from %s after epoch %d of %d", label, cache.dir, state["epoch"],
                 epochs)
    seconds = 0.0
    for epoch in range(start, epochs + 1):
        t0 = time.perf_counter()
        row, score, info = run_epoch(epoch)
        history.append(row)
        improved = best["score"] is None or tuple(score) > tuple(best["score"])
        if improved:
            best = {"epoch": epoch, "score": list(score), "info": info}
            best_state = cpu_state(parts.selected)
            if best_file is not None:
                atomic_save({"epoch": epoch, "model": best_state}, best_file)
        if cache is not None:
            cache.save({**parts.state(), "rng": rng_state(), "epoch": epoch, "best": best,
                        "history": history, "key": dict(key or {})})
        took = time.perf_counter() - t0
        seconds += took
        if log_epoch is not None:
            log_epoch(epoch, row, improved, took)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    if best_file is not None and best["epoch"] > 0:
        saved = torch.load(best_file, map_location="cpu", weights_only=False)
        if saved["epoch"] != best["epoch"]:
            raise RunError(f"{best_file}: holds epoch {saved['epoch']} but the resume state "
                           f"says the best epoch is {best['epoch']}; delete {cache.dir} and "
                           "rerun")
        best_state = saved["model"]
    return FitResult(history, best["epoch"], best["score"], best["info"], best_state, seconds,
                     resumed_after=start - 1)
