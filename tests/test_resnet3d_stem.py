"""The zero-padded stem (build_model(stem_channels=C), resnet3d/stem.py): the same convolution
and weight gradient as the plain stem, the same outputs and gradients for real weights, and
MiT checkpoints load into it unchanged."""

import pytest
import torch
from test_resnet3d_checkpoints import mit_checkpoint, randomize_normalisation

from resnet3d import build_model, load_pretrained
from resnet3d.stem import ChannelPaddedConv3d


@pytest.mark.parametrize("channels", [4, 8])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4, 32, 32), (1, 3, 3, 33, 30), (1, 3, 2, 7, 9)])  # odd sizes too
def test_padded_stem_computes_the_same_conv_and_weight_gradient(channels, channels_last, shape):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 16, 7, stride=(1, 2, 2), padding=3, bias=False).double()
    x = torch.randn(shape, dtype=torch.double)
    expected = conv(x)
    (grad_expected,) = torch.autograd.grad((expected * expected).sum(), [conv.weight])
    padded = ChannelPaddedConv3d.from_conv(conv, channels)
    assert padded.weight is conv.weight  # same Parameter: optimizer and state dict unchanged
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    got = padded(x)
    (grad_got,) = torch.autograd.grad((got * got).sum(), [conv.weight])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-10, atol=1e-10)


def test_the_option_is_off_by_default_and_refuses_fewer_channels():
    assert type(build_model(depth=18).conv1) is torch.nn.Conv3d
    assert isinstance(build_model(depth=18, stem_channels=8).conv1, ChannelPaddedConv3d)
    with pytest.raises(ValueError, match="stem_channels"):
        build_model(depth=18, stem_channels=2)
    with pytest.raises(ValueError, match="plain bias-free conv"):
        ChannelPaddedConv3d.from_conv(torch.nn.Conv3d(3, 8, 7, bias=True), 8)


def test_padded_model_gives_the_same_outputs_and_gradients_for_real_weights():
    torch.manual_seed(0)
    plain = randomize_normalisation(build_model(depth=18, dropout=0.0)).double()
    padded = build_model(depth=18, dropout=0.0, stem_channels=8).double()
    assert padded.state_dict().keys() == plain.state_dict().keys()
    padded.load_state_dict(plain.state_dict())
    assert padded.feature_grid(4, 32, 32) == plain.feature_grid(4, 32, 32)
    x = torch.randn(2, 3, 4, 32, 32, dtype=torch.double)
    for model in (plain, padded):
        model.train()
        sum((o * o).sum() for o in model(x).values()).backward()
    expected, got = plain.eval()(x), padded.eval()(x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-9, atol=1e-10)
    grads = dict(padded.named_parameters())
    for name, p in plain.named_parameters():
        # summation order differs: agreement to 1e-9 of the tensor's largest gradient
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-9, atol=1e-9 * scale, msg=name)
    for name, buf in plain.named_buffers():  # training-mode BatchNorm statistics moved alike
        torch.testing.assert_close(dict(padded.named_buffers())[name], buf, rtol=1e-9, atol=1e-10)


def test_mit_checkpoint_loads_unchanged_into_the_padded_stem(tmp_path):
    torch.manual_seed(3)
    source = randomize_normalisation(build_model(depth=50)).eval()
    path = tmp_path / "mit.pth.tar"
    torch.save(mit_checkpoint(source), path)
    plain, padded = build_model(depth=50), build_model(depth=50, stem_channels=8)
    report_plain, report_padded = load_pretrained(plain, path), load_pretrained(padded, path)
    assert report_padded.kind == report_plain.kind == "mit"
    assert str(report_padded) == str(report_plain)
    backbone = {n: t for n, t in plain.state_dict().items() if not n.startswith("last_linear.")}  # heads: new
    assert all(torch.equal(padded.state_dict()[n], t) for n, t in backbone.items())
    assert torch.equal(padded.conv1.weight, source.conv1.weight)
    x = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(padded.eval().forward_features(x), plain.eval().forward_features(x))
