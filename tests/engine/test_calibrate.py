"""Mirror calibration: the mirror maps cell centres onto cell centres, sub-cell peaks, and
the measured offset of maps whose content is known to sit d pixels right of the evidence."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsloc.cam import cell_to_pixel, on_axis
from wsloc.engine.calibrate import mirror, mirror_shift, subcell_peaks


def test_mirror_puts_column_i_at_shift_minus_one_minus_i():
    x = torch.arange(2 * 3 * 96, dtype=torch.float32).view(2, 3, 96)
    y = mirror(x, 97)  # the stride-4 grid of a 96-px input: 2p = 96
    for i in range(1, 96):
        torch.testing.assert_close(y[..., i], x[..., 96 - i])
    torch.testing.assert_close(mirror(y, 97)[..., 1:], x[..., 1:])  # its own inverse


def test_subcell_peaks_find_a_parabola_vertex():
    xs = torch.arange(24, dtype=torch.float64)
    for vx, vy in [(7.3, 11.8), (12.0, 3.45), (20.6, 20.5)]:
        m = -((xs[None, :] - vx) ** 2) - ((xs[:, None] - vy) ** 2)
        np.testing.assert_allclose(subcell_peaks(m[None]), [[vx, vy]], atol=1e-9)


class ShiftedMaps(nn.Module):
    """Class maps that sit ``d`` input px right of the evidence: map cell j is the input's
    mean over the 5 px centred on 4j − d (a stride-4 grid, cell j centred on 4j)."""

    def __init__(self, d: int, classes: int = 2):
        super().__init__()
        self.d, self.classes = d, classes
        self.weight = nn.Parameter(torch.ones(1))

    def cell_geometry(self):
        return (4.0, 0.0)

    def forward(self, x):
        shifted = torch.roll(x, self.d, -1)  # content moves d px right
        cells = F.avg_pool2d(F.pad(shifted, (2, 2, 2, 2), mode="replicate"), 5, 4)
        self.class_maps = cells[:, :1].expand(-1, self.classes, -1, -1) * self.weight
        return torch.full((x.shape[0], self.classes), 5.0)  # p ≈ 0.99: present


class Spots(torch.utils.data.Dataset):
    """Films with one Gaussian spot each, at known places."""

    def __init__(self, n=12, size=96):
        g = torch.Generator().manual_seed(0)
        self.centres = torch.randint(20, size - 20, (n, 2), generator=g).float()
        self.size = size

    def __len__(self):
        return len(self.centres)

    def __getitem__(self, i):
        yy, xx = torch.meshgrid(torch.arange(self.size), torch.arange(self.size),
                                indexing="ij")
        cy, cx = self.centres[i]
        film = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 6.0 ** 2))
        return {"image": film[None], "labels": torch.zeros(2), "boxes": torch.zeros(0, 5),
                "id": str(i), "frame": (self.size, self.size)}


@pytest.mark.parametrize("d", [-6, -2, 0, 3, 8])
def test_mirror_shift_measures_a_known_offset(d):
    found = mirror_shift(ShiftedMaps(d), Spots(), batch_size=5)
    assert found["maps"] == 12 * 2 and found["method"] == "mirror"
    assert found["shift_x"] == pytest.approx(d, abs=0.35)


def test_no_present_class_measures_nothing():
    class Absent(ShiftedMaps):
        def forward(self, x):
            super().forward(x)
            return torch.full((x.shape[0], self.classes), -5.0)

    assert mirror_shift(Absent(3), Spots()) == {"shift_x": 0.0, "maps": 0, "method": "mirror"}


def test_a_calibrated_model_reads_its_columns_to_the_left():
    from wsloc.models import ChestXray8Net

    net = ChestXray8Net(2, backbone="resnet18", transition_channels=8, pool_on="classes",
                        feature_stride=4)
    assert net.cell_geometry() == (4.0, 0.0)
    net.cam_shift_x = 2.5
    g = net.cell_geometry()
    assert g == (4.0, 0.0, -2.5) and on_axis(g, 0) == (4.0, 0.0) and on_axis(g, 1) == (4.0, -2.5)
    # cell 10 of a 96-px input on a 256-px film: x moves 2.5 input px = 6.67 film px left
    assert cell_to_pixel(10, 256, 96, g, axis=1) == pytest.approx(
        cell_to_pixel(10, 256, 96, (4.0, 0.0)) - 2.5 * 256 / 96)
    assert cell_to_pixel(10, 256, 96, g, axis=0) == cell_to_pixel(10, 256, 96, (4.0, 0.0))


def test_training_with_mirror_calibration_records_and_applies_it(tmp_path, monkeypatch):
    from wsloc.config import load_config
    from wsloc.engine.checkpoint import load_checkpoint
    from wsloc.engine.common import load_trained
    from wsloc.engine.train import train

    monkeypatch.setenv("WSLOC_CACHE", str(tmp_path / "cache"))
    tiny = ["data.synthetic.n=48", "data.synthetic.size=64", "data.image_size=64",
            "data.num_workers=0", "model.transition_channels=16", "train.epochs=1",
            "train.batch_size=8", "train.calibrate=mirror"]
    run = train(load_config(None, tiny), out=tmp_path / "run", progress=False)
    found = load_checkpoint(run / "best.pt")["calibration"]
    assert load_checkpoint(run / "last.pt")["calibration"] == found
    assert found["method"] == "mirror" and found["maps"] >= 0
    model, *_ = load_trained(run / "best.pt")
    assert model.cam_shift_x == found["shift_x"]
    if found["shift_x"]:
        assert model.cell_geometry()[2] == pytest.approx(
            model.cell_geometry()[1] - found["shift_x"])
    plain = train(load_config(None, tiny[:-1]), out=tmp_path / "plain", progress=False)
    assert "calibration" not in load_checkpoint(plain / "best.pt")
    assert load_trained(plain / "best.pt")[0].cell_geometry() == (4.0, 0.0)
