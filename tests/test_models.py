"""Models, convert, fuse and receptive_field.

Each model runs forward and backward through the Triton path (the interpreter on
CPU) at a small size and is compared with a float64 copy of itself, which takes
torch's path through the same modules; ResNet also against its torch.nn twin
(torchvision's structure). Key lists are checked against torchvision's naming,
written out here (torchvision is not a dependency).
"""
from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import nnlib
from nnlib import layers, models
from nnlib.models import nfnet, reference
from tests.reference import rel_err

# ---------------------------------------------------------------------------
# helpers


def count_modules(model, *types) -> int:
    return sum(isinstance(m, types) for m in model.modules())


def check_against_float64(model: nn.Module, x: torch.Tensor, tol: float = 1e-4, backward: bool = True):
    """model(x) on the Triton path against a float64 copy on torch's path: output,
    every parameter's gradient and every buffer (running statistics) after the call."""
    ref = copy.deepcopy(model).double()       # float64 takes torch's path, on any device
    x_ref = x.detach().double()
    with nnlib.count_launches() as fwd:
        out = model(x)
    ref_out = ref(x_ref)
    assert out.dtype == x.dtype and out.shape == ref_out.shape
    assert torch.isfinite(out).all()
    assert rel_err(out, ref_out) < tol, f"output: {rel_err(out, ref_out):.2e}"
    for (name, buf), (_, ref_buf) in zip(model.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(buf.double(), ref_buf.double(), atol=tol, rtol=tol, msg=name)
    windows = count_modules(model, nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d)
    assert fwd.total >= windows, f"{fwd.total} launches for {windows} conv / pool / norm layers"
    if not backward:
        return out
    grad = torch.randn(ref_out.shape, dtype=torch.float64, device=x.device)
    with nnlib.count_launches() as bwd:
        out.backward(grad.to(out.dtype))
    ref_out.backward(grad)
    assert bwd.total >= count_modules(model, nn.Conv2d)
    total = torch.cat([q.grad.flatten() for q in ref.parameters()]).norm()
    for (name, p), (_, ref_p) in zip(model.named_parameters(), ref.named_parameters()):
        assert p.grad is not None, name
        if ref_p.grad.norm() < 1e-6 * total:
            # Zero by construction (a conv bias before batch norm): small against the rest.
            err = ((p.grad.double() - ref_p.grad).norm() / total).item()
        else:
            err = rel_err(p.grad, ref_p.grad)
        assert err < tol, f"grad of {name}: {err:.2e}"
    return out


def layout(x: torch.Tensor, name: str) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if name == "channels_last" else x


# ---------------------------------------------------------------------------
# torchvision's state_dict keys, written out


def _bn(prefix: str, c: int) -> list:
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


def torchvision_resnet_keys(bottleneck: bool, blocks: list[int], num_classes: int = 1000, groups: int = 1,
                            width_per_group: int = 64) -> list:
    """(key, shape) of torchvision.models.resnet*'s (resnext*, wide_resnet*) state_dict, in order."""
    keys = [("conv1.weight", (64, 3, 7, 7)), *_bn("bn1", 64)]
    expansion = 4 if bottleneck else 1
    inplanes = 64
    for stage, n in enumerate(blocks, 1):
        planes = 64 * 2 ** (stage - 1)
        width = planes * width_per_group // 64 * groups
        for i in range(n):
            p = f"layer{stage}.{i}"
            convs = ([(inplanes, width, 1, 1), (width, width, 3, groups), (width, planes * 4, 1, 1)] if bottleneck
                     else [(inplanes, planes, 3, 1), (planes, planes, 3, 1)])
            for j, (cin, cout, k, g) in enumerate(convs, 1):
                keys += [(f"{p}.conv{j}.weight", (cout, cin // g, k, k)), *_bn(f"{p}.bn{j}", cout)]
            if i == 0 and inplanes != planes * expansion or i == 0 and stage > 1:
                keys += [(f"{p}.downsample.0.weight", (planes * expansion, inplanes, 1, 1)),
                         *_bn(f"{p}.downsample.1", planes * expansion)]
            inplanes = planes * expansion
    return keys + [("fc.weight", (num_classes, 512 * expansion)), ("fc.bias", (num_classes,))]


VGG_CONFIGS = {"vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
               "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
               "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
               "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                         512, 512, 512, 512, "M"]}


def torchvision_vgg_keys(config: list, batch_norm: bool) -> list:
    keys, i, cin = [], 0, 3
    for v in config:
        if v == "M":
            i += 1
            continue
        keys += [(f"features.{i}.weight", (v, cin, 3, 3)), (f"features.{i}.bias", (v,))]
        if batch_norm:
            keys += _bn(f"features.{i + 1}", v)
        i += 3 if batch_norm else 2
        cin = v
    return keys + [("classifier.0.weight", (4096, 512 * 7 * 7)), ("classifier.0.bias", (4096,)),
                   ("classifier.3.weight", (4096, 4096)), ("classifier.3.bias", (4096,)),
                   ("classifier.6.weight", (1000, 4096)), ("classifier.6.bias", (1000,))]


def keys_of(model: nn.Module) -> list:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


RESNETS = {"resnet18": (False, [2, 2, 2, 2], {}), "resnet34": (False, [3, 4, 6, 3], {}),
           "resnet50": (True, [3, 4, 6, 3], {}), "resnet101": (True, [3, 4, 23, 3], {}),
           "resnet152": (True, [3, 8, 36, 3], {}),
           "resnext50_32x4d": (True, [3, 4, 6, 3], dict(groups=32, width_per_group=4)),
           "resnext101_32x8d": (True, [3, 4, 23, 3], dict(groups=32, width_per_group=8)),
           "resnext101_64x4d": (True, [3, 4, 23, 3], dict(groups=64, width_per_group=4)),
           "wide_resnet50_2": (True, [3, 4, 6, 3], dict(width_per_group=128)),
           "wide_resnet101_2": (True, [3, 4, 23, 3], dict(width_per_group=128))}


@pytest.mark.parametrize("name", list(RESNETS))
def test_resnet_state_dict_is_torchvision(name):
    bottleneck, blocks, kw = RESNETS[name]
    with torch.device("meta"):
        ours = getattr(models, name)()
        twin = reference.ResNet(reference.Bottleneck if bottleneck else reference.BasicBlock, blocks, **kw)
    expected = torchvision_resnet_keys(bottleneck, blocks, **kw)
    assert keys_of(ours) == expected
    assert keys_of(twin) == expected
    # Module names too (relu included), so hooks and checkpoints address the same modules.
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in twin.named_modules()]
    # A torchvision checkpoint loads strictly.
    ours.load_state_dict({k: torch.zeros(s) for k, s in expected}, strict=True, assign=True)


@pytest.mark.parametrize("name", [f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn")])
def test_vgg_state_dict_is_torchvision(name):
    with torch.device("meta"):
        model = getattr(models, name)()
    assert keys_of(model) == torchvision_vgg_keys(VGG_CONFIGS[name.split("_")[0]], name.endswith("_bn"))


def test_models_use_nnlib_layers_and_fused_forms():
    with torch.device("meta"):
        built = [models.lenet5(), models.digits_cnn(), models.vgg16(), models.vgg16_bn(), models.resnet50(),
                 models.resnet18(), models.drn_c26(), models.nf_resnet50()]
    for model in built:
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU)):
                assert type(m).__module__.startswith("nnlib"), f"{type(model).__name__}.{name} is torch's"
    resnet50, resnet18, vgg16, vgg16_bn = built[4], built[5], built[2], built[3]
    assert resnet50.layer2[1].bn3.activation == "relu" and resnet18.layer3[0].bn2.activation == "relu"
    assert resnet50.bn1.activation == "relu" and resnet50.layer1[0].downsample[1].activation is None
    assert all(m.activation == "relu" for m in vgg16.features if isinstance(m, nn.Conv2d))
    assert all(m.activation == "relu" for m in vgg16_bn.features if isinstance(m, nn.BatchNorm2d))


# ---------------------------------------------------------------------------
# forward and backward through the Triton path

# Every model runs forward at a small size: "train" (batch statistics, running-stat
# updates), "eval", or "backward" (training mode, forward and backward). Under the
# interpreter a backward costs about 4 forwards (ResNet-50 at width 4: 10 s forward,
# 34 s backward), so the deep models run forward only; their blocks run backward in
# test_resnet_matches_torchvision_structured_twin and the convergence tests. ResNet-34
# and -50 at 32x32 would put 2 values per channel into layer4's batch norms in training
# mode, where even torch's fp32 is off by 1e-3: they run in eval mode.
# The tolerance (relative error of the output and of each gradient against float64,
# atol = rtol for buffers) is about 10x torch's own fp32 error on the same model.
SMALL = {
    # name: (builder, input shape, layout, tolerance, mode)
    "lenet5": (lambda: models.lenet5(), (2, 1, 32, 32), "contiguous", 1e-5, "train"),
    "digits_cnn": (lambda: models.digits_cnn(width=8), (3, 1, 8, 8), "channels_last", 1e-5, "backward"),
    "vgg11": (lambda: models.vgg11(5, width=4, hidden=16, pool_size=1, dropout=0.0), (1, 3, 32, 32),
              "channels_last", 1e-5, "train"),
    "vgg11_bn": (lambda: models.vgg11_bn(5, width=4, hidden=16, pool_size=1, dropout=0.0), (2, 3, 32, 32),
                 "contiguous", 1e-5, "train"),
    "vgg16": (lambda: models.vgg16(5, width=4, hidden=16, pool_size=1, dropout=0.0), (1, 3, 32, 32),
              "contiguous", 1e-5, "train"),
    "vgg16_bn": (lambda: models.vgg16_bn(5, width=4, hidden=16, pool_size=1, dropout=0.0), (2, 3, 32, 32),
                 "channels_last", 1e-4, "train"),
    "resnet18": (lambda: models.resnet18(5, width=4), (2, 3, 64, 64), "channels_last", 1e-4, "train"),
    "resnet34": (lambda: models.resnet34(5, width=4), (1, 3, 32, 32), "contiguous", 1e-5, "eval"),
    "resnet50": (lambda: models.resnet50(5, width=4), (1, 3, 32, 32), "channels_last", 1e-5, "eval"),
    "drn_c26": (lambda: models.drn_c26(3, width=2), (1, 3, 16, 24), "contiguous", 2e-4, "train"),
    "nf_resnet26": (lambda: models.nf_resnet26(5, width=4), (2, 3, 32, 32), "channels_last", 1e-5, "train"),
    "nf_resnet_1block": (lambda: models.NFResNet([1], 5, width=4), (2, 3, 16, 16), "contiguous", 1e-5, "backward"),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_model(name, device):
    build, shape, fmt, tol, mode = SMALL[name]
    model = build().train(mode != "eval").to(device)
    if fmt == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    x = layout(torch.randn(shape, device=device), fmt)
    out = check_against_float64(model, x, tol, backward=mode == "backward")
    if name == "drn_c26":
        assert out.shape == (shape[0], 3, *shape[2:])      # per-pixel logits at the input size
    else:
        assert out.shape == (shape[0], 10 if name in ("lenet5", "digits_cnn") else 5)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the storages autograd keeps for the backward of one forward of
    ``model`` (each storage once; parameters and buffers left out)."""
    own = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if t.numel() and key not in own:
            saved[key] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(saved.values())


@pytest.mark.parametrize("block,layers,ratio", [("BasicBlock", [2, 2, 2, 2], 0.84), ("Bottleneck", [3, 4, 6, 3], 0.97)],
                         ids=["resnet18", "resnet50"])
def test_resnet_keeps_less_for_the_backward_than_torchvisions(block, layers, ratio, device):
    """A training forward keeps less memory for the backward than torchvision's
    structure (the twin) keeps: the fused block tail saves the relu's output, which
    the next block keeps anyway, not the shortcut; max pool keeps 1-byte window codes,
    not its input and int64 indices. (With the shortcut kept, the ratios were 0.854
    and 1.010; they are 0.832 and 0.952.)"""
    kw = dict(num_classes=5, width=8)
    x = torch.randn(2, 3, 32, 32, device=device)
    ours = _saved_bytes(models.ResNet(getattr(models, block), layers, **kw).to(device), x)
    theirs = _saved_bytes(reference.ResNet(getattr(reference, block), layers, **kw).to(device), x)
    assert ours < ratio * theirs, (ours, theirs)


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_resnet_matches_torchvision_structured_twin(block, device):
    """nnlib's fused ResNet computes what torchvision's structure computes (the twin:
    separate ReLUs, residual add), outputs and gradients, in training mode."""
    kw = dict(num_classes=5, width=8)
    twin = reference.ResNet(getattr(reference, block), [1, 1], **kw).to(device)
    ours = models.ResNet(getattr(models, block), [1, 1], **kw).to(device)
    ours.load_state_dict(twin.state_dict())
    x = torch.randn(2, 3, 16, 16, device=device)
    out, ref = ours(x), twin(x)
    assert rel_err(out, ref) < 1e-4
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    for (name, p), (_, q) in zip(ours.named_parameters(), twin.named_parameters()):
        assert rel_err(p.grad, q.grad) < 1e-4, name
    for (name, b), (_, c) in zip(ours.named_buffers(), twin.named_buffers()):
        assert rel_err(b, c) < 1e-5, name


class _FakeWeights:
    """A torchvision WeightsEnum member as the builders use it."""
    meta = {"categories": [f"class {i}" for i in range(7)]}

    def __init__(self, state_dict):
        self.state_dict, self.calls = state_dict, []

    def get_state_dict(self, **kwargs):
        self.calls.append(kwargs)
        return self.state_dict


def test_builders_take_torchvision_weights(monkeypatch):
    """The torchvision builders' keywords: ``weights=None`` / ``progress`` build the
    network; a weights object loads its state_dict strictly (our keys are
    torchvision's), its category count must be num_classes; the fixed arguments
    of resnext / wide_resnet refuse other values. (torchvision's ``verify``, where
    torchvision is installed, would refuse the stand-in weights: skipped.)"""
    from nnlib.models import _builders
    resolve = _builders._resolve
    monkeypatch.setattr(_builders, "_resolve",
                        lambda weights, name: weights if isinstance(weights, _FakeWeights) else resolve(weights, name))
    kw = dict(width=8)
    source = models.resnet18(7, **kw)
    weights = _FakeWeights(source.state_dict())
    loaded = models.resnet18(7, weights=weights, progress=False, **kw)
    assert weights.calls == [{"progress": False, "check_hash": True}]
    for (name, a), (_, b) in zip(loaded.state_dict().items(), source.state_dict().items()):
        assert torch.equal(a, b), name
    assert models.vgg11(weights=None, progress=True, width=8, hidden=16).classifier[-1].out_features == 1000
    with pytest.raises(ValueError, match="categories"):
        models.resnet18(10, weights=weights, **kw)
    features = _FakeWeights(models.vgg11(3, width=8, hidden=16).state_dict())
    features.meta = {"categories": None}         # as torchvision's VGG16_Weights.IMAGENET1K_FEATURES
    assert models.vgg11(3, weights=features, width=8, hidden=16).classifier[-1].out_features == 3
    with pytest.raises(RuntimeError, match="Missing key"):
        models.resnet34(7, weights=weights, **kw)
    with pytest.raises(ValueError, match="groups"):
        models.resnext50_32x4d(groups=8, **kw)
    assert models.wide_resnet50_2(width_per_group=128, **kw).layer1[0].conv2.out_channels == 16
    for legacy in ({"num_classes": True}, {"weights": False}):      # torchvision's pretrained bool
        with pytest.raises(TypeError, match="pretrained"):
            models.resnet18(**legacy, **kw)
    try:
        import torchvision  # noqa: F401  (with it, a name would download torchvision's weights)
    except ImportError:
        with pytest.raises(ImportError, match="torchvision"):
            models.resnet18(weights="IMAGENET1K_V1")


@pytest.mark.parametrize("case", ["dilation", "group-norm", "torch-batch-norm"])
def test_resnet_torchvision_arguments_match_the_twin(case, device):
    """torchvision's replace_stride_with_dilation (dilated stages keep the
    resolution) and norm_layer (a factory of other norms: the blocks run unfused)
    give the float64 twin's outputs and gradients (float64: batch norms over few
    values per channel amplify float32 rounding in torch's twin as in ours)."""
    import functools
    kw = dict(num_classes=5, width=16)
    ours_kw, twin_kw = dict(kw), dict(kw)
    if case == "dilation":
        ours_kw["replace_stride_with_dilation"] = twin_kw["replace_stride_with_dilation"] = [False, True]
    elif case == "group-norm":
        ours_kw["norm_layer"] = functools.partial(nnlib.GroupNorm, 4)
        twin_kw["norm_layer"] = functools.partial(nn.GroupNorm, 4)
    else:       # torch's class, as torchvision's detection backbones pass it: nnlib's, fused
        ours_kw["norm_layer"] = twin_kw["norm_layer"] = nn.BatchNorm2d
    twin = reference.ResNet(reference.Bottleneck, [1, 1, 2], **twin_kw).to(device)
    ours = models.ResNet(models.Bottleneck, [1, 1, 2], **ours_kw).to(device)
    ours.load_state_dict(twin.state_dict())
    twin.double()
    assert isinstance(ours.layer1[0].bn3, nnlib.BatchNorm2d) == (case != "group-norm")
    if case == "dilation":       # as torchvision: the stage's first block keeps the previous dilation
        assert ours.layer3[0].conv2.stride == (1, 1) and ours.layer3[1].conv2.dilation == (2, 2)
        assert ours.forward_features(torch.randn(1, 3, 32, 32, device=device)).shape[-1] == 4
    x = torch.randn(2, 3, 32, 32, device=device)
    out, ref = ours(x), twin(x.double())
    assert rel_err(out, ref) < 1e-4
    g = torch.randn_like(ref)
    out.backward(g.float())
    ref.backward(g)
    for (name, p), (_, q) in zip(ours.named_parameters(), twin.named_parameters()):
        assert rel_err(p.grad, q.grad) < 1e-4, name


def test_gradient_penalty_through_resnet(device):
    """Second derivatives through a whole network (a WGAN-GP style penalty on the
    input gradient): conv, batch norm with the fused residual and ReLU, max pool,
    all differentiated twice, give torchvision's structure's parameter gradients."""
    kw = dict(num_classes=3, width=8)
    twin = reference.ResNet(reference.BasicBlock, [1, 1], **kw).to(device)
    ours = models.ResNet(models.BasicBlock, [1, 1], **kw).to(device)
    ours.load_state_dict(twin.state_dict())
    x = torch.randn(2, 3, 12, 12, device=device)
    for model in (ours, twin):
        xi = x.clone().requires_grad_()
        (grad_x,) = torch.autograd.grad(model(xi).square().sum(), xi, create_graph=True)
        grad_x.square().sum().backward()
    for (name, p), (_, q) in zip(ours.named_parameters(), twin.named_parameters()):
        assert rel_err(p.grad, q.grad) < 1e-3, name


def test_nf_resnet_signal_propagation():
    """At initialisation the residual stream's variance follows the analytic schedule
    (1 + alpha**2 after a transition, + alpha**2 per block) with no normalization:
    its ratio to the schedule stays near 1 with depth (the stem has no activation:
    a ReLU there, before the first block's scaled one, tripled the variance)."""
    model = models.nf_resnet26(10, width=8).double()   # float64: torch's path, fast
    x = torch.randn(8, 3, 64, 64, dtype=torch.float64)
    h = model.stem_pool(model.stem(x))
    alpha, ratios = 0.2, []
    for stage in model.stages:
        expected = 1.0
        for j, block in enumerate(stage):
            h = block(h)
            expected = (1.0 if j == 0 else expected) + alpha ** 2
            ratios.append(h.var().item() / expected)
    assert 0.7 < min(ratios) and max(ratios) < 1.3, ratios
    expected, betas = 1.0, []           # each block divides by beta = sqrt(the schedule before it)
    for stage in model.stages:
        for j, block in enumerate(stage):
            betas.append((nfnet.RELU_GAIN / block.conv1.in_scale, expected ** 0.5))
            expected = (1.0 if j == 0 else expected) + alpha ** 2
    assert all(abs(got - want) < 1e-12 for got, want in betas), betas
    conv = model.stages[1][0].conv2
    w = conv.standardized_weight() / (conv.in_scale * conv.out_scale)
    fan_in = w[0].numel()
    assert torch.allclose(w.mean((1, 2, 3)), torch.zeros(w.shape[0], dtype=w.dtype), atol=1e-12)
    assert torch.allclose(w.var((1, 2, 3), correction=0) * fan_in, torch.ones(w.shape[0], dtype=w.dtype))


def test_model_arguments():
    with pytest.raises(ValueError, match="layers"):
        models.ResNet(models.BasicBlock, [])
    with pytest.raises(ValueError, match="8 entries"):
        models.DRN((1, 1), (16, 32))
    with pytest.raises(ValueError, match="out_scale"):
        models.ScaledStdConv2d(3, 4, 3, out_scale=-1.0, activation="relu")


# ---------------------------------------------------------------------------
# convert

CONVERTIBLE = [
    (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (2, 3, 7, 9)),
    (lambda: nn.MaxPool2d(3, 2, 1), (2, 3, 7, 9)),
    (lambda: nn.ReLU(), (2, 3, 5, 6)),
    (lambda: nn.LeakyReLU(0.2), (2, 3, 5, 6)),
    (lambda: nn.PReLU(3), (2, 3, 5, 6)),
    (lambda: nn.BatchNorm1d(3), (4, 3, 5)),
    (lambda: nn.BatchNorm2d(3), (2, 3, 5, 6)),
    (lambda: nn.BatchNorm3d(3), (2, 3, 3, 4, 5)),
    (lambda: nn.LayerNorm([5, 6]), (2, 3, 5, 6)),
    (lambda: nn.InstanceNorm1d(3, affine=True), (2, 3, 7)),
    (lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True), (2, 3, 5, 6)),
    (lambda: nn.InstanceNorm3d(3), (2, 3, 3, 4, 5)),
    (lambda: nn.GroupNorm(2, 4), (2, 4, 5, 6)),
]


@pytest.mark.parametrize("build,shape", CONVERTIBLE, ids=[b().__class__.__name__ for b, _ in CONVERTIBLE])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_convert_each_layer(build, shape, mode, device):
    torch_module = build().train(mode == "train").to(device)
    for p in torch_module.parameters():          # not the default init: catches a swapped weight / bias
        nn.init.uniform_(p, 0.5, 1.5)
    ours = nnlib.convert(torch_module)
    assert type(ours) is getattr(layers, type(torch_module).__name__)
    assert type(torch_module).__module__.startswith("torch")   # the original is left alone
    assert ours.training == torch_module.training
    for (k, a), (_, b) in zip(ours.state_dict().items(), torch_module.state_dict().items()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), k
    x = torch.randn(shape, device=device, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    with nnlib.count_launches() as launches:
        out = ours(x)
    ref = torch_module(x_ref)
    assert launches.total > 0
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    for (k, p), (_, q) in zip(ours.named_parameters(), torch_module.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=k)
    for (k, a), (_, b) in zip(ours.state_dict().items(), torch_module.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=k)


def test_convert_model_keeps_state():
    class Custom(nn.Conv2d):       # a subclass has its own forward: left alone
        pass
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), Custom(4, 4, 1),
                          nn.Sequential(nn.GroupNorm(2, 4), nn.Dropout(0.1)), nn.Flatten(), nn.Linear(4, 3))
    model[4].eval()
    model.half()
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    copied = nnlib.convert(model)
    assert [type(m) for m in copied] == [layers.Conv2d, layers.BatchNorm2d, layers.ReLU, Custom, nn.Sequential,
                                         nn.Flatten, nn.Linear]
    assert type(copied[4][0]) is layers.GroupNorm and type(copied[4][1]) is nn.Dropout
    assert type(model[0]) is nn.Conv2d                                   # inplace=False: a copy
    assert copied[2].inplace and not copied[4].training and copied[0].training
    assert copied[0].weight.dtype == torch.float16 and copied[0].weight is not model[0].weight
    assert copied[0].activation is None and copied[1].activation is None  # extras off
    params = list(model.parameters())
    same = nnlib.convert(model, inplace=True)
    assert same is model and type(model[1]) is layers.BatchNorm2d
    assert all(a is b for a, b in zip(params, model.parameters()))       # an optimizer stays valid
    root = nnlib.convert(nn.Conv2d(1, 1, 1))
    assert type(root) is layers.Conv2d
    fused = nnlib.convert(models.digits_cnn())          # nnlib layers are left as they are
    assert fused.conv1.activation == "relu" and fused.bn2.activation == "relu"
    assert len(model[0]._forward_hooks) == 1
    with pytest.raises(TypeError, match="Module"):
        nnlib.convert(torch.zeros(1))


def test_convert_parametrized_layers(device):
    """A twin that torch.nn.utils.parametrize gave a class of its own (weight_norm,
    spectral_norm, any register_parametrization) becomes the nnlib twin with its
    parametrizations: torch's values and gradients, nnlib's kernels; removing them
    leaves the nnlib class; the original model is left alone."""
    class Scale(nn.Module):
        def forward(self, w):
            return 2 * w
    torch.manual_seed(0)
    model = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4),
                          nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 4, 1))).to(device)
    nn.utils.parametrize.register_parametrization(model[1], "weight", Scale())
    ours = nnlib.convert(model)
    assert [type(m).__name__ for m in ours] == ["ParametrizedConv2d", "ParametrizedBatchNorm2d", "ParametrizedConv2d"]
    assert [type(m).__bases__ for m in ours] == [(layers.Conv2d,), (layers.BatchNorm2d,), (layers.Conv2d,)]
    assert type(model[0]).__bases__ == (nn.Conv2d,)          # inplace=False: the original keeps its classes
    assert ours.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(2, 3, 6, 6, device=device, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    ours.eval(), model.eval()               # spectral norm's power iteration updates its vectors in training
    with nnlib.count_launches() as launches:
        out = ours(x)
    assert sum(n for name, n in launches.counts.items() if name.startswith("_conv_fwd")) == 2
    ref = model(x_ref)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-4, rtol=1e-4)
    for (k, p), (_, q) in zip(ours.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=k)
    nn.utils.parametrize.remove_parametrizations(ours[0], "weight")
    assert type(ours[0]) is layers.Conv2d
    torch.testing.assert_close(ours[0].weight, model[0].weight)


