"""Where the stations stand: hexagonal sites, small cells, wrap-around, X2 links.

Geometry only (numpy arrays and a networkx graph); no radio and no randomness except in
`sample_in_cells`, which takes the caller's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from .config import BaseStationConfig

__all__ = ["Layout", "build_layout", "hex_axial_coords"]

SQRT3 = float(np.sqrt(3.0))

# Order in which the six small-cell slots of a macro cell are filled: opposite sides
# first, so that two or three small cells spread over the cell instead of bunching.
_SMALL_SLOT_ORDER = (0, 3, 1, 4, 2, 5)


@dataclass(frozen=True)
class Layout:
    """Static geometry of one scenario.

    :ivar pos: (S, 2) station positions in metres; macro cells first, then small cells.
    :ivar is_macro: (S,) bool.
    :ivar host: (S,) index of the macro cell a station sits in (itself for a macro).
    :ivar shifts: (K, 2) translations under which distances are measured: just (0, 0)
        without wrap-around, plus the six images of the hex cluster with it.
    :ivar cell_radius_m: circumradius of a macro hexagon (ISD / sqrt(3)).
    :ivar x2_graph: stations as nodes ``"bs_i"`` (attributes ``index``, ``pos``,
        ``kind``), X2 links as edges (attribute ``distance_m``).
    :ivar neighbours: (S, D) neighbour indices per station ordered by distance then
        angle, padded with -1 to the graph's maximum degree D.
    """

    pos: np.ndarray
    is_macro: np.ndarray
    host: np.ndarray
    shifts: np.ndarray
    cell_radius_m: float
    isd_m: float
    x2_graph: nx.Graph
    neighbours: np.ndarray

    @property
    def n_stations(self) -> int:
        return int(self.pos.shape[0])

    @property
    def n_macro(self) -> int:
        return int(self.is_macro.sum())

    @property
    def max_degree(self) -> int:
        return int(self.neighbours.shape[1])

    def wrapped_offsets(self, points: np.ndarray) -> np.ndarray:
        """(N, S, 2) vectors from each station's nearest image to each point."""
        diff = points[:, None, :] - self.pos[None, :, :]
        if len(self.shifts) == 1:
            return diff
        cand = diff[:, :, None, :] - self.shifts[None, None, :, :]
        best = np.argmin(np.einsum("nskc,nskc->nsk", cand, cand), axis=2)
        return np.take_along_axis(cand, best[:, :, None, None], axis=2)[:, :, 0, :]

    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the macro hexagons."""
        macro = self.pos[self.is_macro]
        r = self.cell_radius_m
        return (float(macro[:, 0].min() - r), float(macro[:, 0].max() + r),
                float(macro[:, 1].min() - r), float(macro[:, 1].max() + r))

    def hexagon(self, centre: np.ndarray) -> np.ndarray:
        """(6, 2) corners of the macro hexagon around `centre` (pointy top)."""
        ang = np.deg2rad(30.0 + 60.0 * np.arange(6))
        return centre + self.cell_radius_m * np.stack([np.cos(ang), np.sin(ang)], axis=1)

    def sample_in_cells(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, 2) points uniform over the union of macro hexagons.

        A hexagon is three rhombi spanned by alternate corner vectors (corners k and k+2
        sum to corner k+1), so a point is exact without rejection: pick a cell, a rhombus,
        and two uniform coordinates.
        """
        macro = self.pos[self.is_macro]
        cell = rng.integers(0, len(macro), size=n)
        rhombus = rng.integers(0, 3, size=n)
        ab = rng.random((n, 2))
        ang_a = np.deg2rad(30.0 + 120.0 * rhombus)
        ang_b = ang_a + np.deg2rad(120.0)
        r = self.cell_radius_m
        x = r * (ab[:, 0] * np.cos(ang_a) + ab[:, 1] * np.cos(ang_b))
        y = r * (ab[:, 0] * np.sin(ang_a) + ab[:, 1] * np.sin(ang_b))
        return macro[cell] + np.stack([x, y], axis=1)


def hex_axial_coords(n_cells: int) -> np.ndarray:
    """(n, 2) axial coordinates (q, r) of a hexagon of rings, centre first, ring by ring."""
    rings = {7: 1, 19: 2, 37: 3}[n_cells]
    coords = [(0, 0)]
    # Walk each ring: start at (R, -R)... standard axial ring walk (Red Blob Games).
    directions = [(-1, 1), (-1, 0), (0, -1), (1, -1), (1, 0), (0, 1)]
    for ring in range(1, rings + 1):
        q, r = ring, 0
        for dq, dr in directions:
            for _ in range(ring):
                coords.append((q, r))
                q, r = q + dq, r + dr
    return np.asarray(coords, dtype=float)


