"""SmoothedExplainer: any explainer's maps averaged over noisy and flipped copies (SmoothGrad)."""

from __future__ import annotations

import pytest
import torch
from _helpers import make_model

import egl
from egl.explainers import GradCAM, SmoothedExplainer, grad_cam, input_gradient, minmax_normalize, smoothed


def _x(b: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_one_clean_copy_is_the_wrapped_explainer() -> None:
    model, x = make_model("test_resnet"), _x()
    one = smoothed(model, x, [0, 1, 2], samples=1, noise=0.0, layer="layer3")
    torch.testing.assert_close(one, grad_cam(model, x, [0, 1, 2], layer="layer3"))


def test_equals_the_average_over_the_drawn_copies() -> None:
    model, x = make_model("test_resnet"), _x()
    s, noise = 6, 0.2
    out = smoothed(model, x, [0, 1, 2], explainer="input_gradient", samples=s, noise=noise, seed=7, flip=True)
    z = torch.randn((s, 1, 3, 64, 64), generator=torch.Generator().manual_seed(7))
    rng = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(-1, 1, 1, 1)
    maps = []
    for k in range(s):
        xk = x + noise * rng * z[k]
        if k % 2:
            maps.append(input_gradient(model, xk.flip(-1), [0, 1, 2]).flip(-1))
        else:
            maps.append(input_gradient(model, xk, [0, 1, 2]))
    torch.testing.assert_close(out, minmax_normalize(torch.stack(maps).mean(0)), atol=1e-5, rtol=1e-5)


def test_seeded_calls_repeat_and_batches_split_alike() -> None:
    model, x = make_model("test_resnet"), _x()
    cam = SmoothedExplainer(model, samples=4)
    first = cam(x)
    torch.testing.assert_close(cam(x), first)  # the same noise every call
    torch.testing.assert_close(SmoothedExplainer(model, samples=4, batch_size=5)(x), first)  # chunks of 5 copies
    torch.testing.assert_close(cam(x[2:]), first[2:], atol=1e-5, rtol=1e-5)  # independent of the batch's others
    fresh = SmoothedExplainer(model, samples=4, seed=None)
    torch.manual_seed(0)
    a = fresh(x)
    assert not torch.equal(a, fresh(x))  # seed=None: new noise from the global generator each call


def test_logits_are_the_clean_images_and_the_target_their_prediction() -> None:
    model, x = make_model("test_resnet"), _x()
    out = SmoothedExplainer(model, samples=3).explain(x)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.saliency, SmoothedExplainer(model, samples=3)(x, logits.argmax(1)))


def test_differentiable_with_the_wrapped_explainer() -> None:
    model = make_model("test_resnet", eval_mode=False)
    sal = SmoothedExplainer(model, samples=2)(_x(2), [0, 1], create_graph=True)
    sal.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("kwargs, match", [
    ({"samples": 0}, "'samples' expected an int >= 1"),
    ({"noise": -0.1}, "'noise' expected a share of the image's range >= 0"),
    ({"seed": -1}, r"'seed' expected None or an int in \[0, 2\*\*63\)"),
    ({"batch_size": 0}, "'batch_size' expected None or an int >= 1"),
    ({"explainer": "smoothed"}, "'explainer' expected another explainer's name"),
    ({"explainer": 3}, "'explainer' expected a registered explainer's name or an Explainer"),
    ({"explainer": "gradcam"}, "Did you mean 'grad_cam'"),
    ({"flip": True, "samples": 3}, r"'samples' expected an even number with flip=True.*samples=4"),
    ({"noise": 0.0, "samples": 4}, "'samples' expected 1 when noise=0 and flip=False"),
])
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises((egl.InputError, egl.ComponentNotFoundError), match=match):
        SmoothedExplainer(make_model("test_resnet"), **kwargs)


def test_an_instance_must_be_bound_to_the_model() -> None:
    model, other = make_model("test_resnet"), make_model("test_resnet", seed=1)
    with pytest.raises(egl.InputError, match="'explainer' expected an explainer bound to the same model"):
        SmoothedExplainer(model, GradCAM(other))
    with pytest.raises(egl.InputError, match="'explainer_kwargs' expected none with an explainer instance"):
        SmoothedExplainer(model, GradCAM(model), layer="layer3")
    assert SmoothedExplainer(model, GradCAM(model, "layer3")).base.target_layer == "layer3"


def test_training_mode_copies_leave_batchnorm_statistics_and_read_no_target() -> None:
    from egl.explainers import _targets

    model = make_model("test_resnet", eval_mode=False)
    plain = make_model("test_resnet", eval_mode=False)
    x = _x(4)
    SmoothedExplainer(model, samples=4, batch_size=2)(x, [0, 1, 2, 3], create_graph=True)
    with torch.no_grad():
        plain(x)  # the clean pass alone moves the statistics
    for (name, a), b in zip(model.named_buffers(), plain.buffers()):
        torch.testing.assert_close(a, b, msg=name)
    reads = []
    real = _targets.check_target_range

    def spy(t, n, fn, known=None):
        reads.append(known)
        return real(t, n, fn, known=known)

    _targets.check_target_range = spy
    try:
        SmoothedExplainer(make_model("test_resnet"), samples=2)(x)
    finally:
        _targets.check_target_range = real
    assert reads and all(k is not None for k in reads)  # every chunk's range known on the host


def test_an_explainer_of_a_plugin_gets_plain_class_indices() -> None:
    from egl.explainers import Explainer, Explanation

    seen = []

    class Plugin(Explainer):  # (defined here, outside egl: its targets are plain tensors)
        name = "plugin_probe"

        def explain(self, x, target=None, *, create_graph=False):
            seen.append(type(target))
            logits = self.model(x)
            return Explanation(x.mean(1, keepdim=True).sigmoid(), logits)

    model = make_model("test_resnet")
    SmoothedExplainer(model, Plugin(model), samples=2)(_x(2))
    assert seen == [torch.Tensor, torch.Tensor]


def test_the_noise_follows_the_seed_and_a_training_submodule_keeps_its_statistics() -> None:
    model, x = make_model("test_resnet"), _x(2)
    cam = SmoothedExplainer(model, samples=2)
    first = cam(x)
    cam.seed = 1
    assert not torch.equal(cam(x), first)  # a new seed, new noise (not the cached draw)
    import copy

    model.bn1.train()  # one BatchNorm in training mode inside an eval-mode model
    plain = copy.deepcopy(model)
    with torch.no_grad():
        plain(x)  # the clean pass alone moves its statistics
    SmoothedExplainer(model, samples=2)(x)
    torch.testing.assert_close(model.bn1.running_mean, plain.bn1.running_mean)


def test_targets_objects_are_checked() -> None:
    from egl.explainers.base import Targets, targets

    with pytest.raises(egl.InputError, match="'target' expected one int64 class index per sample"):
        targets(Targets(torch.zeros(3, dtype=torch.int32)), 3, "t", torch.device("cpu"))