def test_convert_lazy_modules_become_nnlib_layers(device):
    """A lazy module not yet materialised becomes the nnlib twin at its first call
    (torch's would become the torch.nn class), extras off; that call runs torch's
    forward, the next ones nnlib's kernels, with torch's values."""
    def build():
        return nn.Sequential(nn.LazyConv2d(4, 3, padding=1), nn.LazyBatchNorm2d(),
                             nn.LazyInstanceNorm2d(affine=True)).to(device)

    def first_call(model):      # it initialises the parameters
        torch.manual_seed(0)
        return model(x)
    model, reference_model = nnlib.convert(build(), inplace=True), build()
    x = torch.randn(2, 3, 6, 5, device=device)
    torch.testing.assert_close(first_call(model), first_call(reference_model), atol=1e-5, rtol=1e-5)
    assert [type(m) for m in model] == [layers.Conv2d, layers.BatchNorm2d, layers.InstanceNorm2d]
    assert all(m.activation is None for m in model)
    with nnlib.count_launches() as launches:
        y = model(x)
    counts = launches.counts        # a convolution, and each norm's statistics (two passes, or one read)
    assert sum(n for name, n in counts.items() if name.startswith("_conv_fwd")) == 1
    assert counts["_stats_kernel"] + counts["_set_fwd_kernel"] == 2
    torch.testing.assert_close(y, reference_model(x), atol=1e-5, rtol=1e-5)


