"""RMSNorm and RoPE on the CPU: through the CPU kernels (`kernels/native_cpu.py`, where `make setup`
built them) and through the eager torch forms they replace, which must agree: RoPE bit for bit, the
norm within fp32 rounding (its sum of squares goes in another order)."""

from __future__ import annotations

import pytest
import torch
from lorafleet.kernels import native_cpu
from lorafleet.runtime.layers import norms, rotary
from lorafleet.runtime.layers.norms import RMSNorm
from lorafleet.runtime.layers.rotary import RotaryEmbedding

KERNEL = native_cpu.norm_rope_kernel()
needs_kernel = pytest.mark.skipif(KERNEL is None, reason="no CPU kernels built on this machine")


class Counting:
    """The kernels' module, counting the calls that reach it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        def call(*args):  # type: ignore[no-untyped-def]
            self.calls.append(name)
            return getattr(KERNEL, name)(*args)

        return call


def _use(monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    for owner in (norms, rotary):
        monkeypatch.setattr(owner.native_cpu, "norm_rope_kernel", lambda: module)


@needs_kernel
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_rms_norm_through_the_kernel_agrees_with_the_eager_form(monkeypatch: pytest.MonkeyPatch,
                                                                 offset: float) -> None:
    generator = torch.Generator().manual_seed(1)
    norm = RMSNorm(576, 1e-5, torch.float32, torch.device("cpu"), offset=offset)
    norm.weight.data.copy_(torch.randn(576, generator=generator))
    x, residual = torch.randn(32, 576, generator=generator), torch.randn(32, 576, generator=generator)
    heads = torch.randn(32, 9, 576, generator=generator)  # a per-head norm (qk_norm) sees [T, H, D]
    counting = Counting()
    _use(monkeypatch, counting)
    total, normed = norm.add_and_norm(x, residual)
    per_head = norm(heads)
    assert counting.calls == ["add_rms_norm", "rms_norm"]
    _use(monkeypatch, None)
    eager_total, eager_normed = norm.add_and_norm(x, residual)
    assert torch.equal(total, eager_total)
    torch.testing.assert_close(normed, eager_normed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_head, norm(heads), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_rms_norm_of_strided_rows_takes_the_eager_form(monkeypatch: pytest.MonkeyPatch) -> None:
    norm = RMSNorm(64, 1e-6, torch.float32, torch.device("cpu"))
    counting = Counting()
    _use(monkeypatch, counting)
    strided = torch.randn(8, 128)[:, :64]
    expected = strided * torch.rsqrt(strided.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(strided), expected)
    assert counting.calls == []


@needs_kernel
@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_rope_through_the_kernel_is_the_eager_rotation(monkeypatch: pytest.MonkeyPatch,
                                                       partial: float) -> None:
    generator = torch.Generator().manual_seed(2)
    rope = RotaryEmbedding(64, 10000.0, None, partial_rotary_factor=partial)
    positions = torch.randint(0, 4096, (21,), generator=generator)
    qkv = torch.randn(21, 15 * 64, generator=generator)
    q, k = qkv[:, : 9 * 64].view(21, 9, 64), qkv[:, 9 * 64 : 12 * 64].view(21, 3, 64)
    counting = Counting()
    _use(monkeypatch, counting)
    got = rope(positions, q, k)
    assert counting.calls == (["rotary"] if partial == 1.0 else [])  # a partial rotation stays eager
    _use(monkeypatch, None)
    rope.forget_tables()
    expected = rope(positions, q, k)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
