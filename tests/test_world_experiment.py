"""recipes.world.experiment on tiny synthetic replicas written in the layout of recipes.world.jobs.

The replicas are the ideal 56-atom (2, 1, 1) g-C3N4 supercell, every frame independently
rattled (0.08 Å) in a cell scaled by ±1 % (NPT-like): frames are independent, so block errors
are honest and two replicas must agree within them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import write

from difftre_torch.checkpoint import atomic_write_json
from difftre_torch.experiment.readers import read_columns, read_gr
from difftre_torch.observables import (
    g_to_G,
    instrument_G,
    number_density,
    partial_rdfs,
    total_rdf,
)
from difftre_torch.sampling.base import SamplerConfig, StatePoint
from recipes.world import experiment as ex
from recipes.world import replica_noise
from recipes.world.replicas import load_replica
from recipes.world.jobs import MDJob, frames_to_atoms
from recipes.world.structures import gc3n4_supercell

N_FRAMES = 24  # < ExperimentConfig.quick().max_frames: no thinning; 4 blocks of 6, no trimming


def write_replica(runs: Path, name: str, seed: int, n_frames: int = N_FRAMES, calculator="reality",
                  temperature_K: float = 300.0, pressure_GPa: float = 1e-4):
    """A finished job directory (frames.extxyz without labels, done.json) as run_job writes it."""
    structure = gc3n4_supercell((2, 1, 1))
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        scale = np.diag([rng.uniform(0.99, 1.01)] * 2 + [rng.uniform(0.99, 1.01)])
        cell = structure.cell.array @ scale
        frac = structure.get_scaled_positions() + rng.normal(scale=0.08, size=(len(structure), 3)) @ np.linalg.inv(cell)
        frames.append({"positions": frac @ cell, "cell": cell, "temperature_K": temperature_K})
    md, state = SamplerConfig(timestep_fs=1.0), StatePoint("T_P", temperature_K, pressure_GPa=pressure_GPa)
    job = MDJob(name=name, calculator=calculator, md=md, state=state, equilibration_steps=0, frames=n_frames,
                stride=10, seed=seed, labels=False, meta={"cell": "train56"})
    out = runs / name
    out.mkdir(parents=True)
    write(out / "frames.extxyz", frames_to_atoms(structure, frames, {"job": name, "cell": "train56"}))
    atomic_write_json(out / "done.json", {"job": json.loads(json.dumps(asdict(job))), "n_frames": n_frames,
                                          "discarded_frames": 0, "wall_s": 0.0, "steps": n_frames * 10})
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one thread is ~10× faster than two on a busy machine (no spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def published(tmp_path_factory, one_thread):
    """Three independent reality replicas and one teacher replica, run through the CLI (--quick)."""
    root = tmp_path_factory.mktemp("world_experiment")
    runs = root / "runs"
    for k, seed in enumerate((101, 102, 103)):
        write_replica(runs, f"npt300_reality_cell112_s{seed}", seed=k)
    write_replica(runs, "npt300_teacher_cell112_s201", seed=9, calculator="teacher")
    (runs / "npt300_reality_cell112_s104").mkdir()  # unfinished: no done.json, must be ignored
    out = root / "experiment"
    summary = ex.main(["--runs", str(runs), "--out", str(out), "--quick", "--no-progress"])
    return runs, out, summary


def _csv(out: Path, name: str, function: str):
    return read_columns(out / f"{name}.csv", function)


def test_every_file_is_written(published):
    _, out, summary = published
    expected = {"lattice.json", "experiment_summary.json", "diagnostics/partials.npz", "diagnostics/teacher.npz"}
    for radiation in ("neutron", "xray"):
        expected |= {f"{radiation}.gr", f"{radiation}_lorch.gr", f"{radiation}.sq"}
        expected |= {f"{radiation}_{f}.csv" for f in ("rdf", "G_ideal", "G_instrument", "G_instrument_lorch", "S")}
    assert set(summary["files"]) == expected
    for name in expected:
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp"))
    assert [r["job"] for r in summary["replicas"]] == [f"npt300_reality_cell112_s{s}" for s in (101, 102, 103)]
    partials = np.load(out / "diagnostics" / "partials.npz")
    assert {"r_A", "g_C_C", "g_C_N", "g_N_N", "sigma_g_C_N"} <= set(partials.files)
    assert on_disk_summary(out) == json.loads(json.dumps(summary))


def on_disk_summary(out: Path) -> dict:
    return json.loads((out / "experiment_summary.json").read_text())


@pytest.mark.parametrize("radiation", ["neutron", "xray"])
def test_gr_and_sq_files_round_trip(published, radiation):
    _, out, _ = published
    config = ex.ExperimentConfig.quick()
    for suffix, lorch in ((".gr", False), ("_lorch.gr", True)):
        data = read_gr(out / f"{radiation}{suffix}")
        assert data.function == "G"
        meta = data.metadata
        assert meta["mode"] == radiation and meta["composition"] == {"C": 3.0, "N": 4.0}
        assert meta["q_min"] == config.q_min and meta["q_max"] == config.q_max == 25.0
        assert meta["temperature_K"] == 300.0
        assert meta["header"]["lorch"] == str(lorch)
        assert "recipes.world.experiment" in meta["header"]["generator"]
        assert data.sigma is not None and (data.sigma > 0).all()
        assert data.x[-1] < config.r_max_A and np.allclose(np.diff(data.x), config.bin_width_A)
        csv = _csv(out, f"{radiation}_G_instrument{'_lorch' if lorch else ''}", "G")
        np.testing.assert_array_equal(csv.x, data.x)
        np.testing.assert_array_equal(csv.values, data.values)
        np.testing.assert_array_equal(csv.sigma, data.sigma)
        target = data.to_target("G")  # the header carries the processing into the target
        assert target.options == {"q_min": 0.5, "q_max": 25.0, "weighting": radiation,
                                  "lorch": lorch, "r_max_A": float(meta["header"]["rmax_transform"])}
    sq = read_gr(out / f"{radiation}.sq")
    assert sq.function == "S" and sq.metadata["mode"] == radiation
    assert sq.x[0] == pytest.approx(0.5) and sq.x[-1] == pytest.approx(25.0)
    assert (sq.sigma > 0).all()
    assert abs(sq.values[-50:].mean() - 1.0) < 0.05  # S → 1 at large Q


def test_every_sigma_is_positive(published):
    _, out, _ = published
    for path in out.glob("*.csv"):
        function = {"rdf": "rdf", "S": "S"}.get(path.stem.split("_", 1)[1], "G")
        data = read_columns(path, function)
        assert data.sigma is not None and (data.sigma > 0).all(), path.name


def _frames(runs: Path, names):
    reps = [load_replica(runs / n) for n in names]
    pos = torch.cat([r.positions for r in reps])
    cells = torch.cat([r.cells for r in reps])
    return pos, cells, reps[0].numbers


def test_G_and_g_against_a_direct_computation(published):
    """Published G is the frame mean of 4πρ_f r (g_f − 1) (partial_rdfs, total_rdf, g_to_G here)
    and g is G_to_g of it at the mean density, so g_to_G(g, ⟨ρ⟩) gives G back; the frame mean
    ⟨g_f⟩ differs by cov(ρ_f, g_f)/⟨ρ⟩, as the summary reports."""
    runs, out, summary = published
    config = ex.ExperimentConfig.quick()
    pos, cells, numbers = _frames(runs, [f"npt300_reality_cell112_s{s}" for s in (101, 102, 103)])
    r_max = config.r_max_A + config.r_pad_A
    r, partials = partial_rdfs(pos, cells, numbers, r_max, int(round(r_max / config.bin_width_A)))
    g = total_rdf(partials, numbers, "neutron")
    rho = number_density(len(numbers), cells)
    G = g_to_G(r, g, rho)
    g_pub, G_pub = _csv(out, "neutron_rdf", "rdf"), _csv(out, "neutron_G_ideal", "G")
    n = len(g_pub.x)
    np.testing.assert_allclose(g_pub.x, r[:n].numpy(), atol=1e-12)
    np.testing.assert_allclose(G_pub.values, G.mean(0)[:n].numpy(), atol=1e-10)
    assert summary["number_density_per_A3"] == pytest.approx(float(rho.mean()), rel=1e-12)
    from_g = g_to_G(torch.tensor(g_pub.x), torch.tensor(g_pub.values), rho.mean()).numpy()
    np.testing.assert_allclose(from_g, G_pub.values, atol=1e-10)
    np.testing.assert_allclose(g_pub.values[:40], 0.0, atol=1e-12)  # no pair below 0.8 Å
    offset = np.abs(g.mean(0)[:n].numpy() - g_pub.values) / g_pub.sigma
    assert summary["rdf_vs_frame_mean_g"]["max_abs_over_sigma"] == pytest.approx(offset.max(), rel=1e-6)
    # the standard error of the 12 blocks, by hand, times the replicas' Birge ratio
    blocks = G.reshape(12, N_FRAMES // 4, -1).mean(1)[:, :n].numpy()
    sem = blocks.std(0, ddof=1) / math.sqrt(12) * summary["sigma_scale"].get("neutron_G_ideal", 1.0)
    fluctuating = sem > np.median(sem)
    np.testing.assert_allclose(G_pub.sigma[fluctuating], sem[fluctuating], rtol=1e-9)


def test_files_are_what_the_registry_computes_from_the_frames(published):
    """A target read back from each file, evaluated by the DiffTRe observable registry on the
    replicas' frames and averaged, gives the published values: the experiment and the refinement
    compute the same quantity (G through the Q window, S with the real-space window). The x-ray
    S(Q) with f(Q) is checked against total_structure_factor (the registry's "xray_q" raises in
    total_rdf before it gets there)."""
    from difftre_torch.observables import total_structure_factor
    from difftre_torch.observables.registry import static_observables

    runs, out, _ = published
    pos, cells, numbers = _frames(runs, [f"npt300_reality_cell112_s{s}" for s in (101, 102, 103)])
    targets = []
    for radiation in ("neutron", "xray"):
        targets.append(read_gr(out / f"{radiation}.gr").to_target(f"{radiation}_G"))
        targets.append(read_gr(out / f"{radiation}_lorch.gr").to_target(f"{radiation}_G_lorch", lorch=True))
    sq = read_gr(out / "neutron.sq")
    r_max = float(sq.metadata["header"]["rmax_transform"])
    targets.append(sq.to_target("neutron_S", lorch_r=True, r_max_A=r_max, bin_width_A=0.02))
    values = static_observables(pos, cells, torch.as_tensor(numbers), targets)
    for target in targets:
        np.testing.assert_allclose(values[target.name].mean(0).numpy(), target.values.numpy(),
                                   atol=1e-8, err_msg=target.name)
    xray = read_gr(out / "xray.sq")
    assert xray.metadata["header"]["weighting"] == "xray_q"
    r, partials = partial_rdfs(pos, cells, numbers, r_max, int(round(r_max / 0.02)))
    S = total_structure_factor(r, partials, numbers, number_density(len(numbers), cells),
                               torch.tensor(xray.x), weighting="xray", lorch=True)
    np.testing.assert_allclose(S.mean(0).numpy(), xray.values, atol=1e-8)


def test_instrument_G_from_G_matches_the_library():
    """instrument_G_from_G(G) is scattering.instrument_G(g, ρ) with G = 4πρr(g − 1)."""
    from recipes.world.experiment import instrument_G_from_G

    r = torch.arange(0.01, 12.0, 0.02, dtype=torch.float64)
    g = 1.0 + torch.exp(-((r - 1.4) ** 2) / 0.01) * 3.0 - torch.exp(-r)
    rho = torch.tensor(0.09, dtype=torch.float64)
    for lorch in (False, True):
        expected = instrument_G(r, g, rho, 0.5, 25.0, lorch=lorch)
        got = instrument_G_from_G(r, g_to_G(r, g, rho), 0.5, 25.0, lorch=lorch)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_lorch_window_smooths_the_termination_ripple(published):
    _, out, _ = published
    for radiation in ("neutron", "xray"):
        plain = _csv(out, f"{radiation}_G_instrument", "G").values
        lorch = _csv(out, f"{radiation}_G_instrument_lorch", "G").values
        roughness = lambda v: float((np.diff(v, 2) ** 2).sum())  # noqa: E731
        assert roughness(lorch) < 0.5 * roughness(plain)


def test_lattice_parameters_by_hand(published):
    runs, out, summary = published
    lattice = json.loads((out / "lattice.json").read_text())
    a, c, spacing = [], [], []
    for seed in (101, 102, 103):
        cells = load_replica(runs / f"npt300_reality_cell112_s{seed}").cells.numpy()
        lengths = np.linalg.norm(cells, axis=-1)
        a.append(0.5 * (lengths[:, 0] / 2 + lengths[:, 1] / 1))
        c.append(lengths[:, 2])
        spacing.append(cells[:, 2, 2] / 2)  # c ⊥ the layers in these cells
    for key, values in (("a_A", a), ("c_A", c), ("spacing_A", spacing)):
        values = np.array(values)  # [3 replicas, N_FRAMES]
        assert lattice[key] == pytest.approx(values.mean(), rel=1e-12)
        sem_replicas = values.mean(1).std(ddof=1) / math.sqrt(3)
        blocks = values.reshape(3, 4, N_FRAMES // 4).mean(-1).ravel()
        sem_blocks = blocks.std(ddof=1) / math.sqrt(12)
        detail = lattice["details"][key]
        assert detail["sem_replicas"] == pytest.approx(sem_replicas, rel=1e-9)
        assert detail["sem_blocks"] == pytest.approx(sem_blocks, rel=1e-9)
        assert lattice[key.replace("_A", "_err_A")] == pytest.approx(max(sem_replicas, sem_blocks), rel=1e-9)
    assert lattice["a_A"] == pytest.approx(7.13, abs=0.03)  # the ideal cell's a, ±1 % strain
    assert lattice["spacing_A"] == pytest.approx(3.3, abs=0.03)
    assert lattice["repeats"] == [2, 1, 1] and lattice["n_frames"] == 3 * N_FRAMES
    assert lattice["replicas"] == [r["job"] for r in summary["replicas"]]
    assert summary["lattice"]["c_A"]["value"] == lattice["c_A"]


def test_noise_check_on_independent_replicas(published):
    _, _, summary = published
    noise = summary["noise_check"]
    assert noise["replicas"] == ["npt300_reality_cell112_s101", "npt300_reality_cell112_s102"]
    assert noise["block_dof_per_replica"] == 3
    assert noise["expected_chi2_per_bin_if_consistent"] == pytest.approx(1.5)
    assert 0.3 < noise["chi2_per_bin"] < 5.0
    n_r = summary["grids"]["r_published_A"][2]
    assert 0.7 * n_r < noise["n_bins"] < n_r - 40  # no pair below 0.8 Å: those bins are skipped
    first = noise["pairs"]["npt300_reality_cell112_s101 vs npt300_reality_cell112_s102"]
    assert first["neutron_G_ideal"]["n_bins"] == noise["n_bins"]
    assert first["neutron_G_instrument"]["n_bins"] == first["xray_G_instrument"]["n_bins"] == n_r
    assert len(noise["pairs"]) == 3
    for entry in noise["pairs"].values():
        for stats in entry.values():
            assert math.isfinite(stats["chi2_per_bin"]) and stats["chi2_per_bin"] > 0
    teacher = summary["teacher_vs_reality"]
    assert teacher["job"] == "npt300_teacher_cell112_s201"
    assert math.isfinite(teacher["chi2_per_bin"]["neutron_rdf"]["chi2_per_bin"])
    assert set(teacher["lattice"]) == {"a_A", "c_A", "spacing_A", "density_g_cm3"}


def test_noise_check_on_identical_replicas_is_zero(published, tmp_path):
    runs, _, _ = published
    shutil.copytree(runs / "npt300_reality_cell112_s101", tmp_path / "npt300_reality_cell112_s101")
    shutil.copytree(runs / "npt300_reality_cell112_s101", tmp_path / "npt300_reality_cell112_s102")
    summary = ex.publish(tmp_path, tmp_path / "out", ex.ExperimentConfig.quick(), progress=False)
    assert summary["noise_check"]["chi2_per_bin"] == 0.0
    assert summary["teacher_vs_reality"] is None
    assert not (tmp_path / "out" / "diagnostics" / "teacher.npz").exists()


def test_birge_ratio_inflates_sigma_only_where_replicas_disagree():
    pair = {"g": {"chi2_per_bin": 3.0}, "G": {"chi2_per_bin": 0.5}, "S": {"chi2_per_bin": math.nan}}
    noise = {"expected_chi2_per_bin_if_consistent": 1.5, "pairs": {"a vs b": pair}}
    assert replica_noise.birge_ratios(noise) == {"g": pytest.approx(math.sqrt(2.0)), "G": 1.0}
    assert replica_noise.birge_ratios(None) == {}


def test_published_sigma_is_the_scaled_block_error(published, tmp_path):
    """σ in the files = floor(raw block σ × the summary's sigma_scale); without inflation the
    raw σ (same frames, same blocks)."""
    runs, out, summary = published
    plain = ex.publish(runs, tmp_path / "plain", dataclasses.replace(ex.ExperimentConfig.quick(), inflate_sigma=False),
                       progress=False)
    assert plain["sigma_scale"] == {} and set(summary["sigma_scale"]) >= {"neutron_rdf", "neutron_S"}
    for name, scale in summary["sigma_scale"].items():
        function = {"rdf": "rdf", "S": "S"}.get(name.split("_", 1)[1], "G")
        inflated = read_columns(out / f"{name}.csv", function).sigma
        raw = read_columns(tmp_path / "plain" / f"{name}.csv", function).sigma
        floor = ex.ExperimentConfig.quick().sigma_floor_fraction
        unfloored = raw > floor * np.median(raw) * 1.01  # bins where neither floor acts
        np.testing.assert_allclose(inflated[unfloored], scale * raw[unfloored], rtol=1e-6)


def test_no_finished_replicas_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished reality replicas"):
        ex.publish(tmp_path, tmp_path / "out", ex.ExperimentConfig.quick(), progress=False)


def test_floored_sigma():
    floored = ex.floored_sigma(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0.1)
    assert floored.tolist() == pytest.approx([0.2, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="every σ is zero"):
        ex.floored_sigma(torch.zeros(3), 0.1)


def _replica_functions(n_replicas: int, offset_sd: float, seed: int = 0, n_blocks: int = 10, n_bins: int = 400):
    """Block values of one function: per replica a slow offset per bin (sd ``offset_sd``, the
    mode slower than a block) plus block noise of sd 1."""
    gen = torch.Generator().manual_seed(seed)
    values = torch.cat([torch.randn(1, n_bins, generator=gen, dtype=torch.float64) * offset_sd
                        + torch.randn(n_blocks, n_bins, generator=gen, dtype=torch.float64)
                        for _ in range(n_replicas)])
    slices = [slice(k * n_blocks, (k + 1) * n_blocks) for k in range(n_replicas)]
    names = [f"s{k}" for k in range(n_replicas)]
    return names, {"g": (torch.arange(n_bins), values)}, slices, torch.ones(n_replicas * n_blocks)


def test_held_out_check_passes_a_replica_scatter_the_birge_ratio_describes():
    """Replica offsets of sd 0.3 against a block σ of 1/√10: raw χ² ≈ 1 + 10·0.09 ≈ 1.9 between
    pairs; scaled by the others' Birge ratio a held-out replica comes back near 1.1-1.2."""
    names, functions, slices, frames = _replica_functions(6, 0.3)
    noise = replica_noise.noise_check(names, functions, slices, 9, {})
    raw = [pair["g"]["chi2_per_bin"] for pair in noise["pairs"].values()]
    assert 1.5 < sum(raw) / len(raw) < 2.5
    loo = replica_noise.leave_one_out(names, functions, slices, frames, 9, {})
    assert loo["expected_chi2_per_bin_if_consistent"] == pytest.approx(9 / 8)
    assert 0.9 < loo["mean_chi2_per_bin"]["g"] < 1.5
    for entry in loo["replicas"].values():
        assert entry["g"]["sigma_scale"] > 1.1 and entry["g"]["n_bins"] == 400


def test_held_out_check_flags_a_replica_outside_the_published_sigma():
    names, functions, slices, frames = _replica_functions(5, 0.0)
    x, values = functions["g"]
    shifted = values.clone()
    shifted[slices[4]] += 1.0  # 3σ of a replica mean: a registry the others never visited
    functions = {"g": (x, shifted)}
    check = replica_noise.held_out_check(names, functions, slices, frames, 9, {}, ["s4"])
    assert check["rest"] == ["s0", "s1", "s2", "s3"]
    assert check["replicas"]["s4"]["g"]["sigma_scale"] == pytest.approx(1.0, abs=0.1)
    assert check["replicas"]["s4"]["g"]["chi2_per_bin"] > 5.0
    consistent = replica_noise.held_out_check(names, functions, slices, frames, 9, {}, ["s0"])["replicas"]["s0"]["g"]
    assert consistent["chi2_per_bin"] < 2.5  # s4 in the rest inflates σ but does not bias s0


def test_held_out_check_errors_name_the_replicas():
    names, functions, slices, frames = _replica_functions(3, 0.0)
    with pytest.raises(ValueError, match="s9"):
        replica_noise.held_out_check(names, functions, slices, frames, 9, {}, ["s9"])
    with pytest.raises(ValueError, match="two replicas besides"):
        replica_noise.held_out_check(names, functions, slices, frames, 9, {}, ["s0", "s1"])
    assert replica_noise.leave_one_out(names[:2], functions, slices[:2], frames[:20], 9, {}) is None


def test_summary_reports_the_leave_one_out_check(published):
    _, _, summary = published
    loo = summary["held_out_check"]
    assert set(loo["replicas"]) == {r["job"] for r in summary["replicas"]}
    for entry in loo["replicas"].values():
        assert math.isfinite(entry["neutron_rdf"]["chi2_per_bin"]) and entry["neutron_rdf"]["sigma_scale"] >= 1.0
    assert loo["mean_chi2_per_bin"]["neutron_rdf"] > 0


def test_publish_tests_named_replicas_against_the_others(published, tmp_path):
    runs, _, _ = published
    summary = ex.main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--quick", "--no-progress",
                       "--held-out", "npt300_reality_cell112_s103"])
    split = summary["held_out_check"]["split"]
    assert split["rest"] == ["npt300_reality_cell112_s101", "npt300_reality_cell112_s102"]
    entry = split["replicas"]["npt300_reality_cell112_s103"]["neutron_rdf"]
    loo = summary["held_out_check"]["replicas"]["npt300_reality_cell112_s103"]["neutron_rdf"]
    assert entry == loo  # with three replicas, holding one out is the leave-one-out entry