def test_converted_model_traces_with_torch_fx(device):
    """torch.fx's default tracer keeps nnlib's layers as leaves, as it keeps
    torch.nn's: a converted (and a fused) model traces to call_module nodes, and
    the GraphModule runs nnlib's kernels with the model's values (tools built on
    torch.fx: feature extractors, graph passes); a layer with hooks, or a
    subclass's forward, is traced into (nnlib.functional's calls become
    call_function nodes) rather than called with its hooks run twice."""
    model = _randomize_bn(reference.ResNet(reference.BasicBlock, [1, 1], num_classes=5, width=8)).eval()
    converted = nnlib.convert(model).to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    for version in (converted, nnlib.fuse(converted)):
        graph_module = torch.fx.symbolic_trace(version)
        called = {n.target for n in graph_module.graph.nodes if n.op == "call_module"}
        assert {"conv1", "relu", "maxpool", "layer1.0.conv2", "layer2.0.relu"} <= called
        with torch.no_grad(), nnlib.count_launches() as launches:
            out = graph_module(x)
        assert launches.total > 0
        with torch.no_grad():
            torch.testing.assert_close(out, version(x))
    # Where the node's call would not do what the traced call does, the layer is traced
    # into: hooks (the tracer ran them, the node would again), a subclass's forward.
    hooked = nn.Sequential(nnlib.Conv2d(3, 4, 3)).to(device)
    hooked[0].register_forward_hook(lambda module, args, out: out * 2)

    class Shifted(nnlib.Conv2d):
        def forward(self, input):
            return super().forward(input + 1)
    for model in (hooked, nn.Sequential(Shifted(3, 4, 3)).to(device)):
        graph_module = torch.fx.symbolic_trace(model)
        assert [n.target for n in graph_module.graph.nodes if n.op == "call_module"] == []
        with torch.no_grad():
            torch.testing.assert_close(graph_module(x), model(x))
    with torch.no_grad():
        torch.testing.assert_close(hooked(x), nnlib.functional.conv2d(x, hooked[0].weight, hooked[0].bias) * 2)


