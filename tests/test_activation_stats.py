import pytest
import torch
import torch.nn as nn

from pipeline.activation_stats import ActivationStats
from pipeline.errors import UserError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_ranges_per_slot_and_channel_match_a_hand_computation():
    torch.manual_seed(0)
    net = Net()
    stats = ActivationStats(net, num_slots=3)
    xs, slot_of = [], []
    for batch_slots in ([0, 2], [2, 2, 0]):  # a batch may mix timesteps
        x = torch.randn(len(batch_slots), 5, 3) * 3
        stats.set_slots(torch.tensor(batch_slots), torch.tensor(batch_slots) * 100)
        net(x)
        xs.append(x)
        slot_of += batch_slots
    stats.remove()
    x = torch.cat(xs)  # [rows, tokens, 3]
    slot_of = torch.tensor(slot_of)
    t = stats.tensors()
    for s in (0, 2):
        rows = x[slot_of == s].reshape(-1, 3)
        assert torch.allclose(t["a/min"][s], rows.amin(0))
        assert torch.allclose(t["a/max"][s], rows.amax(0))
        assert torch.allclose(t["a/absmax"][s], rows.abs().amax(0))
        hidden = torch.relu(net.a(x[slot_of == s])).reshape(-1, 4)
        assert torch.allclose(t["b/max"][s], hidden.amax(0), atol=1e-6)
    # slot 1 saw nothing: left empty, and excluded from the over-all ranges
    assert torch.isinf(t["a/min"][1]).all()
    assert torch.allclose(t["a/min_all"], x.reshape(-1, 3).amin(0))
    assert torch.allclose(t["a/absmax_all"], x.reshape(-1, 3).abs().amax(0))
    assert t["a/min"].shape == (3, 3) and t["b/absmax"].shape == (3, 4)


def test_non_finite_activation_names_layer_and_timestep():
    net = Net()
    with torch.no_grad():
        net.a.weight[1, 0] = float("nan")
    stats = ActivationStats(net, num_slots=2)
    stats.set_slots(torch.tensor([0, 1]), torch.tensor([981, 961]))
    x = torch.randn(2, 4, 3)
    with pytest.raises(UserError, match="layer 'b' at timestep 981"):
        net(x)
