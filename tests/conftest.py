"""Fixtures every test file shares."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests train tiny models on a machine of 2 cores that pytest-xdist already fills
    with one worker a core: torch's own threads would only fight over them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def idle_cpus(monkeypatch):
    """The packet layer's helper threads run only when asked for (MFD_CRC_THREADS) and on
    spare CPUs (by the load average); tests of those threads turn them on and pretend the
    machine is idle so that they run whatever its load."""
    from mfd_core import packet

    monkeypatch.setattr(packet, "CRC_THREADS", max(2, packet.CRC_THREADS))
    monkeypatch.setattr(packet, "spare_cpus", lambda: 8)