def test_jit_trace_records_torchs_ops(device):
    """torch.jit.trace of a converted model records torch's ops (nnlib takes
    torch's path while it records: TorchScript and ONNX export know those), with
    the model's values."""
    model = nnlib.convert(_randomize_bn(reference.ResNet(reference.BasicBlock, [1, 1], num_classes=5,
                                                         width=8)).eval()).to(device)
    x = torch.randn(2, 3, 16, 16, device=device)
    with nnlib.count_launches() as launches:
        traced = torch.jit.trace(model, x, check_trace=False)
    assert launches.total == 0
    assert "aten::_convolution" in str(traced.inlined_graph)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# fuse


def _randomize_bn(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_zero_init_residual_as_torchvision(block):
    """zero_init_residual zeroes each block's last batch-norm weight (bn2 / bn3), and
    the rest of the initialisation draws as torchvision's."""
    def build(zoo):
        torch.manual_seed(0)
        return zoo.ResNet(getattr(zoo, block), [1, 1], num_classes=5, width=8, zero_init_residual=True)
    ours, theirs = build(models), build(reference)
    last = "bn3" if block == "Bottleneck" else "bn2"
    assert not getattr(ours.layer1[0], last).weight.any()
    for (name, value), want in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(value, want), name


def test_fuse_refuses_training_mode():
    model = models.digits_cnn()
    with pytest.raises(RuntimeError, match="eval"):
        nnlib.fuse(model)
    model.eval()
    model.bn2.train()
    with pytest.raises(RuntimeError, match="bn2"):
        nnlib.fuse(model)


def test_fuse_resnet(device):
    model = _randomize_bn(models.ResNet(models.BasicBlock, [1, 1], num_classes=5, width=8)).eval().to(device)
    x = torch.randn(2, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    fused = nnlib.fuse(model)
    assert type(model.bn1) is layers.BatchNorm2d                       # the original is untouched
    assert isinstance(fused.bn1, nn.Identity) and fused.conv1.activation == "relu"
    block = fused.layer2[0]
    assert isinstance(block.bn1, nn.Identity) and block.conv1.activation == "relu"
    assert type(block.bn2) is layers.BatchNorm2d                       # carries the residual: kept
    assert isinstance(block.downsample[1], nn.Identity) and block.downsample[0].activation is None
    assert block.downsample[0].bias is not None
    with nnlib.count_launches() as a, torch.no_grad():
        ref = model(x)
    with nnlib.count_launches() as b, torch.no_grad():
        out = fused(x)
    assert b.total < a.total and not b.counts["_activation_fwd_kernel"]      # the folded ReLUs are not redone
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_resnet_with_norms_swapped_in(block, device):
    """Batch norms replaced on a built ResNet (FrozenBatchNorm2d-like modules, GroupNorm,
    Identity, nnlib's without an activation: what detectron2's or opacus's converters
    do) run torchvision's unfused forward there, the ReLU and the shortcut applied by
    the block: values and gradients equal torchvision's (reference.ResNet) with the
    same swaps (the stem's ReLU was dropped, a block's last norm raised TypeError);
    nnlib's SyncBatchNorm conversion keeps the fused forms."""
    torch.manual_seed(0)
    ours = models.ResNet(getattr(models, block), [1, 1], num_classes=5, width=8, small_input=True).to(device)
    theirs = reference.ResNet(getattr(reference, block), [1, 1], num_classes=5, width=8, small_input=True)
    theirs = theirs.to(device)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 16, 16, device=device)
    synced = layers.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ours))     # its norms keep the fused forms
    assert type(synced.layer1[0].bn1) is layers.SyncBatchNorm and rel_err(synced(x), theirs(x)) < 1e-5
    last = "bn3" if block == "Bottleneck" else "bn2"
    swaps = {"bn1": lambda c: nn.BatchNorm2d(c), "layer1.0.bn1": lambda c: nn.GroupNorm(2, c),
             f"layer1.0.{last}": lambda c: layers.BatchNorm2d(c), f"layer2.0.{last}": lambda c: nn.Identity()}
    for name, make in swaps.items():
        parent, _, child = name.rpartition(".")
        channels = ours.get_submodule(name).num_features
        for model in (ours, theirs):
            torch.manual_seed(1)
            setattr(model.get_submodule(parent) if parent else model, child, make(channels).to(device))
    out, ref = ours(x), theirs(x)
    assert rel_err(out, ref) < 1e-5
    out.square().sum().backward()
    ref.square().sum().backward()
    for (key, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert rel_err(p.grad, q.grad) < 1e-4, key


def test_fuse_torch_sequential(device):
    """A torch.nn model (converted on the way): conv-bn-relu and conv-leaky_relu fuse."""
    seq = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                        nn.MaxPool2d(2), nn.Conv2d(6, 4, 3), nn.LeakyReLU(0.3), nn.Flatten())
    seq = _randomize_bn(seq).eval().to(device)
    fused = nnlib.fuse(seq)
    assert [type(m) for m in fused] == [layers.Conv2d, nn.Identity, nn.Identity, layers.MaxPool2d, layers.Conv2d,
                                        nn.Identity, nn.Flatten]
    assert fused[0].activation == "relu" and fused[4].activation == "leaky_relu"
    assert fused[4].negative_slope == 0.3
    x = torch.randn(2, 3, 10, 12, device=device)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), seq(x), atol=1e-5, rtol=1e-5)


