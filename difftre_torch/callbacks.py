"""The outputs of a DiffTRe fit, as callbacks that hang off the trainer's loop (as ASE's
``dyn.attach(logger, interval)`` or Lightning's callbacks): TensorBoard, ``train.log``, the
progress bar, target figures and the checkpoint.

:class:`~difftre_torch.trainer.DiffTReTrainer` calls each callback of ``trainer.callbacks``, in
list order:

* ``on_fit_start(trainer)``: when ``fit`` starts, after a checkpoint to resume from is loaded
  (``trainer.update`` is the number of updates already done; ``trainer.resuming`` is ``fit``'s
  ``resume``);
* ``on_update_end(trainer, record)``: after every update; ``record`` is the
  :class:`~difftre_torch.records.UpdateRecord` just appended to ``trainer.history`` and
  ``trainer.last_predictions`` holds that update's reweighted ⟨O⟩ per target;
* ``on_fit_end(trainer, summary)``: after :meth:`~difftre_torch.trainer.DiffTReTrainer.finalize`
  with its :class:`~difftre_torch.records.RunSummary`, or with ``summary=None`` when the fit
  stops on an exception (release files and bars then; the exception is raised again afterwards).

A callback observes: it must not change the parameters, the optimiser or any random state, so
a run with more or fewer callbacks gives the same numbers. Subclass :class:`Callback` and
override what you need. :func:`default_callbacks` is what a trainer gets without ``callbacks=``.

TensorBoard tags (grouped as the TensorBoard UI folds them):

* ``loss/total``, ``loss/<target name>``, ``loss/force_matching``, ``loss/fm_energy_mse``,
  ``loss/fm_force_mse``;
* ``reweight/n_eff/<state point>`` (N_eff) and ``reweight/n_eff_ratio/<state point>`` (N_eff/N),
  ``reweight/resampled`` (1 when the update resampled);
* ``grad/norm`` (before clipping), ``lr``;
* ``time/sample``, ``time/update`` (s);
* ``state/<state point>/a_A`` … ``c_A`` (reweighted lattice lengths, Å), ``volume_A3``,
  ``pressure_GPa`` (virial pressure at sampling time);
* ``param/<name>``: scalar parameters θ at which the update's loss was evaluated;
* ``step/<key>``: the optimiser's step (``norm``; Levenberg–Marquardt: ``damping``, ``tries``,
  ``predicted`` and ``realised`` loss change, ``n_eff_ratio_after``);
* ``noise/loss_se`` (jackknife standard error of the target loss), ``noise/converged``;
* ``pool/<state point>/trajectories``, ``.../snapshots``, ``.../n_eff_<round>`` (the snapshot pool);
* figures ``targets/<target name>``: prediction vs experiment (:class:`FigureCallback`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from difftre_torch.checkpoint import atomic_write_text
from difftre_torch.monitor import log_line, logged_update, target_figure

if TYPE_CHECKING:
    from difftre_torch.records import RunSummary, UpdateRecord
    from difftre_torch.trainer import DiffTReTrainer, TrainerConfig


class Callback:
    """Base class of the trainer's callbacks: every hook does nothing (module docstring)."""

    def on_fit_start(self, trainer: DiffTReTrainer) -> None:
        pass

    def on_update_end(self, trainer: DiffTReTrainer, record: UpdateRecord) -> None:
        pass

    def on_fit_end(self, trainer: DiffTReTrainer, summary: RunSummary | None) -> None:
        pass


class TensorBoardCallback(Callback):
    """Every record's scalars to TensorBoard (tags: module docstring) at step ``trainer.update``.

    log_dir: default ``<out_dir>/tensorboard``. On resume the writer purges the events after the
    checkpoint's update (``purge_step``), so a resumed run's curves do not double back.
    """

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self.log_dir = log_dir
        self.writer = None

    def on_fit_start(self, trainer: DiffTReTrainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.log_dir if self.log_dir is not None else trainer.out_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(log_dir),
                                    purge_step=trainer.update + 1 if trainer.resuming else None)

    def on_update_end(self, trainer: DiffTReTrainer, record: UpdateRecord) -> None:
        write_scalars(self.writer, record, trainer.update)

    def add_figure(self, tag: str, fig, step: int) -> None:
        """A matplotlib Figure as image ``tag`` (for :class:`FigureCallback`); nothing if closed."""
        if self.writer is not None:
            self.writer.add_figure(tag, fig, step, close=False)

    def on_fit_end(self, trainer: DiffTReTrainer, summary: RunSummary | None) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def write_scalars(writer, record: UpdateRecord, step: int) -> None:
    """One update's record as TensorBoard scalars (tags: module docstring)."""
    add = writer.add_scalar
    for key, value in record.loss.items():
        add(f"loss/{key}", value, step)
    for name, value in record.n_eff.items():
        add(f"reweight/n_eff/{name}", value, step)
        add(f"reweight/n_eff_ratio/{name}", record.n_eff_ratio[name], step)
    add("reweight/resampled", float(record.resampled), step)
    add("grad/norm", record.grad_norm, step)
    add("lr", record.lr, step)
    for key, value in record.time.items():
        add(f"time/{key}", value, step)
    for name, values in record.state.items():
        for key, value in values.items():
            add(f"state/{name}/{key}", value, step)
    for name, value in record.parameters.items():
        add(f"param/{name}", value, step)
    for key, value in record.step.items():
        add(f"step/{key}", value, step)
    for key, value in record.noise.items():
        add(f"noise/{key}", value, step)
    for name, values in record.pool.items():
        for key, value in values.items():
            add(f"pool/{name}/{key}", value, step)


