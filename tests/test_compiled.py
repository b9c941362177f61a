"""Sampling with a compiled (AOTInductor) NequIP model, gradients with the eager one.

Fast tests use a stand-in for nequip's AOTI wrapper (the same interface, an eager model inside,
as in test_nequip.py): the load-time check passes for the same model and names both files and
the differences for a perturbed one; the trainer samples with the compiled model only while θ
is unchanged and always stores U_θ̃ from the eager model. Tests with a real ``nequip-compile``
(one compile, ~40–50 s on 2 CPU cores, shared by the module) check the real .nequip.pt2 and a
trainer run with it against an eager run; re-exporting after an update (a second compile) is
behind the ``slow`` marker.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch

pytest.importorskip("nequip")

from difftre_torch.testing import fake_aoti_model, tiny_cn_frames  # noqa: E402

from difftre_torch.experiment.target import Target  # noqa: E402
from difftre_torch.objective import reference_energies  # noqa: E402
from difftre_torch.potentials.compiled import (  # noqa: E402
    CompiledSampling,
    check_frames,
    check_same_energies,
    compile_nequip,
    default_tolerance,
)
from difftre_torch.potentials.nequip import NequIPPotential, NequIPSource  # noqa: E402
from difftre_torch.potentials.nequip_files import load_nequip  # noqa: E402
from difftre_torch.sampling.base import SamplerConfig, StatePoint  # noqa: E402
from difftre_torch.sampling.sampler import AseSampler  # noqa: E402
from difftre_torch.trainer import DiffTReTrainer, TrainerConfig  # noqa: E402


def fake_compiled(eager: NequIPPotential, relative_perturbation: float = 0.0) -> NequIPPotential:
    """A compiled-like potential frozen at a copy of ``eager``'s weights, every weight scaled by
    (1 + relative_perturbation)."""
    model = copy.deepcopy(eager.model)
    with torch.no_grad():
        for weight in model.parameters():
            weight.mul_(1 + relative_perturbation)
    source = NequIPSource("aotinductor", "/models/fake.nequip.pt2", eager.source.model_dtype)
    return NequIPPotential(fake_aoti_model(model), eager.type_names, eager.r_max_A, compiled=True, source=source)


STEP = 1e-2  # a relative weight change of the order of one Adam step at learning rate 1e-2


@pytest.fixture(scope="module")
def system():
    """The simulated C4N4 cell and check frames near it (rattled, strained)."""
    atoms = tiny_cn_frames(n_frames=1, seed=4)[0]
    atoms.calc = None
    return atoms, check_frames(atoms, n_frames=3, seed=1)


# ----------------------------------------------------------------------------- the check


def test_check_passes_for_the_same_model(tiny_nequip_checkpoint, system):
    _, frames = system
    eager = load_nequip(tiny_nequip_checkpoint)
    agreement = check_same_energies(eager, fake_compiled(eager), *frames)
    rtol, atol = default_tolerance(torch.float32)
    assert (agreement.rtol, agreement.atol_eV, agreement.dtype, agreement.frames) == (rtol, atol, "float32", 3)
    assert agreement.max_abs_energy_eV <= atol and agreement.max_abs_force_eV_A <= atol
    # a float64 rebuild of the float32 model is held to the float32 tolerance, and passes
    eager64 = load_nequip(tiny_nequip_checkpoint, dtype=torch.float64)
    assert check_same_energies(eager64, fake_compiled(eager), *frames).dtype == "float32"
    assert default_tolerance(torch.float64) < default_tolerance(torch.float32)


def test_check_names_both_files_and_the_difference(tiny_nequip_checkpoint, system):
    _, frames = system
    eager = load_nequip(tiny_nequip_checkpoint)
    perturbed = fake_compiled(eager, relative_perturbation=STEP)
    with pytest.raises(ValueError) as info:
        check_same_energies(eager, perturbed, *frames)
    message = str(info.value)
    for part in (str(tiny_nequip_checkpoint), "/models/fake.nequip.pt2", "max |ΔU| =", "max |ΔU|/|U| =",
                 "max |ΔF| =", "tolerance |ΔU| ≤", "(float32)"):
        assert part in message, (part, message)
    # the same perturbation passes with a tolerance above the difference it causes: the check
    # fails because of the difference, not for another reason
    difference = (perturbed(*frames) - eager(*frames)).abs().max().item()
    assert difference > default_tolerance(torch.float32)[1]
    check_same_energies(eager, perturbed, *frames, atol_eV=2 * difference, rtol=0.0, forces=False)


def test_compile_nequip_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\.nequip\.pt2"):
        compile_nequip(tmp_path / "in.ckpt", tmp_path / "out.pt2")
    with pytest.raises(ValueError, match="target"):
        compile_nequip(tmp_path / "in.ckpt", tmp_path / "out.nequip.pt2", target="lammps")
    with pytest.raises(FileNotFoundError):
        compile_nequip(tmp_path / "in.ckpt", tmp_path / "out.nequip.pt2")


# ----------------------------------------------------------------------------- the trainer hook


class RecordingSampler:
    """An AseSampler that records which potential each round was sampled with."""

    def __init__(self, *args):
        self.inner = AseSampler(*args)
        self.used = []

    def sample(self, potential, on_step=None):
        self.used.append(potential)
        return self.inner.sample(potential, on_step)

    def __getattr__(self, name):
        return getattr(self.inner, name)


SAMPLER = dict(timestep_fs=0.5, friction_per_fs=0.05, equilibration_steps=5, snapshots_per_replica=4,
               stride=2, min_distance_A=0.3, max_volume_ratio=10.0, seed=7)


def make_trainer(potential, atoms, out_dir, *, sampling_potential=None, updates=1, resample_ratio=0.9,
                 sampler_kind="ase", recording=False):
    from difftre_torch.sampling.batched import BatchedSampler

    points = [StatePoint("T300", 300.0)]
    if sampler_kind == "batched":
        sampler = BatchedSampler(atoms, points, SamplerConfig(**SAMPLER))
    else:
        sampler = (RecordingSampler if recording else AseSampler)(atoms, points, SamplerConfig(**SAMPLER))
    x = np.arange(10) * 0.2 + 1.1
    return DiffTReTrainer(
        potential, atoms, points, [Target("rdf", "rdf", np.ones(10), x=x, options={"weighting": "xray"})],
        config=TrainerConfig(updates=updates, learning_rate=1e-2, resample_ratio=resample_ratio,
                             progress=False, tensorboard=False, final_sample=False),
        out_dir=out_dir, sampler=sampler, sampling_potential=sampling_potential)


def check_energies_at_each_sample(trainer) -> list[int]:
    """After every sample, assert that U_θ̃ in every store is the eager model's energy of the
    stored snapshots at the sampled θ (bit for bit: the same call fill_store makes). Returns a
    list that gets one entry per checked sample."""
    checked = []
    original = trainer._sample

    def sample():
        seconds = original()
        for store in trainer.stores:
            expected = reference_energies(trainer.potential, store.positions, store.cells, store.numbers,
                                          trainer.config.chunk_size)
            assert torch.equal(store.reference_energies, expected)
        checked.append(len(checked))
        return seconds

    trainer._sample = sample
    return checked


def test_trainer_samples_with_the_compiled_model_only_while_theta_is_unchanged(
        tiny_nequip_checkpoint, system, tmp_path):
    """resample_ratio 1: every update after the first step resamples (θ has changed). The first
    sample uses the compiled model, every later one the eager model (recompile off)."""
    atoms, frames = system
    eager = load_nequip(tiny_nequip_checkpoint, dtype=torch.float64)
    compiled = fake_compiled(eager)
    sampling = CompiledSampling(eager, compiled, frames)
    assert sampling.is_current() and len(sampling.history) == 1
    trainer = make_trainer(eager, atoms, tmp_path, sampling_potential=sampling, updates=3,
                           resample_ratio=1.0, recording=True)
    checked = check_energies_at_each_sample(trainer)
    assert trainer.sample_stats == {}
    trainer.step()
    assert trainer.sampler.used == [compiled] * len(trainer.sampler.used)  # a resample at θ̃ is allowed
    assert trainer.sample_stats["T300"]["sampled_with"] == "compiled /models/fake.nequip.pt2"
    first_rounds = len(trainer.sampler.used)
    with pytest.warns(UserWarning, match="parameters changed"):
        trainer.step()
        trainer.step()
    later = trainer.sampler.used[first_rounds:]
    assert later and all(p is eager for p in later)
    assert trainer.sample_stats["T300"]["sampled_with"].startswith("eager")
    assert not sampling.is_current()
    assert len(checked) == len(trainer.sampler.used)


def test_trainer_rejects_a_frozen_sampling_potential(tiny_nequip_checkpoint, system, tmp_path):
    atoms, _ = system
    eager = load_nequip(tiny_nequip_checkpoint)
    with pytest.raises(TypeError, match="for_sampling"):
        make_trainer(eager, atoms, tmp_path, sampling_potential=fake_compiled(eager))


def test_compiled_sampling_refuses_a_mismatched_model(tiny_nequip_checkpoint, system):
    _, frames = system
    eager = load_nequip(tiny_nequip_checkpoint)
    with pytest.raises(ValueError, match="does not give the energies"):
        CompiledSampling(eager, fake_compiled(eager, relative_perturbation=STEP), frames)
    with pytest.raises(ValueError, match="compiled"):
        CompiledSampling(eager, eager, frames)


# ----------------------------------------------------------------------------- run.py config


def _job(tmp_path, potential: dict):
    from difftre_torch.config import parse_job

    return parse_job({"system": {"structure": "s.extxyz"}, "potential": {"path": "m.ckpt", **potential},
                      "state_points": [{"name": "T", "temperature_K": 300.0}], "trainer": {"updates": 0}},
                     tmp_path, str(tmp_path / "job.yaml"))


@pytest.mark.parametrize("fields, message", [
    ({"kind": "lennard_jones", "sigma_A": 3.0, "epsilon_eV": 0.01, "sampling_model": "m.nequip.pt2"},
     r"potential\.path: unknown field"),
    ({"kind": "nequip", "recompile": True}, r"potential: recompile needs"),
    ({"kind": "nequip", "recompile": "yes"}, r"potential\.recompile: expected true or false"),
    ({"kind": "nequip", "sampling_model": "m.nequip.pt2", "compile_for_sampling": True}, "not both"),
    ({"kind": "nequip", "sampling_model": "m.pt2"}, r"sampling_model: expected a \.nequip\.pt2"),
])
def test_job_config_errors_name_the_file_and_field(tmp_path, fields, message):
    from difftre_torch.config import ConfigError

    with pytest.raises(ConfigError, match=message) as info:
        _job(tmp_path, fields)
    assert str(tmp_path / "job.yaml") in str(info.value)


def test_a_missing_sampling_model_is_named(tmp_path):
    from difftre_torch.config import ConfigError
    from difftre_torch.workflow.build import build_sampling_potential

    job = _job(tmp_path, {"kind": "nequip", "sampling_model": "missing.nequip.pt2"})
    with pytest.raises(ConfigError, match=r"job.yaml: potential\.sampling_model: .*missing.nequip.pt2 does not exist"):
        build_sampling_potential(job, None, None, tmp_path / "out")


def test_job_config_without_sampling_fields_gives_none(tmp_path):
    from difftre_torch.workflow.build import build_sampling_potential

    assert build_sampling_potential(_job(tmp_path, {"kind": "nequip"}), None, None, tmp_path) is None


# ----------------------------------------------------------------------------- a real nequip-compile


@pytest.fixture(scope="module")
def real_compiled(tiny_nequip_checkpoint, tmp_path_factory):
    """``nequip-compile --mode aotinductor --target batch --device cpu`` of the tiny model, and
    the seconds it took."""
    t0 = time.perf_counter()
    path = compile_nequip(tiny_nequip_checkpoint, tmp_path_factory.mktemp("aoti") / "tiny.nequip.pt2")
    return path, time.perf_counter() - t0


def test_real_compiled_model_passes_the_check(tiny_nequip_checkpoint, real_compiled, system):
    path, compile_s = real_compiled
    _, frames = system
    compiled = load_nequip(path)
    assert compiled.inference_only and compiled.source.config["nequip_aoti_inputs"].endswith("batch num_atoms")
    for dtype in (None, torch.float64):
        eager = load_nequip(tiny_nequip_checkpoint, dtype=dtype)
        agreement = check_same_energies(eager, compiled, *frames)
        print(f"compile {compile_s:.1f} s; eager {dtype}: {agreement}")
        assert agreement.dtype == "float32"
    # one frame at a time, as AseSampler calls it (nequip's batch target exports num_frames >= 2)
    check_same_energies(eager, compiled, *(t[:1] for t in frames[:2]), frames[2])
    # the same model after one parameter step is refused: the .pt2 is frozen at θ̃
    with torch.no_grad():
        for p in eager.trainable_parameters():
            p.mul_(1 + 1e-3)
    with pytest.raises(ValueError, match=str(path)):
        CompiledSampling(eager, path, frames)


@pytest.mark.parametrize("sampler_kind", ["ase", "batched"])
def test_trainer_with_real_compiled_sampling_gives_the_eager_store(tiny_nequip_checkpoint, real_compiled,
                                                                   system, tmp_path, sampler_kind):
    """The same seeds, sampled once with the eager model and once with the compiled one: the
    stores have the same fields, shapes and dtypes, U_θ̃ of the compiled run is the eager
    model's energy of its snapshots, and the trajectories and energies agree to the check's
    tolerance (13 steps of 0.5 fs do not amplify force differences of ~1e-9 eV/Å to more)."""
    atoms, frames = system
    stores = []
    for use_compiled in (False, True):
        eager = load_nequip(tiny_nequip_checkpoint, dtype=torch.float64)
        sampling = CompiledSampling(eager, real_compiled[0], frames) if use_compiled else None
        trainer = make_trainer(eager, atoms, tmp_path / str(use_compiled), sampling_potential=sampling,
                               sampler_kind=sampler_kind)
        checked = check_energies_at_each_sample(trainer)
        trainer.step()
        assert checked
        assert trainer.sample_stats["T300"]["sampled_with"].startswith("compiled" if use_compiled else "trainable")
        stores.append(trainer.stores[0].state_dict())
    eager_store, compiled_store = stores
    assert eager_store.keys() == compiled_store.keys()
    rtol, atol = default_tolerance(torch.float32)
    for key, value in eager_store.items():
        other = compiled_store[key]
        if isinstance(value, torch.Tensor):
            assert (value.shape, value.dtype) == (other.shape, other.dtype), key
            if key in ("positions", "cells", "reference_energies"):
                torch.testing.assert_close(other, value, rtol=rtol, atol=atol, msg=key)
        elif isinstance(value, dict):
            assert value.keys() == other.keys()
            for name in value:
                torch.testing.assert_close(other[name], value[name], rtol=rtol, atol=atol)
        else:
            assert value == other, key


@pytest.mark.slow
def test_recompile_after_an_update(tiny_nequip_checkpoint, real_compiled, system, tmp_path):
    """recompile=True: after the first update the resample re-exports the refined weights
    (save_nequip → nequip-compile → load → check) and samples with the new compiled model."""
    atoms, frames = system
    eager = load_nequip(tiny_nequip_checkpoint)
    sampling = CompiledSampling(eager, real_compiled[0], frames, recompile=True, workdir=tmp_path / "aoti")
    trainer = make_trainer(eager, atoms, tmp_path / "run", sampling_potential=sampling, updates=2,
                           resample_ratio=1.0, recording=True)
    checked = check_energies_at_each_sample(trainer)
    trainer.fit()
    assert len(checked) == len(trainer.sampler.used) >= 2
    assert len(sampling.history) == 2 and sampling.history[1]["compile_s"] > 0
    assert sampling.history[1]["path"] == str(tmp_path / "aoti" / "sampling_1.nequip.pt2")
    assert (tmp_path / "aoti" / "sampling_1.nequip.pt2").exists()
    assert not sampling.is_current()  # the second update moved θ past the export (no final sample)
    with pytest.raises(ValueError, match="does not give the energies"):  # the first export is stale
        check_same_energies(eager, load_nequip(real_compiled[0]), *frames)
    assert all(p.inference_only for p in trainer.sampler.used)
    assert trainer.sampler.used[-1] is sampling.compiled
    print(f"re-export: {sampling.history[1]}")


def _nequip_job(root, checkpoint, sampling_model):
    """A run config: the C4N4 cell, the tiny NequIP model, an inline RDF target."""
    import yaml
    from ase.io import write

    atoms = tiny_cn_frames(n_frames=1, seed=4)[0]
    atoms.calc = None
    write(root / "start.extxyz", atoms)
    config = {
        "system": {"structure": "start.extxyz"},
        "potential": {"kind": "nequip", "path": str(checkpoint), "dtype": "float64", "device": "cpu",
                      "sampling_model": str(sampling_model)},
        "state_points": [{"name": "T300", "temperature_K": 300.0}],
        "sampler": SAMPLER,
        "trainer": {"updates": 1, "progress": False, "tensorboard": False, "final_sample": False},
        "targets": [{"name": "rdf", "observable": "rdf", "values": [1.0] * 10,
                     "x": [1.1 + 0.2 * k for k in range(10)], "options": {"weighting": "xray"}}],
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _trainer(job_path, out):
    from difftre_torch.config import load_job
    from difftre_torch.workflow.build import build_potential, build_system, build_targets
    from difftre_torch.workflow.steps import make_trainer

    job = load_job(job_path)
    atoms = build_system(job)
    return make_trainer(job, out, atoms, build_targets(job, job.targets), 0.0, build_potential(job, atoms))


def test_job_config_samples_with_the_compiled_model(tiny_nequip_checkpoint, real_compiled, tmp_path):
    trainer = _trainer(_nequip_job(tmp_path, tiny_nequip_checkpoint, real_compiled[0]), tmp_path / "out")
    assert isinstance(trainer.sampling_potential, CompiledSampling)
    trainer.step()
    assert trainer.sample_stats["T300"]["sampled_with"] == f"compiled {real_compiled[0]}"


def test_job_config_refuses_a_compiled_model_of_other_weights(tiny_nequip_checkpoint, real_compiled, tmp_path):
    """potential.path holds refined weights, sampling_model the original export: the run stops
    at load with an error naming the config file, the field and both model files."""
    from difftre_torch.config import ConfigError
    from difftre_torch.potentials.nequip_files import save_nequip

    refined = load_nequip(tiny_nequip_checkpoint)
    with torch.no_grad():
        for p in refined.trainable_parameters():
            p.mul_(1 + STEP)
    refined_path = save_nequip(refined, tmp_path / "refined.ckpt")
    job = _nequip_job(tmp_path, refined_path, real_compiled[0])
    with pytest.raises(ConfigError) as info:
        _trainer(job, tmp_path / "out")
    message = str(info.value)
    for part in (f"{job}: potential.sampling_model:", str(refined_path), str(real_compiled[0])):
        assert part in message, (part, message)