def test_fuse_carries_eps_and_the_batch_norms_activation(device):
    """A folded batch norm's own eps, and its fused activation with its slope, reach
    the conv it folds into (torch's and nnlib's batch norms)."""
    seq = nn.Sequential(layers.Conv2d(3, 6, 3, padding=1),
                        layers.BatchNorm2d(6, eps=0.5, activation="leaky_relu", negative_slope=0.3),
                        nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4, eps=0.25))
    seq = _randomize_bn(seq).eval().to(device)
    fused = nnlib.fuse(seq)
    assert [type(m) for m in fused] == [layers.Conv2d, nn.Identity, layers.Conv2d, nn.Identity]
    assert (fused[0].activation, fused[0].negative_slope) == ("leaky_relu", 0.3)
    x = torch.randn(2, 3, 10, 12, device=device)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), seq(x), atol=1e-5, rtol=1e-5)


def test_fuse_leaves_a_conv_used_twice():
    """A conv module placed in two Sequentials, each followed by its own batch norm:
    folding either would change the other's path, so neither folds (in a traced
    model, and in an untraceable one, where fuse scans the Sequentials)."""
    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            conv = nn.Conv2d(3, 4, 3, padding=1)
            self.a, self.b = nn.Sequential(conv, nn.BatchNorm2d(4)), nn.Sequential(conv, nn.BatchNorm2d(4))

        def forward(self, x):
            if self.untraceable and x.sum() > 0:
                x = x * 1
            return self.a(x) + self.b(x)
    for untraceable in (False, True):
        model = _randomize_bn(TwoBranches()).eval()
        model.untraceable = untraceable
        model.b[1].running_mean.add_(1.0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "torch.fx cannot trace")
            fused = nnlib.fuse(model)
        assert type(fused.a[1]) is type(fused.b[1]) is layers.BatchNorm2d
        x = torch.randn(2, 3, 6, 7)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)


