"""Tests of :mod:`difftre_torch.trajectories`: LAMMPS text dumps against ASE's own reader and
against structures generated with ASE, LAMMPS data files written by ASE, extxyz via ase.io."""

from __future__ import annotations

import gzip
import re
import warnings

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.lammps import Prism
from ase.geometry import cell_to_cellpar, get_distances
from ase.io import read, write

from difftre_torch.frames import FramesError
from difftre_torch.trajectories import (
    TrajectoryError,
    TrajectoryFrame,
    TrajectoryWarning,
    count_frames,
    iter_frames,
    parse_type_map,
)

CN = {1: 6, 2: 7}


# ---------------------------------------------------------------- dump writing (test side)

def bounds_block(xlo, xhi, ylo, yhi, zlo, zhi, xy=None, xz=0.0, yz=0.0) -> list[str]:
    """``ITEM: BOX BOUNDS`` and its 3 lines for a LAMMPS box: orthogonal when ``xy`` is None, else
    restricted triclinic written as a bounding box (LAMMPS manual, Howto_triclinic)."""
    xlo, xhi, ylo, yhi, zlo, zhi = map(float, (xlo, xhi, ylo, yhi, zlo, zhi))
    if xy is None:
        return ["ITEM: BOX BOUNDS pp pp pp", f"{xlo!r} {xhi!r}", f"{ylo!r} {yhi!r}", f"{zlo!r} {zhi!r}"]
    xy, xz, yz = map(float, (xy, xz, yz))
    return ["ITEM: BOX BOUNDS xy xz yz pp pp pp",
            f"{xlo + min(0.0, xy, xz, xy + xz)!r} {xhi + max(0.0, xy, xz, xy + xz)!r} {xy!r}",
            f"{ylo + min(0.0, yz)!r} {yhi + max(0.0, yz)!r} {xz!r}",
            f"{zlo!r} {zhi!r} {yz!r}"]


def dump_frame(timestep, box: list[str], columns: str, rows, n_atoms=None) -> str:
    lines = ["ITEM: TIMESTEP", str(timestep), "ITEM: NUMBER OF ATOMS", str(len(rows) if n_atoms is None else n_atoms),
             *box, f"ITEM: ATOMS {columns}"]
    lines += [" ".join(v if isinstance(v, str) else repr(v.item() if hasattr(v, "item") else v) for v in row)
              for row in rows]
    return "\n".join(lines) + "\n"


def rows_of(ids, types, coordinates):
    return [(int(i), int(t), *map(float, r)) for i, t, r in zip(ids, types, coordinates)]


def same_mod_lattice(a, b, cell, atol=1e-8):
    d = (np.asarray(a) - np.asarray(b)) @ np.linalg.inv(cell)
    return np.allclose(d - np.round(d), 0.0, atol=atol)


