"""``rgb_array`` frames: SINR heat map, cells, stations and users (matplotlib Agg)."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from . import radio
from .network import CellularNetwork

__all__ = ["render_rgb", "sinr_map_db"]

_GRID = 90  # heat-map points per side: about 10 m per pixel for 7 cells at 500 m ISD


def sinr_map_db(net: CellularNetwork, n: int = _GRID) -> tuple[np.ndarray, tuple]:
    """(n, n) best-server SINR (dB) over the map, for the stations' current power, sleep
    and CIO, with the stations now transmitting as interferers. The map shows the
    median channel (LOS where Pr_LOS >= 0.5, no shadowing or fading), so it is the
    cells' shape rather than one user's luck. Returns the map and its extent."""
    xmin, xmax, ymin, ymax = net.layout.bounds()
    xs, ys = np.linspace(xmin, xmax, n), np.linspace(ymin, ymax, n)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    off = net.layout.wrapped_offsets(pts)
    d2d = np.hypot(off[..., 0], off[..., 1])
    los = None
    if net.config.los_model == "stochastic":
        los = radio.los_probability(net.coef, d2d) >= 0.5
    rsrp = net.tx_power_dbm - radio.path_loss_db(net.coef, d2d, los)
    metric = np.where(net.awake, rsrp + net.cio_db, -np.inf)
    best = np.argmax(metric, axis=1)
    rx = radio.dbm_to_mw(rsrp)
    sig = rx[np.arange(len(pts)), best]
    transmitting = net.tx_on.copy()
    interference = rx @ transmitting - sig * transmitting[best]
    sinr = 10 * np.log10(sig / (np.maximum(interference, 0.0) + net.noise_mw))
    sinr = np.where(np.isfinite(metric.max(axis=1)), sinr, np.nan)
    return sinr.reshape(n, n), (xmin, xmax, ymin, ymax)


def render_rgb(net: CellularNetwork, size_px: int = 560) -> np.ndarray:
    """(H, W, 3) uint8 frame of the network's current state."""
    dpi = 80
    sinr, extent = sinr_map_db(net)
    # Size the frame to the map's aspect so the axes fill it: width fixed, the map
    # taking 80% of it, plus a strip for the title.
    aspect = (extent[3] - extent[2]) / (extent[1] - extent[0])
    map_h = 0.80 * size_px * aspect
    height_px = int(round(map_h + 40))
    fig = Figure(figsize=(size_px / dpi, height_px / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    bottom = 8 / height_px
    ax = fig.add_axes((0.02, bottom, 0.80, map_h / height_px))
    cax = fig.add_axes((0.85, bottom + 0.1 * map_h / height_px, 0.03, 0.8 * map_h / height_px))
    im = ax.imshow(sinr, origin="lower", extent=extent, cmap="viridis", vmin=-10, vmax=30,
                   interpolation="bilinear")
    fig.colorbar(im, cax=cax, label="SINR (dB)")

    lay = net.layout
    macro = np.flatnonzero(lay.is_macro)
    hexes = [lay.hexagon(lay.pos[i]) for i in macro]
    ax.add_collection(PolyCollection(hexes, facecolors="none", edgecolors="white",
                                     linewidths=0.6, alpha=0.6))

    n_st = net.n_stations
    colours = np.array([_station_colour(i, n_st) for i in range(n_st)])
    act = net.active
    served = act & (net.serving >= 0)
    if served.any():
        ax.scatter(net.ue_pos[served, 0], net.ue_pos[served, 1], s=10,
                   c=colours[net.serving[served]], edgecolors="black", linewidths=0.3)
    unserved = act & (net.serving < 0)
    if unserved.any():
        ax.scatter(net.ue_pos[unserved, 0], net.ue_pos[unserved, 1], s=14, c="red", marker="x")

    for i in range(n_st):
        x, y = lay.pos[i]
        marker = "^" if lay.is_macro[i] else "s"
        size = 90 if lay.is_macro[i] else 45
        if net.off[i]:
            face, edge = "black", "red"
        elif net.sleeping[i]:
            face, edge = "lightgrey", "black"
        else:
            face, edge = colours[i], "white"
        ax.scatter([x], [y], marker=marker, s=size, c=[face], edgecolors=edge, linewidths=1.2,
                   zorder=3)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xticks([])
    ax.set_yticks([])
    k = net.kpis()
    ax.set_title(
        f"t={net.t}  users={k.active_users}  mean {k.mean_user_rate_bps / 1e6:.1f} Mbit/s  "
        f"p5 {k.p5_user_rate_bps / 1e6:.2f}  {k.total_power_w:.0f} W  "
        f"sleep {k.sleeping_stations}", fontsize=8)
    canvas.draw()
    frame = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    return frame


def _station_colour(i: int, n: int) -> tuple[float, float, float]:
    # Golden-ratio hue steps keep neighbouring indices (and so neighbouring cells)
    # visually distinct for any number of stations.
    import colorsys
    return colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