def test_batch_norm_that_stops_tracking_uses_batch_statistics_in_training_only(device):
    """track_running_stats switched off after construction (the buffers stay): eval
    still normalises by the running statistics and training by the batch's, without
    moving them, as torch's module."""
    ours, twin = layers.BatchNorm2d(4).to(device), nn.BatchNorm2d(4).to(device)
    x = torch.randn(3, 4, 5, 6, device=device)
    ours(x), twin(x)
    ours.track_running_stats = twin.track_running_stats = False
    for training in (False, True):
        ours.train(training), twin.train(training)
        torch.testing.assert_close(ours(x), twin(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_mean, twin.running_mean)
    assert int(ours.num_batches_tracked) == int(twin.num_batches_tracked) == 1


@pytest.mark.parametrize("block", ["BasicBlock", "Bottleneck"])
def test_fuse_shared_relu(device, block):
    """torchvision's blocks call one ReLU module two or three times: the convs before
    it take it into their epilogue, and the module stays, passing their outputs as
    they are (the call after the residual add still applies it). The stem's ReLU,
    called once, becomes nn.Identity. The fused model deep-copies, pickles, fuses
    again and compiles."""
    twin = _randomize_bn(reference.ResNet(getattr(reference, block), [1, 1], num_classes=5, width=8))
    twin = twin.eval().to(device)
    fused = nnlib.fuse(twin)
    assert isinstance(fused.relu, nn.Identity)
    for owner in (fused.layer1[0], fused.layer2[0]):
        assert type(owner) is getattr(reference, block) and isinstance(owner.relu, layers.ReLU)
        assert owner.conv1.activation == "relu" and owner.conv2.activation == ("relu" if block == "Bottleneck"
                                                                              else None)
    x = torch.randn(2, 3, 16, 16, device=device)
    with nnlib.count_launches() as before, torch.no_grad():
        ref = nnlib.convert(twin)(x)
    with nnlib.count_launches() as after, torch.no_grad():
        out = fused(x)
    relus = 3 + 2 * (block == "Bottleneck")     # stem, conv1 of each block, conv2 of each Bottleneck
    assert after.counts["_activation_fwd_kernel"] == before.counts["_activation_fwd_kernel"] - relus == 2
    assert rel_err(out, ref) < 1e-5
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), out)
    if block == "Bottleneck":
        return
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    with torch.no_grad():
        for again in (copy.deepcopy(fused), torch.load(buffer, weights_only=False), nnlib.fuse(fused),
                      torch.compile(fused, backend="eager", fullgraph=True)):
            torch.testing.assert_close(again(x), out)


