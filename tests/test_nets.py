"""The built-in nets: every name in ``ARCHS`` builds for grayscale and RGB inputs and gives one logit per class."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from curate.learn.nets import ARCHS, build, count_params  # noqa: E402


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("channels", "size"), [(1, (28, 28)), (3, (64, 48))])
def test_every_arch_gives_one_logit_per_class(arch: str, channels: int, size: tuple[int, int]) -> None:
    model = build(arch, channels, 7, size).eval()
    with torch.no_grad():
        out = model(torch.randn(5, channels, *size))
    assert out.shape == (5, 7)
    assert torch.isfinite(out).all()


def test_tiny_cnn_is_small_cnn_at_half_width() -> None:
    small, tiny = build("small-cnn", 1, 10, (28, 28)), build("tiny-cnn", 1, 10, (28, 28))
    first = [m for m in tiny.modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert first.out_channels == 16
    # half the channels: the conv weights shrink about 4x, the flattened head about 2x
    assert count_params(tiny) < 0.6 * count_params(small)


def test_unknown_arch_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build("vgg-huge", 1, 10, (28, 28))
