"""channels_last_3d and torch.compile give the eager, contiguous results."""

import copy

import pytest
import torch

from resnet3d import build_model


def forward_backward(model, x):
    outputs = model(x)
    sum(o.sum() for o in outputs.values()).backward()
    return outputs


@pytest.mark.parametrize("depth, backward", [(18, True), (50, False)])  # 3D conv backward is slow on CPU
def test_channels_last_3d_equals_contiguous(depth, backward):
    # eval mode: BatchNorm over the 2-8 values of a tiny batch is too ill-conditioned to compare
    reference = build_model(depth=depth, dropout=0.0).eval()
    channels_last = copy.deepcopy(reference).to(memory_format=torch.channels_last_3d)
    assert channels_last.layer2[0].conv2.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 3, 2, 32, 32)
    x_cl = x.to(memory_format=torch.channels_last_3d)
    if backward:
        expected, got = forward_backward(reference, x), forward_backward(channels_last, x_cl)
    else:
        with torch.no_grad():
            expected, got = reference(x), channels_last(x_cl)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)
    if backward:
        for (name, p), q in zip(reference.named_parameters(), channels_last.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.slow
def test_torch_compile_equals_eager_forward_and_backward():
    """Inductor on CPU (needs a C++ compiler); about 35-45 s with a cold compile cache."""
    eager = build_model(depth=18, dropout=0.0).eval()
    compiled_source = copy.deepcopy(eager).to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 3, 4, 32, 32)
    expected = forward_backward(eager, x)
    try:
        compiled = torch.compile(compiled_source, fullgraph=True)  # fullgraph: no graph breaks allowed
        got = forward_backward(compiled, x.to(memory_format=torch.channels_last_3d))
    finally:
        torch._dynamo.reset()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled_source.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
    assert list(compiled.state_dict())[0] == "_orig_mod.conv1.weight"  # what load_pretrained strips