def test_fuse_shared_leaky_relu_applies_itself_to_what_changed():
    """A shared activation that is not idempotent (leaky ReLU) passes a fused conv's
    output once: a second call on the same tensor, written in place since, applies
    the activation. The convs apply the module's slope as it is when called."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 3, 3, padding=1), nn.LeakyReLU(0.2)
            self.conv2 = nn.Conv2d(3, 3, 1)

        def forward(self, x, skip=None):
            out = self.act(self.conv(x))
            out.neg_()                                  # written in place: the next call applies itself
            out = self.act(out)
            if skip is not None:
                out = out + skip
            return self.act(self.conv2(out)) - self.act(x)
    model = Block().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = model(x)
        fused = nnlib.fuse(model)
        assert fused.conv.activation == fused.conv2.activation == "leaky_relu"
        torch.testing.assert_close(fused(x), ref)
        with torch.inference_mode():
            torch.testing.assert_close(fused(x), ref)
        model.act.negative_slope = fused.act.negative_slope = 0.5
        torch.testing.assert_close(fused(x), model(x))
        assert fused.conv.negative_slope == 0.5 and "negative_slope=0.5" in repr(fused.conv)


def test_fuse_shared_relu_of_the_model_itself():
    """A model whose own forward calls one ReLU after every layer (LeNet-5): fused in
    place, the model itself."""
    model = reference.LeNet5().eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        ref = nnlib.convert(model)(x)
    fused = nnlib.fuse(model, inplace=True)
    assert fused is model and model.conv3.activation == "relu" and isinstance(model.relu, layers.ReLU)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref, atol=1e-5, rtol=1e-5)


def test_fuse_keeps_what_folding_would_change():
    """A module registered under two names is folded under both; a conv, batch norm or
    activation with hooks (weight_norm's among them) is not folded; LeakyReLU(True)
    (a slope of 1) folds as a number; a Sequential subclass, which may run its
    children otherwise, is not fused in an untraceable model; what forward stores on
    the model while fuse traces it does not stay."""
    class Wrapper(nn.Module):       # a backbone's stem registered again as layer0
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(True))
            self.layer0 = nn.Sequential(*self.backbone)

        def forward(self, x):
            return self.layer0(x)

    class Hooked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU()
            self.conv2, self.bn2, self.act2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1)
            self.conv.register_forward_hook(lambda module, args, out: out.mul_(-2.0))
            self.act2.register_forward_pre_hook(lambda module, args: (args[0] - 1.0,))

        def forward(self, x):
            return self.act2(self.conv2(self.act(self.bn(self.conv(x)))))

    class Reversed(nn.Sequential):
        def forward(self, x):
            for module in reversed(self):
                x = module(x)
            return x

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Reversed(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU())     # runs ReLU, BN, conv

        def forward(self, x):
            return self.body(x if x.sum() > 0 else -x)
    class Lazy(nn.Module):          # forward stores what it makes: tracing must not leave a Proxy there
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3), nn.ReLU()
            self.offset = None

        def forward(self, x):
            if self.offset is None:
                self.offset = x.new_full((1, 3, 1, 1), 0.5)
            return self.act(self.bn(self.conv(x))) + self.offset
    for model in (Wrapper(), Hooked(), Untraceable(), Lazy()):
        model = _randomize_bn(model).eval()
        x = torch.randn(2, 3, 6, 5)
        fused = nnlib.fuse(model)
        with torch.no_grad():
            torch.testing.assert_close(fused(x.clone()), model(x.clone()), atol=1e-5, rtol=1e-5)
        if isinstance(model, Untraceable):
            assert fused.body[0].activation is None and type(fused.body[1]) is layers.BatchNorm2d
    assert isinstance(fused.bn, nn.Identity) and torch.equal(fused.offset, torch.full((1, 3, 1, 1), 0.5))


def test_fuse_leaves_what_it_cannot_fold():
    class TwoUsers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)

        def forward(self, x):
            y = self.conv(x)
            z = self.bn(y) + y                      # conv output used twice: no fold
            return self.bn2(self.conv2(z))         # batch statistics even in eval: no fold
    model = TwoUsers().eval()
    fused = nnlib.fuse(model)
    assert type(fused.bn) is layers.BatchNorm2d and type(fused.bn2) is layers.BatchNorm2d


def test_fuse_leaves_a_batch_norm_whose_tensors_forward_reads():
    """Forward that reads a conv's weight itself (one weight, two dilations: a
    TridentNet block) or a batch norm's parameter: that batch norm is not folded
    (the other convolution would read the folded weight; the Identity has no
    weight); the rest is."""
    class Reads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
            self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
            self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x)) + TF.conv2d(x, self.conv.weight, padding=2, dilation=2)
            y = self.bn2(self.conv2(y)) - self.bn2.weight.view(1, -1, 1, 1)
            return self.bn3(self.conv3(y))
    model = _randomize_bn(Reads()).eval()
    fused = nnlib.fuse(model)
    assert type(fused.bn) is layers.BatchNorm2d and type(fused.bn2) is layers.BatchNorm2d
    assert isinstance(fused.bn3, nn.Identity)
    x = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)


def test_fuse_runs_no_hook_while_it_traces():
    """The trace does not run the model's hooks: a feature-collecting hook keeps no
    torch.fx Proxy, a hook that branches on its output does not stop the trace, and
    the chains inside the hooked blocks are folded."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x))
    model = _randomize_bn(nn.Sequential(Block(), Block())).eval()
    features = []
    model[0].register_forward_hook(lambda module, args, out: features.append(out))
    model[1].register_forward_pre_hook(lambda module, args: (args[0].clamp(max=1.0) if args[0].max() > 1 else args[0],))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused = nnlib.fuse(model)
    assert features == [] and all(isinstance(block.bn, nn.Identity) for block in fused)
    x = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)
    assert len(features) == 2 and all(type(f) is torch.Tensor for f in features)


@pytest.mark.parametrize("untraceable", ["branch", "len", "unregistered"])
def test_fuse_untraceable_model_falls_back_to_sequentials(untraceable):
    """Whatever stops torch.fx (data-dependent control flow, len of a traced value,
    a module the model does not register), fuse works within nn.Sequential
    containers; their activation modules stay (the model may call them elsewhere)."""
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.unregistered = [nn.ReLU()]

        def forward(self, x):
            if untraceable == "branch" and x.sum() > 0:
                x = -x
            y = self.body(x) * (len(x) if untraceable == "len" else 1)
            y = self.unregistered[0](y) if untraceable == "unregistered" else y
            return y + self.body[2](x).mean()      # the Sequential's ReLU, called again
    model = _randomize_bn(Untraceable()).eval()
    with pytest.warns(UserWarning, match="torch.fx cannot trace Untraceable .*called as a whole"):
        fused = nnlib.fuse(model)
    assert isinstance(fused.body[1], nn.Identity) and fused.body[0].activation == "relu"
    x = torch.randn(1, 3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# receptive_field


def test_receptive_field_vgg16_and_resnets():
    """Published values: VGG-16 to pool5 212 px, jump 32, effective padding 90
    (Araujo et al. 2019); torchvision's ResNet-50 427 and ResNet-18 435."""
    with torch.device("meta"):
        vgg, r50, r18 = models.vgg16(), models.resnet50(), models.resnet18()
    params = [p.device for p in vgg.parameters()]
    table = nnlib.receptive_field(vgg.features, (3, 224, 224))
    assert [p.device for p in vgg.parameters()] == params
    last = table[-1]
    assert (last.name, last.kind, last.output_size) == ("30", "MaxPool2d", (7, 7))
    assert (last.size, last.jump, last.start) == ((212, 212), (32, 32), (-90, -90))
    assert len(table) == 13 + 5
    for model, size in ((r50, 427), (r18, 435)):
        rows = {r.name: r for r in nnlib.receptive_field(model, (1, 3, 224, 224))}
        final = rows["layer4.2.conv2" if model is r50 else "layer4.1.conv2"]
        assert final.size == (size, size) and final.jump == (32, 32) and final.output_size == (7, 7)
        assert rows["avgpool"].output_size == (1, 1) and rows["avgpool"].jump == (224, 224)


def test_receptive_field_by_hand():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2))
            self.b = layers.MaxPool2d((2, 3), stride=2, padding=(0, 1), dilation=(1, 2))
            self.c = nn.Conv2d(4, 4, 3, padding="same", dilation=2)
            self.skip = nn.Conv2d(4, 4, (1, 5), padding=(0, 4), dilation=(1, 2))
            self.d = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.b(self.a(x))
            return self.d(torch.relu(self.c(y) + self.skip(y)))
    table = nnlib.receptive_field(Net(), (3, 20, 21))
    a, b, c, skip, d = table
    # a: size 1 + (k - 1), jump = stride, start = -padding
    assert (a.size, a.jump, a.start, a.output_size) == ((3, 5), (2, 1), (-1, -2), (10, 21))
    # b: dilated extent (2, 5): size + (extent - 1) * jump; start - padding * jump
    assert (b.size, b.jump, b.start, b.output_size) == ((5, 9), (4, 2), (-1, -3), (5, 10))
    # c: 'same' with dilation 2 pads 2; extent 5
    assert (c.size, c.jump, c.start) == ((21, 17), (4, 2), (-9, -7))
    # skip: rows as b; columns extent 9 at jump 2 from -3 - 4 * 2
    assert (skip.size, skip.start) == ((5, 25), (-1, -11))
    # after the add: the union of both branches, rows from c, columns from skip
    assert (d.size, d.jump, d.start) == ((21, 25), (4, 2), (-9, -11))
    text = str(table)
    assert "layer" in text and "jump" in text and "5x9" in text and "20x21" in text
    with pytest.raises(ValueError, match="input_size"):
        nnlib.receptive_field(Net(), (20, 21))


