"""Observables of snapshots: partial/total RDFs, the g(r) ↔ G(r) ↔ S(Q) ↔ F(Q) transforms, and
thermodynamic/cell observables (pressure, stress, lattice lengths, density).

Conventions (G(r) = 4πρr(g − 1), F(Q) = Q(S − 1), Faber–Ziman weights, units) are stated in
:mod:`.scattering`; the RDF normalisation and binning in :mod:`.rdf`.
"""

from .rdf import partial_rdfs, total_rdf
from .scattering import (
    F_to_S,
    G_to_g,
    G_to_S,
    S_to_F,
    S_to_G,
    concentrations,
    faber_ziman_weights,
    g_to_G,
    g_to_S,
    instrument_G,
    neutron_scattering_lengths,
    number_density,
    total_structure_factor,
    xray_form_factors,
)
from .thermo import (
    interlayer_spacing,
    lattice_angles,
    lattice_lengths,
    mass_density,
    pressure,
    stress_tensor,
)

__all__ = [
    "F_to_S",
    "G_to_S",
    "G_to_g",
    "S_to_F",
    "S_to_G",
    "concentrations",
    "faber_ziman_weights",
    "g_to_G",
    "g_to_S",
    "instrument_G",
    "interlayer_spacing",
    "lattice_angles",
    "lattice_lengths",
    "mass_density",
    "neutron_scattering_lengths",
    "number_density",
    "partial_rdfs",
    "pressure",
    "stress_tensor",
    "total_rdf",
    "total_structure_factor",
    "xray_form_factors",
]
