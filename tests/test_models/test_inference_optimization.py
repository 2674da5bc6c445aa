"""optimize_for_inference: the same outputs and state dict as the plain backbone, buffers
reused and work in place only without autograd, the caller's tensors left alone."""
import copy

import pytest
import torch

from mmdccnext.models import DCCNeXt, InferenceDCCNeXtBlock, optimize_for_inference
from mmdccnext.models.backbones import inference


def _model(**kwargs):
    torch.manual_seed(0)
    model = DCCNeXt('b0', out_indices=(0, 1, 2, 3), gap_before_final_norm=False,
                    layer_scale_init_value=0.5, **kwargs)
    model.init_weights()
    return model.eval()


def _input(size=96, batch=2):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_same_outputs_and_state_dict_as_the_plain_backbone():
    plain = _model()
    x = _input()
    with torch.no_grad():
        expected = plain(x)
    keys = list(plain.state_dict())
    optimized = optimize_for_inference(copy.deepcopy(plain))
    assert all(isinstance(b, InferenceDCCNeXtBlock) for s in optimized.stages for b in s)
    assert list(optimized.state_dict()) == keys
    x_copy = x.clone()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            for _ in range(2):  # the second pass reuses the buffers of the first
                got = optimized(x)
                for a, b in zip(got, expected):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(x, x_copy)
    with torch.enable_grad():  # with autograd: the plain forward, gradients flow
        out = optimized(x)
    for a, b in zip(out, expected):
        torch.testing.assert_close(a.detach(), b)
    out[-1].sum().backward()
    assert optimized.stages[2][0].mixer.weight.grad is not None


def test_parameters_stay_shared_and_checkpoints_load():
    plain = _model()
    weight = plain.stages[2][0].ffn.fc1.weight
    optimize_for_inference(plain)
    assert plain.stages[2][0].ffn.fc1.weight is weight
    assert optimize_for_inference(plain) is plain  # idempotent
    other = _model(drop_path_rate=0.)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.)
    plain.load_state_dict(other.state_dict())
    assert torch.equal(plain.stages[2][0].ffn.fc1.weight, other.stages[2][0].ffn.fc1.weight)


def test_buffers_are_reused_within_a_pass_and_dropped_after(monkeypatch):
    model = optimize_for_inference(_model())
    workspace = model._inference_workspace
    allocated = []
    new_empty = torch.Tensor.new_empty

    def spy(self, *args, **kwargs):
        if workspace.buffers is not None:
            allocated.append(args)
        return new_empty(self, *args, **kwargs)

    with torch.no_grad():
        monkeypatch.setattr(torch.Tensor, 'new_empty', spy)
        model(_input())
        monkeypatch.undo()
    # the first stage has the largest hidden maps, so each of the (at most two) buffers is
    # allocated once, by the first block, and reused by the 12 others
    assert 1 <= len(allocated) <= 2
    assert workspace.buffers is None  # nothing is kept between passes


def test_a_block_called_on_its_own_leaves_its_input_alone():
    model = optimize_for_inference(_model())
    block = model.stages[2][0]
    h = torch.randn(2, 6, 6, 160)
    h_copy = h.clone()
    with torch.no_grad():
        block(h)
    assert torch.equal(h, h_copy)


def test_training_with_stochastic_depth_runs_the_plain_forward():
    model = optimize_for_inference(_model(drop_path_rate=0.5)).train()
    x = _input(64)
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(x)[0]
        torch.manual_seed(1)
        b = model(x)[0]
    assert not torch.allclose(a, b)


@pytest.mark.skipif(inference._inplace_conv_add() is None,
                    reason="this PyTorch build has no oneDNN in-place convolution")
def test_the_onednn_path_is_taken_and_matches(monkeypatch):
    model = optimize_for_inference(_model())
    calls = []
    workspace = model._inference_workspace
    real = workspace.conv_add

    def counting(*args):
        calls.append(1)
        return real(*args)

    workspace.conv_add = counting
    with torch.no_grad():
        got = model(_input())
    assert len(calls) == sum(len(s) for s in model.stages)
    workspace.conv_add_failed = True  # the plain convolution instead
    with torch.no_grad():
        plain = model(_input())
    for a, b in zip(got, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