def test_receptive_field_of_functions_padding_gates_and_training_mode():
    """Pooling and convolution called as torch functions get their rows (input by
    position or keyword); a padding layer or F.pad moves the start (jump and size
    stay); a squeeze-and-excitation gate (broadcast over the image) leaves the field
    as it is, an image-pooling branch upsampled back joins it; a pool returning
    indices is a window; a model in training mode with batch norm runs."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pad = nn.ReflectionPad2d(3)
            self.a = nn.Conv2d(3, 4, 7)
            self.bn = nn.BatchNorm1d(4)
            self.fc = nn.Linear(4, 4)
            self.pool = nn.MaxPool2d(2, return_indices=True)
            self.b = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            y = torch.relu(self.a(self.pad(x)))                       # 7 / 1 / -3
            y = nn.functional.max_pool2d(y, 2)                        # 8 / 2 / -3
            gate = torch.sigmoid(self.fc(self.bn(y.mean((2, 3)))))
            y = y * gate.view(*gate.shape, 1, 1)
            y, _ = self.pool(nn.functional.pad(y, (1, 0, 2, 0)))       # start -3 - (2, 1) * 2; 10 / 4
            return self.b(y)                                          # 18 / 4
    class ImagePooling(nn.Module):      # a global branch upsampled back: not a gate
        def __init__(self):
            super().__init__()
            self.stem, self.pool = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1)
            self.head = nn.Conv2d(8, 4, 3, padding=1)

        def forward(self, x):
            y = self.stem(x)                                                    # 3 / 2 / -1
            pooled = nn.functional.interpolate(self.pool(y), size=y.shape[-2:])  # 33 / 2 / -1
            z = self.head(torch.cat([y, pooled], 1))                            # 37 / 2 / -3
            return nn.functional.conv2d(input=z, weight=self.head.weight[:, :4], padding=1)   # 41 / 2 / -5
    rows = [(r.name, r.size[0], r.jump[0], r.start[0]) for r in nnlib.receptive_field(ImagePooling(), (3, 32, 32))]
    assert rows == [("stem", 3, 2, -1), ("pool", 33, 32, -1), ("head", 37, 2, -3), ("conv2d", 41, 2, -5)]
    rows = {r.name: r for r in nnlib.receptive_field(Net(), (3, 32, 32))}
    assert list(rows) == ["a", "max_pool2d", "pool", "b"]
    assert (rows["a"].size, rows["a"].jump, rows["a"].start) == ((7, 7), (1, 1), (-3, -3))
    assert (rows["max_pool2d"].size, rows["max_pool2d"].jump, rows["max_pool2d"].start) == ((8, 8), (2, 2), (-3, -3))
    assert (rows["pool"].size, rows["pool"].jump, rows["pool"].start) == ((10, 10), (4, 4), (-7, -5))
    assert (rows["b"].size, rows["b"].jump, rows["b"].start) == ((18, 18), (4, 4), (-7, -5))


def test_receptive_field_dilated_network_keeps_resolution():
    with torch.device("meta"):
        model = models.drn_c26(19)
    # DRN-C-26's 26 weight layers: the 1x1 shortcut projections aside
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) for m in model.modules()) + 1 == 26
    rows = {r.name: r for r in nnlib.receptive_field(model, (3, 64, 64))}
    assert rows["classifier"].output_size == (8, 8) and rows["classifier"].jump == (8, 8)
    # Dilation grows the field without striding: each 3x3 conv of layer6 (dilation 4,
    # extent 9) adds 8 * jump 8, four of them; the resolution stays (jump 8).
    grow = rows["layer6.1.conv2"].size[0] - rows["layer5.1.conv2"].size[0]
    assert grow == 4 * 8 * 8 and rows["layer6.1.conv2"].jump == (8, 8)


# ---------------------------------------------------------------------------
# the demo (arguments and model pairs; a training run takes minutes here)


def test_demo_arguments_and_twins(tmp_path, capsys, monkeypatch):
    from nnlib import demo
    monkeypatch.setattr(demo, "_missing_extras", lambda: ["scikit-learn"])
    with pytest.raises(SystemExit):
        demo.parse_args(["--out", str(tmp_path)])
    assert "pip install scikit-learn" in capsys.readouterr().err
    monkeypatch.setattr(demo, "_missing_extras", lambda: [])      # a machine without them checks the rest
    for bad, message in ((["--epochs", "0"], "positive int"), (["--model", "vgg"], "invalid choice"),
                         (["--batch-size", "x"], "positive int"), (["--lr", "-1"], "positive float"),
                         (["--out", str(tmp_path / "f" / "x")], None)):
        if message is None:        # a file where the folder should go
            (tmp_path / "f").write_text("")
        with pytest.raises(SystemExit) as exit_info:
            demo.parse_args([*bad, "--out", str(tmp_path)] if message else bad)
        assert exit_info.value.code == 2
        assert (message or "cannot create") in capsys.readouterr().err
    args = demo.parse_args(["--out", str(tmp_path)])
    assert (args.model, args.batch_size) == ("cnn", 32)
    if not torch.cuda.is_available():
        assert (args.device, args.epochs) == ("cpu", 1)
    for name in demo.MODELS:
        ours, theirs, size = demo.build(name)
        assert size == (32 if name == "lenet5" else 8)
        assert type(theirs).__module__ == "nnlib.models.reference" and type(ours).__module__ != type(theirs).__module__
        for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), k
