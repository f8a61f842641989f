import torch
import torch.nn as nn
import torch.nn.utils.prune as tprune

from edgelab import counts


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


def test_nonzero_counts_only_the_weights_that_are_not_zero():
    m = tiny_cnn()
    with torch.no_grad():
        m[0].weight[:2] = 0  # 2 filters of 9 weights
    assert counts.count_params(m) == 4 * 9 + 4 + 4 * 10 + 10
    assert counts.count_nonzero(m) == counts.count_params(m) - 18


def test_nonzero_sees_a_pruning_mask_not_the_original_weights():
    m = tiny_cnn()
    tprune.l1_unstructured(m[4], "weight", amount=0.5)
    assert counts.count_params(m) == 4 * 9 + 4 + 4 * 10 + 10
    assert counts.count_nonzero(m) == counts.count_params(m) - 20


def test_a_convolutions_macs_equal_the_formula():
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, bias=False)
    # output 14x14: every output value takes C_in * k * k multiply-accumulates
    assert counts.count_macs(conv, (1, 3, 28, 28)) == 8 * 14 * 14 * 3 * 3 * 3


def test_macs_by_layer_sums_to_the_total_for_a_plain_cnn():
    m = tiny_cnn()
    layers = counts.macs_by_layer(m)
    assert layers == {"0": 4 * 28 * 28 * 9, "4": 40}
    assert sum(layers.values()) == counts.count_macs(m)


def test_peak_activation_memory_keeps_a_residual_branch_alive_across_its_block():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return x + self.b(self.a(x))    # x stays alive while a and b run

    r = counts.peak_activation_bytes(Block(), (1, 2, 4, 4), bytes_per_value=4)
    one = 2 * 4 * 4 * 4
    assert r["peak_bytes"] == 3 * one      # x, a's output and b's output at once
    assert counts.peak_activation_bytes(Block(), (1, 2, 4, 4), 1)["peak_bytes"] == 3 * one // 4
    chain = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1))
    assert counts.peak_activation_bytes(chain, (1, 2, 4, 4))["peak_bytes"] == 2 * one