def test_replicas_new_since_the_last_publication(tmp_path):
    """--held-out new: the replicas the published summary did not use, if two others remain."""
    path = tmp_path / "experiment_summary.json"
    names = ["s101", "s102", "s103", "s104", "s105"]
    assert ex.replicas_new_since(path, names) == []  # nothing published yet
    path.write_text(json.dumps({"replicas": [{"job": n} for n in names[:3]]}))
    assert ex.replicas_new_since(path, names) == ["s104", "s105"]
    assert ex.replicas_new_since(path, names[:3]) == []
    path.write_text(json.dumps({"replicas": [{"job": "s101"}]}))
    assert ex.replicas_new_since(path, names[:3]) == []  # one old replica cannot publish a σ
    path.write_text(json.dumps({"lattice": {}}))
    with pytest.raises(ValueError, match="experiment_summary.json: expected an experiment summary with 'replicas'"):
        ex.replicas_new_since(path, names)


def test_republishing_with_held_out_new_tests_the_new_replica(published, tmp_path):
    """A fourth replica finished after the first publication: ``--held-out new`` tests it (and
    only it) against the σ of the three already published."""
    runs, out, _ = published
    shutil.copytree(runs, tmp_path / "runs")
    shutil.rmtree(tmp_path / "runs" / "npt300_reality_cell112_s104")
    write_replica(tmp_path / "runs", "npt300_reality_cell112_s104", seed=3)
    shutil.copytree(out, tmp_path / "experiment")
    summary = ex.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "experiment"), "--quick",
                       "--no-progress", "--held-out", "new"])
    split = summary["held_out_check"]["split"]
    assert list(split["replicas"]) == ["npt300_reality_cell112_s104"]
    assert split["rest"] == [f"npt300_reality_cell112_s{s}" for s in (101, 102, 103)]