class FigureCallback(Callback):
    """Each target's current prediction against experiment (and the first update's prediction)
    as TensorBoard image ``targets/<name>``, every ``every`` updates and after the last one."""

    def __init__(self, tensorboard: TensorBoardCallback, every: int) -> None:
        if every < 1:
            raise ValueError(f"FigureCallback.every: expected >= 1, got {every}")
        self.tensorboard = tensorboard
        self.every = every

    def on_update_end(self, trainer: DiffTReTrainer, record: UpdateRecord) -> None:
        if trainer.update % self.every and trainer.update != trainer.config.updates:
            return
        for t in trainer.targets:
            current = trainer.last_predictions[t.name].detach().cpu().double().numpy()
            initial = trainer.initial_predictions[t.name].numpy()
            self.tensorboard.add_figure(f"targets/{t.name}", target_figure(t, current, initial), trainer.update)


class LogFileCallback(Callback):
    """One plain-text line per update (:func:`~difftre_torch.monitor.log_line`) appended to
    ``path`` (default ``<out_dir>/train.log``).

    When a fit starts, the log keeps only the lines of the updates done (``trainer.update``, the
    checkpoint's on resume): a run killed after logging an update but before checkpointing it
    logs that update again when resumed, and the file has it once (:func:`truncate_log`).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = path

    def _path(self, trainer: DiffTReTrainer) -> Path:
        return Path(self.path) if self.path is not None else trainer.out_dir / "train.log"

    def on_fit_start(self, trainer: DiffTReTrainer) -> None:
        truncate_log(self._path(trainer), trainer.update)

    def on_update_end(self, trainer: DiffTReTrainer, record: UpdateRecord) -> None:
        with open(self._path(trainer), "a", encoding="utf-8") as handle:
            handle.write(log_line(record) + "\n")


def truncate_log(path: Path, updates: int) -> None:
    """Drop from the log file ``path`` the lines of updates after number ``updates``
    (:func:`~difftre_torch.monitor.logged_update`) and an unfinished last line (a process killed
    while writing it); other lines stay. Rewritten atomically, and only if a line goes."""
    try:
        *lines, unfinished = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        return
    kept = [line for line in lines if (logged_update(line) or 0) <= updates]
    if len(kept) < len(lines) or unfinished:
        atomic_write_text(path, "".join(line + "\n" for line in kept))


class ProgressCallback(Callback):
    """A tqdm bar over the updates (loss and the lowest N_eff/N as postfix) with each update's
    log line written above it; ``bar=False``: the log line alone, printed to stdout."""

    def __init__(self, bar: bool = True) -> None:
        self.bar = bar
        self._tqdm = None

    def on_fit_start(self, trainer: DiffTReTrainer) -> None:
        if self.bar:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=trainer.config.updates, initial=trainer.update, desc="DiffTRe",
                              dynamic_ncols=True)

    def on_update_end(self, trainer: DiffTReTrainer, record: UpdateRecord) -> None:
        line = log_line(record)
        if self._tqdm is None:
            print(line, flush=True)
            return
        self._tqdm.set_postfix(loss=f"{record.loss['total']:.4g}",
                               n_eff=f"{min(record.n_eff_ratio.values()):.2f}")
        self._tqdm.update(1)
        self._tqdm.write(line)

    def on_fit_end(self, trainer: DiffTReTrainer, summary: RunSummary | None) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


class CheckpointCallback(Callback):
    """``<out_dir>/checkpoint.pt`` after every update, written atomically
    (:meth:`~difftre_torch.trainer.DiffTReTrainer.save_checkpoint`): ``fit(resume=True)``
    continues from it bit for bit."""

    def on_update_end(self, trainer: DiffTReTrainer, record: UpdateRecord) -> None:
        trainer.save_checkpoint()


def default_callbacks(config: TrainerConfig) -> list[Callback]:
    """The outputs a trainer writes unless given ``callbacks=``: TensorBoard scalars and target
    figures (if ``config.tensorboard``; figures every ``config.figure_every`` updates),
    ``train.log``, the progress bar (``config.progress``; else plain lines on stdout) and the
    checkpoint, in that order. Append to the list for more."""
    out: list[Callback] = []
    if config.tensorboard:
        tensorboard = TensorBoardCallback()
        out += [tensorboard, FigureCallback(tensorboard, config.figure_every)]
    return out + [LogFileCallback(), ProgressCallback(bar=config.progress), CheckpointCallback()]