def _axial_to_xy(qr: np.ndarray, isd: float) -> np.ndarray:
    q, r = qr[:, 0], qr[:, 1]
    return isd * np.stack([q + r / 2.0, r * SQRT3 / 2.0], axis=1)


def build_layout(config: BaseStationConfig) -> Layout:
    """Stations, wrap-around images and X2 graph of a scenario."""
    isd = config.macro_isd_m
    n_macro = config.n_macro_cells
    rings = {7: 1, 19: 2, 37: 3}[n_macro]
    macro_pos = _axial_to_xy(hex_axial_coords(n_macro), isd)
    cell_radius = isd / SQRT3

    small_pos = np.zeros((config.n_small_cells, 2))
    small_host = np.zeros(config.n_small_cells, dtype=np.int64)
    for j in range(config.n_small_cells):
        host, slot = j % n_macro, _SMALL_SLOT_ORDER[j // n_macro]
        ang = np.deg2rad(30.0 + 60.0 * slot)
        small_pos[j] = macro_pos[host] + (isd / 3.0) * np.array([np.cos(ang), np.sin(ang)])
        small_host[j] = host
    pos = np.concatenate([macro_pos, small_pos])
    is_macro = np.arange(len(pos)) < n_macro
    host = np.concatenate([np.arange(n_macro), small_host])

    shifts = np.zeros((1, 2))
    if config.wrap_around:
        # A hexagon of R rings tiles the plane under the axial translation (2R+1, -R) and
        # its five 60-degree rotations (cluster size i^2+ij+j^2 with i=R+1, j=R: 7, 19, 37).
        base = _axial_to_xy(np.array([[2 * rings + 1, -rings]], dtype=float), isd)[0]
        ang = np.deg2rad(60.0 * np.arange(6))
        rot = np.stack([
            base[0] * np.cos(ang) - base[1] * np.sin(ang),
            base[0] * np.sin(ang) + base[1] * np.cos(ang),
        ], axis=1)
        shifts = np.concatenate([shifts, rot])

    layout = Layout(pos=pos, is_macro=is_macro, host=host, shifts=shifts,
                    cell_radius_m=cell_radius, isd_m=isd, x2_graph=nx.Graph(),
                    neighbours=np.zeros((len(pos), 0), dtype=np.int64))
    graph, neighbours = _x2_links(layout)
    object.__setattr__(layout, "x2_graph", graph)
    object.__setattr__(layout, "neighbours", neighbours)
    return layout


def _x2_links(layout: Layout) -> tuple[nx.Graph, np.ndarray]:
    """X2 links: adjacent macro sites, each small cell to its host macro and to the
    small cells of the same host (the operator's usual X2 neighbour relations)."""
    pos, is_macro, host = layout.pos, layout.is_macro, layout.host
    n = len(pos)
    off = layout.wrapped_offsets(pos)  # (S, S, 2): from station j's nearest image to i
    dist = np.hypot(off[..., 0], off[..., 1])
    adjacent_macro = is_macro[:, None] & is_macro[None, :] & (dist <= 1.05 * layout.isd_m)
    same_host = host[:, None] == host[None, :]
    small_link = (~is_macro[:, None] | ~is_macro[None, :]) & same_host
    linked = (adjacent_macro | small_link) & ~np.eye(n, dtype=bool)

    graph = nx.Graph()
    for i in range(n):
        graph.add_node(f"bs_{i}", index=i, pos=(float(pos[i, 0]), float(pos[i, 1])),
                       kind="macro" if is_macro[i] else "small")
    ii, jj = np.nonzero(np.triu(linked))
    for i, j in zip(ii.tolist(), jj.tolist()):
        graph.add_edge(f"bs_{i}", f"bs_{j}", distance_m=float(dist[i, j]))

    degree = int(linked.sum(axis=1).max()) if n > 1 else 0
    neighbours = np.full((n, max(degree, 1)), -1, dtype=np.int64)
    angle = np.arctan2(-off[..., 1], -off[..., 0])  # direction from i towards neighbour j
    for i in range(n):
        nb = np.nonzero(linked[i])[0]
        order = np.lexsort((np.round(angle[i, nb], 6), np.round(dist[i, nb], 3)))
        neighbours[i, : len(nb)] = nb[order]
    return graph, neighbours
