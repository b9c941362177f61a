"""A run killed between an update's log line and its checkpoint resumes with every update logged
once, and without the temporary file of the interrupted checkpoint write."""

from __future__ import annotations

import numpy as np
from ase.build import bulk

from difftre_torch.callbacks import Callback, CheckpointCallback, LogFileCallback, truncate_log
from difftre_torch.experiment.target import Target
from difftre_torch.monitor import log_line, logged_update
from difftre_torch.potentials import LennardJones
from difftre_torch.sampling.base import SamplerConfig, StatePoint
from difftre_torch.trainer import DiffTReTrainer, TrainerConfig

from test_checkpoint import killed_writer


class Killed(Exception):
    """Stands for the SIGKILL of the process."""


class KilledWhileCheckpointing(Callback):
    """After update ``at`` is logged, a process writing its checkpoint is killed (leaving its
    temporary file), and the fit stops before the trainer's own checkpoint of it."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_update_end(self, trainer, record):
        if record.update == self.at:
            killed_writer(trainer.checkpoint_path)
            raise Killed


def small_trainer(out, updates: int, callbacks=None) -> DiffTReTrainer:
    """32 Lennard-Jones argon atoms, 5 snapshots per update: seconds per update."""
    potential = LennardJones(3.3, 0.0104, 8.5)
    potential.epsilon.requires_grad_(False)
    atoms = bulk("Ar", "fcc", a=(4 * 3.405 ** 3 / 0.8) ** (1 / 3), cubic=True).repeat(2)
    return DiffTReTrainer(potential, atoms, [StatePoint("T181", 181.0)],
                          [Target("rdf", "rdf", np.ones(20), x=np.arange(20) * 0.25 + 2.6)],
                          sampler_config=SamplerConfig(timestep_fs=5.0, friction_per_fs=0.02, equilibration_steps=20,
                                                       reequilibration_steps=100, snapshots_per_replica=5,
                                                       stride=10, min_distance_A=1.5),
                          config=TrainerConfig(updates=updates, learning_rate=0.01, progress=False,
                                               tensorboard=False, final_sample=False),
                          out_dir=out, callbacks=callbacks)


def test_a_resumed_run_logs_each_update_once_and_drops_the_killed_write(tmp_path):
    interrupted = small_trainer(tmp_path, 3, [LogFileCallback(), KilledWhileCheckpointing(at=2), CheckpointCallback()])
    try:
        interrupted.fit()
    except Killed:
        pass
    log = tmp_path / "train.log"
    assert [logged_update(line) for line in log.read_text().splitlines()] == [1, 2]
    assert len(list(tmp_path.glob(".checkpoint.pt.*.tmp"))) == 1
    resumed = small_trainer(tmp_path, 3)
    resumed.fit(resume=True)
    assert [r.update for r in resumed.history] == [1, 2, 3]
    assert log.read_text() == "".join(log_line(r) + "\n" for r in resumed.history)
    assert list(tmp_path.glob(".*.tmp")) == []


def test_truncate_log_keeps_finished_lines_up_to_the_update(tmp_path):
    log = tmp_path / "train.log"
    text = "a note\nupdate    1  loss=1\nupdate    2  loss=2\nupdate 1000  loss=3\n"
    log.write_text(text + "update    3  lo")  # killed while writing update 3's line
    truncate_log(log, 1000)
    assert log.read_text() == text
    truncate_log(log, 1)
    assert log.read_text() == "a note\nupdate    1  loss=1\n"
    truncate_log(tmp_path / "absent.log", 0)
    assert not (tmp_path / "absent.log").exists()
