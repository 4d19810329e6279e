"""ADMM masks -> crossbar mapping plan: pruned structures free hardware, and the compressed model
runs exactly on only its live tiles (admm and crossbar composed, as the pipeline does)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from memxbar import admm, crossbar


def test_admm_masks_shrink_the_mapped_hardware() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    x = torch.randn(128, 64)
    y = torch.randint(0, 10, (128,))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    constraints = [
        admm.LayerConstraint(pattern="0", block_keep=4, block=(16, 16), levels=8),
        admm.LayerConstraint(pattern="2", row_keep=20, levels=8),
    ]
    config = admm.CompressConfig(constraints=constraints, prune_epochs=2, prune_retrain_epochs=1,
                                 quant_epochs=1, quant_retrain_epochs=1, progress=False)
    result = admm.compress(model, loader, config)

    xbar = crossbar.CrossbarConfig(tile_rows=16, tile_cols=16)
    dense = crossbar.plan_model(nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)),
                                xbar)
    plan = crossbar.plan_model(model, xbar, masks=result.masks)
    assert dense["0"].n_tiles == 12 and plan["0"].n_tiles == 4  # 4 of 12 16x16 blocks kept
    assert plan["2"].live_rows == tuple(torch.nonzero(result.live_rows["2"]).flatten().tolist())
    assert len(plan["2"].live_rows) == 20
    assert plan.mapped_weights < dense.mapped_weights

    device = crossbar.DeviceModel(n_levels=8)  # the ADMM level grid is the device's grid
    xmodel = crossbar.to_crossbar(model, device, xbar, plan=plan)
    with torch.no_grad():
        err = (xmodel(x) - model(x)).norm() / model(x).norm()
    assert float(err) < 1e-5