def simple_dump(tmp_path, n_frames=3, n_atoms=4, name="traj.dump", seed=0):
    rng = np.random.default_rng(seed)
    box = bounds_block(0.0, 10.0, 0.0, 11.0, 0.0, 12.0)
    text = "".join(dump_frame(100 * k, box, "id type x y z",
                              rows_of(range(1, n_atoms + 1), [1, 2] * (n_atoms // 2), rng.random((n_atoms, 3)) * 10))
                   for k in range(n_frames))
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- parse_type_map

def test_type_map_from_symbols():
    assert parse_type_map(["C", "N"]) == {1: 6, 2: 7}
    assert parse_type_map("C N") == {1: 6, 2: 7}
    assert parse_type_map() is None


def test_type_map_unknown_symbol():
    with pytest.raises(TrajectoryError, match="Qq"):
        parse_type_map(["C", "Qq"])


def _cn_atoms():
    atoms = bulk("C", "diamond", a=3.57, cubic=True)
    atoms.symbols[::2] = "N"
    return atoms


def test_type_map_from_ase_data_file(tmp_path):
    path = tmp_path / "cn.data"
    write(path, _cn_atoms(), format="lammps-data", masses=True, specorder=["N", "C"])
    assert "Masses" in path.read_text() and "# N" in path.read_text()
    assert parse_type_map(data_file=path) == {1: 7, 2: 6}
    # without the '# N' comments the masses alone decide
    bare = tmp_path / "bare.data"
    bare.write_text(re.sub(r"#\s*[A-Z][a-z]?\s*$", "", path.read_text(), flags=re.M))
    assert "# N" not in bare.read_text()
    assert parse_type_map(data_file=bare) == {1: 7, 2: 6}
    assert parse_type_map(["N", "C"], data_file=path) == {1: 7, 2: 6}
    with pytest.raises(TrajectoryError, match="disagree"):
        parse_type_map(["C", "N"], data_file=path)


def _data_with_masses(tmp_path, masses: str):
    path = tmp_path / "bad.data"
    path.write_text("title\n\n2 atoms\n2 atom types\n\n0 10 xlo xhi\n0 10 ylo yhi\n0 10 zlo zhi\n\n"
                    f"Masses\n\n{masses}\n\nAtoms # atomic\n\n1 1 0 0 0\n2 2 1 1 1\n")
    return path


def test_type_map_bad_mass(tmp_path):
    path = _data_with_masses(tmp_path, "1 12.011\n2 50.5")
    with pytest.raises(TrajectoryError) as err:
        parse_type_map(data_file=path)
    message = str(err.value)
    assert "bad.data" in message and "Masses" in message and "type 2" in message and "50.5" in message


def test_type_map_ambiguous_mass_and_comment_wins(tmp_path):
    with pytest.raises(TrajectoryError, match="several elements"):   # Ar 39.948, Ca 40.078
        parse_type_map(data_file=_data_with_masses(tmp_path, "1 12.011\n2 40.01"))
    assert parse_type_map(data_file=_data_with_masses(tmp_path, "1 12.011\n2 40.01 # Ca")) == {1: 6, 2: 20}


def test_type_map_no_masses(tmp_path):
    path = tmp_path / "nomass.data"
    path.write_text("title\n\n1 atoms\n1 atom types\n\n0 10 xlo xhi\n0 10 ylo yhi\n0 10 zlo zhi\n\n"
                    "Atoms # atomic\n\n1 1 0 0 0\n")
    with pytest.raises(TrajectoryError, match="no Masses"):
        parse_type_map(data_file=path)


# ---------------------------------------------------------------- dumps against ASE's reader

def _ase_frames(path):
    return read(path, index=":", format="lammps-dump-text", specorder=["C", "N"])


def test_orthogonal_xyz_against_ase(tmp_path):
    rng = np.random.default_rng(1)
    box = bounds_block(-1.5, 8.5, 0.5, 9.5, -3.0, 9.0)
    path = tmp_path / "ortho.dump"
    path.write_text("".join(dump_frame(k, box, "id type x y z vx vy vz",
                                       [r + (0.1, 0.2, 0.3) for r in
                                        rows_of(range(1, 7), [1, 2, 1, 2, 2, 1], rng.random((6, 3)) * 9)])
                            for k in (0, 10)))
    mine, theirs = list(iter_frames(path, type_map=CN)), _ase_frames(path)
    assert [f.timestep for f in mine] == [0, 10] and [f.index for f in mine] == [0, 1]
    for f, atoms in zip(mine, theirs):
        np.testing.assert_allclose(f.cell, atoms.cell.array)
        np.testing.assert_allclose(f.positions + [-1.5, 0.5, -3.0], atoms.positions)   # ours from the origin
        np.testing.assert_array_equal(f.numbers, atoms.numbers)
        assert f.positions.dtype == np.float64 and f.positions.shape == (6, 3)


def test_triclinic_scaled_against_ase(tmp_path):
    rng = np.random.default_rng(2)
    box = bounds_block(-2.0, 9.0, 1.0, 10.0, 0.5, 8.5, xy=2.5, xz=-1.5, yz=1.25)
    path = tmp_path / "tri.dump"
    path.write_text(dump_frame(7, box, "id type xs ys zs", rows_of(range(1, 9), [1, 2] * 4, rng.random((8, 3)))))
    (f,), (atoms,) = list(iter_frames(path, type_map=CN)), _ase_frames(path)
    np.testing.assert_allclose(f.cell, [[11.0, 0, 0], [2.5, 9.0, 0], [-1.5, 1.25, 8.0]])
    np.testing.assert_allclose(f.cell, atoms.cell.array)
    np.testing.assert_allclose(atoms.get_celldisp().ravel(), [-2.0, 1.0, 0.5])
    # ASE places scaled coordinates at s @ cell (its celldisp not added), as we do
    assert same_mod_lattice(f.positions, atoms.positions, f.cell)
    np.testing.assert_allclose(f.positions, atoms.positions)


def test_unwrapped_outside_box_against_ase(tmp_path):
    rng = np.random.default_rng(3)
    box = bounds_block(0.0, 10.0, 0.0, 10.0, 0.0, 10.0, xy=1.0, xz=0.5, yz=-0.7)
    coordinates = rng.random((5, 3)) * 40 - 15     # well outside the box
    path = tmp_path / "unwrapped.dump"
    # x y z present too (wrapped, here nonsense): xu yu zu must win
    path.write_text(dump_frame(0, box, "id type xu yu zu x y z",
                               [r + (0.0, 0.0, 0.0) for r in rows_of(range(1, 6), [1, 1, 2, 2, 1], coordinates)]))
    (f,) = iter_frames(path, type_map=CN)
    np.testing.assert_allclose(f.positions, coordinates)
    no_wrapped = tmp_path / "unwrapped_only.dump"
    no_wrapped.write_text(dump_frame(0, box, "id type xu yu zu", rows_of(range(1, 6), [1, 1, 2, 2, 1], coordinates)))
    (atoms,) = _ase_frames(no_wrapped)
    np.testing.assert_allclose(f.positions, atoms.positions)   # both unwrapped, origin 0
    np.testing.assert_allclose(f.cell, atoms.cell.array)


def test_out_of_order_ids_against_ase(tmp_path):
    rng = np.random.default_rng(4)
    ids = np.array([5, 2, 9, 1, 3])
    types = np.array([1, 2, 2, 1, 1])
    coordinates = rng.random((5, 3)) * 10
    path = tmp_path / "shuffled.dump"
    path.write_text(dump_frame(0, bounds_block(0, 10, 0, 10, 0, 10), "id type x y z", rows_of(ids, types, coordinates)))
    (f,), (atoms,) = list(iter_frames(path, type_map=CN)), _ase_frames(path)
    order = np.argsort(ids)
    np.testing.assert_allclose(f.positions, coordinates[order])
    np.testing.assert_array_equal(f.numbers, np.array([6, 7])[types[order] - 1])
    np.testing.assert_allclose(f.positions, atoms.positions)
    np.testing.assert_array_equal(f.numbers, atoms.numbers)


def test_general_triclinic_against_ase(tmp_path):
    rng = np.random.default_rng(5)
    cell = np.array([[6.0, 1.0, 0.5], [-1.0, 7.0, 0.3], [0.2, -0.4, 8.0]])
    origin = np.array([1.0, -2.0, 0.5])
    fractional = rng.random((4, 3))
    path = tmp_path / "general.dump"
    box = ["ITEM: BOX BOUNDS abc origin pp pp pp"] + [" ".join(map(repr, [*map(float, v), float(o)])) for v, o in zip(cell, origin)]
    path.write_text(dump_frame(0, box, "id type x y z", rows_of(range(1, 5), [1, 2, 1, 2], origin + fractional @ cell)))
    (f,), (atoms,) = list(iter_frames(path, type_map=CN)), _ase_frames(path)
    np.testing.assert_allclose(f.cell, cell)
    np.testing.assert_allclose(f.cell, atoms.cell.array)
    np.testing.assert_allclose(f.positions, fractional @ cell, atol=1e-12)
    np.testing.assert_allclose(f.positions + atoms.get_celldisp().ravel(), atoms.positions)


# ---------------------------------------------------------------- a physical triclinic cell

def test_physical_triclinic_roundtrip(tmp_path):
    rng = np.random.default_rng(6)
    atoms = bulk("Si", "diamond", a=5.43).repeat((2, 2, 2))     # primitive fcc cell: 60 degree angles
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.05 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.rattle(0.1, seed=1)
    atoms.positions += rng.integers(-1, 2, (len(atoms), 3)) @ atoms.cell.array    # some atoms unwrapped
    prism = Prism(atoms.cell.array)
    xhi, yhi, zhi, xy, xz, yz = prism.get_lammps_prism()
    origin = np.array([-3.0, 2.0, 1.5])
    lammps_positions = prism.vector_to_lammps(atoms.positions) + origin
    ids = rng.permutation(len(atoms)) + 1
    box = bounds_block(origin[0], origin[0] + xhi, origin[1], origin[1] + yhi, origin[2], origin[2] + zhi, xy, xz, yz)
    path = tmp_path / "si.dump"
    path.write_text(dump_frame(0, box, "id element x y z",
                               [(str(i), "Si", *map(float, r)) for i, r in zip(ids, lammps_positions)]))
    (f,) = iter_frames(path)
    order = np.argsort(ids)
    np.testing.assert_allclose(cell_to_cellpar(f.cell), cell_to_cellpar(atoms.cell.array), rtol=1e-10)
    np.testing.assert_allclose(f.positions @ np.linalg.inv(f.cell),
                               atoms.get_scaled_positions(wrap=False)[order], atol=1e-10)
    _, mine = get_distances(f.positions, cell=f.cell, pbc=True)
    _, theirs = get_distances(atoms.positions[order], cell=atoms.cell, pbc=True)
    np.testing.assert_allclose(mine, theirs, atol=1e-9)
    assert (f.numbers == 14).all()


# ---------------------------------------------------------------- malformed dumps

def _two_frames(tmp_path, mutate, name="bad.dump"):
    """Two good 3-atom frames, the second's text passed through ``mutate``."""
    box = bounds_block(0, 10, 0, 10, 0, 10)
    rows = [(1, 1, 1.0, 1.0, 1.0), (2, 2, 2.0, 2.0, 2.0), (3, 1, 3.0, 3.0, 3.0)]
    path = tmp_path / name
    path.write_text(dump_frame(0, box, "id type x y z", rows) + mutate(dump_frame(50, box, "id type x y z", rows)))
    return path


def _error(path, type_map=CN) -> str:
    with pytest.raises(TrajectoryError) as err:
        list(iter_frames(path, type_map=type_map))
    message = str(err.value)
    assert path.name in message and "frame" in message, message
    return message


@pytest.mark.parametrize(("columns", "needed"), [("type x y z", "'id'"), ("id x y z", "'type' or 'element'"),
                                                  ("id type x y", "x y z")])
def test_missing_columns(tmp_path, columns, needed):
    message = _error(_two_frames(tmp_path, lambda t: t.replace("ITEM: ATOMS id type x y z", f"ITEM: ATOMS {columns}")))
    assert "frame 1 (timestep 50)" in message and "ITEM: ATOMS" in message and needed in message


def test_type_not_in_map(tmp_path):
    message = _error(_two_frames(tmp_path, lambda t: t.replace("2 2 2.0", "2 3 2.0")))
    assert "frame 1 (timestep 50)" in message and "'type'" in message and "[3]" in message and "1=C, 2=N" in message


def test_types_without_map(tmp_path):
    message = _error(_two_frames(tmp_path, lambda t: t), type_map=None)
    assert "frame 0 (timestep 0)" in message and "'type'" in message and "--types" in message


def test_non_numeric_atom_line(tmp_path):
    path = _two_frames(tmp_path, lambda t: t.replace("2 2 2.0 2.0 2.0", "2 2 2.0 abc 2.0"))
    message = _error(path)
    assert "frame 1 (timestep 50)" in message and "line 23" in message and "'y'" in message
    assert path.read_text().splitlines()[22] == "2 2 2.0 abc 2.0"


def test_wrong_length_atom_line(tmp_path):
    message = _error(_two_frames(tmp_path, lambda t: t.replace("3 1 3.0 3.0 3.0", "3 1 3.0 3.0")))
    assert "frame 1 (timestep 50)" in message and "line 24" in message and "4 values" in message


def test_atom_count_changes(tmp_path):
    path = _two_frames(tmp_path, lambda t: t.replace("ITEM: NUMBER OF ATOMS\n3", "ITEM: NUMBER OF ATOMS\n2")
                       .replace("3 1 3.0 3.0 3.0\n", ""))
    message = _error(path)
    assert "frame 1 (timestep 50)" in message and "NUMBER OF ATOMS" in message and "is 2" in message


def test_duplicate_ids(tmp_path):
    message = _error(_two_frames(tmp_path, lambda t: t.replace("3 1 3.0", "2 1 3.0")))
    assert "frame 1 (timestep 50)" in message and "'id'" in message and "duplicate" in message and "[2]" in message


def test_frame_cut_off_mid_file(tmp_path):
    box = bounds_block(0, 10, 0, 10, 0, 10)
    rows = [(1, 1, 1.0, 1.0, 1.0), (2, 2, 2.0, 2.0, 2.0), (3, 1, 3.0, 3.0, 3.0)]
    cut = dump_frame(0, box, "id type x y z", rows)
    cut = cut[:cut.index("3 1 3.0")]           # frame 0 loses its last atom line
    path = tmp_path / "cut.dump"
    path.write_text(cut + dump_frame(50, box, "id type x y z", rows))
    message = _error(path)
    assert "frame 0 (timestep 0)" in message and "2 of its 3 atom lines" in message and "cut off" in message


def test_more_atom_lines_than_declared(tmp_path):
    message = _error(_two_frames(tmp_path, lambda t: t + "4 1 4.0 4.0 4.0\n"))
    assert "frame 1 (timestep 50)" in message and "NUMBER OF ATOMS" in message


@pytest.mark.parametrize(("keep", "detail"), [
    (lambda t: t[:t.index("3 1 3.0")], "2 of its 3 atom lines"),                   # mid atom block
    (lambda t: t[:t.index("3 1 3.0") + 9], "2 (and part of one) of its 3"),        # mid line
    (lambda t: t[:t.index("ITEM: ATOMS")], "none of its 3 atom lines"),            # after the box
    (lambda t: t[:t.index("0 10", t.index("BOX")) + 2], "none of its 3 atom lines"),  # mid box
    (lambda t: t[:t.index("ITEM: NUMBER")], "none of its atom lines"),             # header only
])
def test_truncated_last_frame_warns_and_is_skipped(tmp_path, keep, detail):
    path = _two_frames(tmp_path, keep)
    with pytest.warns(TrajectoryWarning) as record:
        frames = list(iter_frames(path, type_map=CN))
    message = str(record[0].message)
    assert path.name in message and "frame 1 (timestep 50)" in message and detail in message and "skipped" in message
    assert [f.index for f in frames] == [0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert count_frames(path) == 1


def test_general_triclinic_bad_shape(tmp_path):
    box = ["ITEM: BOX BOUNDS abc origin pp pp pp", "6 0 0", "0 7 0", "0 0 8"]
    path = tmp_path / "abc.dump"
    path.write_text(dump_frame(0, box, "id type x y z", [(1, 1, 1.0, 1.0, 1.0)]))
    assert "abc origin" in _error(path)


def test_error_is_a_frames_error():
    assert issubclass(TrajectoryError, FramesError) and issubclass(TrajectoryError, ValueError)
    assert issubclass(TrajectoryWarning, UserWarning)


# ---------------------------------------------------------------- formats, skip/every, counting

def test_skip_every_and_count(tmp_path):
    path = simple_dump(tmp_path, n_frames=7)
    assert count_frames(path) == 7
    frames = list(iter_frames(path, type_map=CN, skip=2, every=2))
    assert [f.index for f in frames] == [2, 4, 6] and [f.timestep for f in frames] == [200, 400, 600]
    every = list(iter_frames(path, type_map=CN))
    for f in frames:
        np.testing.assert_array_equal(f.positions, every[f.index].positions)
    with pytest.raises(ValueError):
        list(iter_frames(path, type_map=CN, every=0))


def test_count_on_small_chunks(tmp_path):
    """The byte counter finds ITEM: TIMESTEP across chunk boundaries."""
    from difftre_torch.trajectories import _count_dump

    path = simple_dump(tmp_path, n_frames=5)
    for chunk in (3, 7, 16, 1 << 20):
        assert _count_dump(path, chunk_bytes=chunk) == 5


def test_units_time_items_and_element_column(tmp_path):
    box = bounds_block(0, 10, 0, 10, 0, 10)
    rows = [("2", "N", "1.0", "2.0", "3.0"), ("1", "C", "4.0", "5.0", "6.0")]
    path = tmp_path / "dump.lammpstrj"
    path.write_text("ITEM: UNITS\nmetal\n" + "".join(f"ITEM: TIME\n{0.5 * k}\n" + dump_frame(k, box, "id element x y z", rows)
                                                     for k in range(3)))
    frames = list(iter_frames(path))
    assert len(frames) == 3 == count_frames(path)
    np.testing.assert_array_equal(frames[0].numbers, [6, 7])
    np.testing.assert_allclose(frames[0].positions, [[4.0, 5.0, 6.0], [1.0, 2.0, 3.0]])


def test_gzip_dump(tmp_path):
    path = simple_dump(tmp_path, n_frames=4)
    zipped = tmp_path / "traj.dump.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    plain, packed = list(iter_frames(path, type_map=CN)), list(iter_frames(zipped, type_map=CN))
    assert count_frames(zipped) == 4 == len(packed)
    for a, b in zip(plain, packed):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.timestep == b.timestep


def test_extxyz_via_ase(tmp_path):
    images = []
    for k in range(5):
        atoms = _cn_atoms()
        atoms.rattle(0.05, seed=k)
        images.append(atoms)
    path = tmp_path / "traj.extxyz"
    write(path, images, format="extxyz")
    frames = list(iter_frames(path))
    assert count_frames(path) == 5 == len(frames)
    for f, atoms in zip(frames, images):
        assert isinstance(f, TrajectoryFrame)
        np.testing.assert_allclose(f.positions, atoms.positions, atol=1e-7)   # extxyz writes 8 decimals
        np.testing.assert_allclose(f.cell, atoms.cell.array)
        np.testing.assert_array_equal(f.numbers, atoms.numbers)
    assert [f.index for f in iter_frames(path, skip=1, every=3)] == [1, 4]


def test_extxyz_without_cell(tmp_path):
    path = tmp_path / "molecule.xyz"
    path.write_text("2\n\nC 0 0 0\nN 0 0 1.1\n")
    with pytest.raises(TrajectoryError, match="no periodic cell"):
        list(iter_frames(path))


def test_lammps_data_file_is_one_frame(tmp_path):
    atoms = _cn_atoms()
    atoms.rattle(0.05, seed=3)
    path = tmp_path / "cn.data"
    write(path, atoms, format="lammps-data", masses=True, specorder=["C", "N"])
    (f,) = iter_frames(path)
    assert count_frames(path) == 1 and f.index == 0 and f.timestep is None
    np.testing.assert_array_equal(f.numbers, atoms.numbers)
    np.testing.assert_allclose(f.cell, atoms.cell.array, atol=1e-12)   # cubic: LAMMPS orientation already
    assert same_mod_lattice(f.positions, atoms.positions, f.cell)
    (g,) = iter_frames(path, type_map={1: 6, 2: 7}, fmt="lammps-data")
    np.testing.assert_array_equal(g.numbers, atoms.numbers)
    with pytest.raises(TrajectoryError, match="not in the type map"):
        list(iter_frames(path, type_map={1: 6}))


def test_lammps_data_origin_subtracted(tmp_path):
    path = tmp_path / "data.shifted"
    path.write_text("title\n\n2 atoms\n2 atom types\n\n-5 5 xlo xhi\n1 11 ylo yhi\n2 12 zlo zhi\n\n"
                    "Masses\n\n1 12.011\n2 14.007\n\nAtoms # atomic\n\n1 1 -4 2 3\n2 2 0 6 7\n")
    (f,) = iter_frames(path)
    np.testing.assert_allclose(f.positions, [[1, 1, 1], [5, 5, 5]])
    np.testing.assert_array_equal(f.numbers, [6, 7])
    np.testing.assert_allclose(f.cell, np.eye(3) * 10)


def test_missing_file(tmp_path):
    with pytest.raises(TrajectoryError, match="no such file"):
        list(iter_frames(tmp_path / "nope.dump"))
