"""MaskBiasedAttention: identity at init, gating, routing, bias mode, padding, closed form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from salma.mask_biased_attention import MaskBiasedAttention

DIM, HEADS, N, T, H, W = 16, 4, 2, 5, 3, 4


def _inputs(seed: int = 0, tokens: int = T) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(N, DIM, H, W, generator=g)
    language = torch.randn(N, tokens, DIM, generator=g)
    mask = torch.ones(N, tokens, dtype=torch.bool)
    prior = torch.randn(N, 1, H, W, generator=g) * 3
    return visual, language, mask, prior


def _block(**kwargs) -> MaskBiasedAttention:
    torch.manual_seed(0)
    block = MaskBiasedAttention(dim=DIM, num_heads=HEADS, **kwargs)
    with torch.no_grad():
        block.gamma.fill_(1.0)
        if block.film_gamma is not None:
            block.film_gamma.fill_(1.0)
    return block


@pytest.mark.parametrize("mode", ["gate", "bias"])
@pytest.mark.parametrize("use_film", [False, True])
def test_shapes(mode: str, use_film: bool) -> None:
    block = _block(mode=mode, use_film=use_film)
    out, info = block(*_inputs())
    assert out.shape == (N, DIM, H, W)
    assert info["energy"].shape == (N, H, W)
    assert info["router_scores"].shape == (N, T)
    assert info["token_keep"].shape == (N, T) and info["token_keep"].dtype == torch.bool
    assert info["language_weight"].shape == (N, H, W)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["gate", "bias"])
@pytest.mark.parametrize("use_film", [False, True])
def test_identity_and_zero_energy_at_init(mode: str, use_film: bool) -> None:
    block = MaskBiasedAttention(dim=DIM, num_heads=HEADS, mode=mode, use_film=use_film)
    assert block.gamma.item() == 0.0
    visual, language, mask, prior = _inputs()
    out, info = block(visual, language, mask, prior)
    assert torch.equal(out, visual)
    assert torch.equal(info["energy"], torch.zeros(N, H, W))


def test_zero_gamma_gives_gradient_to_gamma_only() -> None:
    """The documented zero-init behaviour: gamma moves first, the rest get zero (not None) grads."""
    block = MaskBiasedAttention(dim=DIM, num_heads=HEADS)
    out, _ = block(*_inputs())
    out.pow(2).sum().backward()
    assert block.gamma.grad is not None and block.gamma.grad.abs() > 0
    for name, param in block.named_parameters():
        if name != "gamma":
            assert param.grad is not None, name
            assert torch.count_nonzero(param.grad) == 0, name


def test_warmup_scale_scales_the_update() -> None:
    block = _block()
    visual, language, mask, prior = _inputs()
    full, _ = block(visual, language, mask, prior)
    block.set_warmup_scale(0.25)
    quarter, _ = block(visual, language, mask, prior)
    torch.testing.assert_close(quarter - visual, 0.25 * (full - visual))
    block.set_warmup_scale(0.0)
    off, _ = block(visual, language, mask, prior)
    assert torch.equal(off, visual)
    assert "warmup_scale" not in block.state_dict()


@pytest.mark.parametrize("use_film", [False, True])
def test_closed_gate_leaves_features_unchanged(use_film: bool) -> None:
    # The prior-gated FiLM variant is closed with the gate; the described one is not gated.
    block = _block(mode="gate", use_film=use_film, film_variant="prior_gated_router_pooled")
    visual, language, mask, _ = _inputs()
    closed = torch.full((N, 1, H, W), -1e4)
    out, info = block(visual, language, mask, closed)
    assert torch.equal(out, visual)
    assert torch.equal(info["energy"], torch.zeros(N, H, W))


def test_energy_is_squared_norm_of_added_update() -> None:
    block = _block(use_film=True)
    block.set_warmup_scale(0.5)
    visual, language, mask, prior = _inputs()
    out, info = block(visual, language, mask, prior)
    torch.testing.assert_close(info["energy"], (out - visual).pow(2).sum(dim=1))
    assert (info["energy"] > 0).all()


@pytest.mark.parametrize("strength", [1.0, 2.5])
def test_single_token_closed_form(strength: float) -> None:
    """One token: softmax over one key is 1, so out = x + γ·s·σ(P/τ)^strength·(A·t + b)
    exactly (the router's log σ(r) prior cancels in that softmax)."""
    tau, gamma, scale = 0.7, 0.3, 0.6
    block = MaskBiasedAttention(dim=DIM, num_heads=HEADS, tau=tau, strength=strength, topk_tokens=2)
    with torch.no_grad():
        block.gamma.fill_(gamma)
    block.set_warmup_scale(scale)
    visual, language, mask, prior = _inputs(tokens=1)
    out, _ = block(visual, language, mask, prior)

    token = language[:, 0]  # (N, C)
    message = F.linear(block.v_proj(token), block.out_proj.weight, block.out_proj.bias)  # A·t + b
    gate = torch.sigmoid(prior / tau) ** strength  # (N, 1, H, W)
    expected = visual + gamma * scale * gate * message[:, :, None, None]
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_single_token_attention_is_query_independent() -> None:
    """The public SALMA's failure mode: with one token the update is one vector times the gate."""
    block = _block(mode="gate")
    visual, language, mask, _ = _inputs(tokens=1)
    open_gate = torch.full((N, 1, H, W), 1e4)
    out, _ = block(visual, language, mask, open_gate)
    update = (out - visual).flatten(2)  # (N, C, HW)
    torch.testing.assert_close(update, update[:, :, :1].expand_as(update))


def _score_by_first_channel(block: MaskBiasedAttention) -> None:
    with torch.no_grad():
        block.router.weight.zero_()
        block.router.weight[0, 0] = 1.0
        block.router.bias.zero_()


def test_topk_keeps_highest_scoring_tokens() -> None:
    block = _block(topk_tokens=2)
    _score_by_first_channel(block)
    visual, language, mask, prior = _inputs()
    language[:, :, 0] = torch.tensor([[0.1, 5.0, -3.0, 2.0, 4.0], [3.0, -1.0, 0.5, 6.0, 0.0]])
    out, info = block(visual, language, mask, prior)
    expected_keep = torch.zeros(N, T, dtype=torch.bool)
    expected_keep[0, [1, 4]] = True
    expected_keep[1, [0, 3]] = True
    assert torch.equal(info["token_keep"], expected_keep)
    torch.testing.assert_close(info["router_scores"], language[:, :, 0])

    # The dropped tokens do not reach the output: change everything but their scoring channel.
    altered = language.clone()
    altered[~expected_keep] = altered[~expected_keep] * 0 + 100.0
    altered[:, :, 0] = language[:, :, 0]
    out_altered, _ = block(visual, altered, mask, prior)
    torch.testing.assert_close(out_altered, out)


def test_topk_none_keeps_every_valid_token() -> None:
    block = _block(topk_tokens=None)
    visual, language, mask, prior = _inputs()
    mask[1, 3:] = False
    _, info = block(visual, language, mask, prior)
    assert torch.equal(info["token_keep"], mask)


@pytest.mark.parametrize("topk", [1, 2])
@pytest.mark.parametrize("mode", ["gate", "bias"])
def test_router_receives_gradient(mode: str, topk: int) -> None:
    # K = 1 in gate mode: the router prior cancels in the softmax; the kept router mass carries it.
    block = _block(mode=mode, topk_tokens=topk)
    out, _ = block(*_inputs())
    out.pow(2).sum().backward()
    assert block.router.weight.grad is not None
    assert block.router.weight.grad.abs().sum() > 0
    assert block.router.bias.grad.abs() > 0


@pytest.mark.parametrize("topk", [2, None])
@pytest.mark.parametrize("mode", ["gate", "bias"])
def test_padded_tokens_are_never_attended(topk: int | None, mode: str) -> None:
    block = _block(topk_tokens=topk, mode=mode)
    visual, language, mask, prior = _inputs()
    mask[0, 2:] = False
    mask[1, 4:] = False
    padded = language.clone()
    # Garbage that would win any top-K and dominate any attention if it were used.
    padded[~mask] = 1e3
    out, info = block(visual, padded, mask, prior)
    assert not (info["token_keep"] & ~mask).any()
    assert torch.isinf(info["router_scores"][~mask]).all()
    # Same result as running each sample with its padding removed.
    for i, length in enumerate([2, 4]):
        row = slice(i, i + 1)
        alone, _ = block(visual[row], language[row, :length], mask[row, :length], prior[row])
        torch.testing.assert_close(out[i : i + 1], alone)


@pytest.mark.parametrize("mode", ["gate", "bias"])
@pytest.mark.parametrize("use_film", [False, True])
def test_all_padded_sample_gets_no_update(mode: str, use_film: bool) -> None:
    block = _block(mode=mode, use_film=use_film)
    visual, language, mask, prior = _inputs()
    mask[0] = False
    out, info = block(visual, language, mask, prior)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], visual[0])
    assert not torch.equal(out[1], visual[1])
    assert torch.equal(info["energy"][0], torch.zeros(H, W))


def test_naive_per_query_bias_is_a_no_op() -> None:
    """Why bias mode needs a null key: a per-query shift of the text logits cancels in softmax."""
    logits = torch.randn(6, T)
    per_query = torch.randn(6, 1) * 10
    torch.testing.assert_close(logits.softmax(-1), (logits + per_query).softmax(-1))


def test_bias_mode_depends_on_the_prior() -> None:
    block = _block(mode="bias")
    visual, language, mask, prior = _inputs()
    out, _ = block(visual, language, mask, prior)
    uniform, _ = block(visual, language, mask, torch.zeros_like(prior))
    assert not torch.allclose(out, uniform, atol=1e-4)

    # Off-object positions send their attention to the null slot and receive nothing; on-object
    # positions receive the full (unsinked) update.
    strong = torch.full_like(prior, 60.0)
    strong[:, :, 0, 0] = -60.0
    out_strong, info = block(visual, language, mask, strong)
    update = out_strong - visual
    assert update[:, :, 0, 0].abs().max() < 1e-6
    assert (info["language_weight"][:, 0, 0] < 1e-6).all()
    torch.testing.assert_close(info["language_weight"][:, 1:, :], torch.ones(N, H - 1, W))


def test_bias_mode_differs_from_gate_mode() -> None:
    """Bias mode lets the query–token match compete with the prior; gate mode does not."""
    gate_block = _block(mode="gate")
    bias_block = _block(mode="bias")
    bias_block.load_state_dict(gate_block.state_dict())
    inputs = _inputs()
    gate_out, _ = gate_block(*inputs)
    bias_out, _ = bias_block(*inputs)
    assert not torch.allclose(gate_out, bias_out, atol=1e-4)


def test_film_changes_the_output() -> None:
    plain = _block(use_film=False)
    film = _block(use_film=True)
    film.load_state_dict(plain.state_dict(), strict=False)
    inputs = _inputs()
    assert not torch.allclose(plain(*inputs)[0], film(*inputs)[0], atol=1e-4)


def test_prior_is_not_differentiated() -> None:
    block = _block()
    visual, language, mask, prior = _inputs()
    prior.requires_grad_(True)
    out, _ = block(visual, language, mask, prior)
    out.sum().backward()
    assert prior.grad is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_heads": 3},
        {"tau": 0.0},
        {"strength": -1.0},
        {"mode": "add"},
        {"topk_tokens": 0},
        {"dropout": 1.0},
    ],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    args = {"dim": DIM, "num_heads": HEADS} | kwargs
    with pytest.raises(ValueError):
        MaskBiasedAttention(**args)


def test_prior_shape_mismatch_raises() -> None:
    block = _block()
    visual, language, mask, _ = _inputs()
    with pytest.raises(ValueError, match="resize"):
        block(visual, language, mask, torch.zeros(N, 1, H * 2, W * 2))


def test_described_film_is_ungated_layernormed_mean_pooled_with_its_own_scale() -> None:
    block = _block(mode="gate", use_film=True)  # film_variant="layernorm_mean" by default
    with torch.no_grad():
        block.gamma.zero_()  # the attention path off: what remains is FiLM alone
    visual, language, mask, _ = _inputs()
    closed = torch.full((N, 1, H, W), -1e4)
    out, _ = block(visual, language, mask, closed)
    assert (out - visual).abs().amax() > 1e-3  # acts where the gate is closed
    # LayerNorm'd input: scaling the features by 3 leaves the FiLM term unchanged.
    out3, _ = block(3 * visual, language, mask, closed)
    torch.testing.assert_close(out3 - 3 * visual, out - visual, atol=1e-4, rtol=1e-4)
    # Mean of the valid tokens: reordering them or adding padding changes nothing.
    perm = torch.randperm(T)
    padded = torch.cat([language[:, perm], torch.randn(N, 2, DIM)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(N, 2, dtype=torch.bool)], dim=1)
    out_p, _ = block(visual, padded, padded_mask, closed)
    torch.testing.assert_close(out_p, out, atol=1e-5, rtol=1e-5)
    # Its own scale, zero-initialised: a fresh block is the identity.
    fresh = MaskBiasedAttention(dim=DIM, num_heads=HEADS, use_film=True)
    assert torch.equal(fresh(visual, language, mask, closed)[0], visual)


def _reference(block: MaskBiasedAttention, visual, language, mask, prior) -> torch.Tensor:
    """The block's output written out position by position, head by head, token by token."""
    n, c, h, w = visual.shape
    d = c // block.num_heads
    out = visual.clone()
    for b in range(n):
        scores = [float(block.router(language[b, j])) for j in range(language.shape[1])]
        valid = [j for j in range(language.shape[1]) if mask[b, j]]
        k = len(valid) if block.topk_tokens is None else min(block.topk_tokens, len(valid))
        kept = sorted(valid, key=lambda j: -scores[j])[:k]
        z = sum(torch.exp(torch.tensor(scores[j])) for j in valid)
        kept_mass = float(sum(torch.exp(torch.tensor(scores[j])) for j in kept) / z) if block.topk_tokens else 1.0
        for y in range(h):
            for x in range(w):
                q_in = block.norm(visual[b, :, y, x])
                p = float(prior[b, 0, y, x])
                message = torch.zeros(c)
                for head in range(block.num_heads):
                    sl = slice(head * d, (head + 1) * d)
                    q = block.q_proj(q_in)[sl]
                    logits = {j: float(q @ block.k_proj(language[b, j])[sl]) / d**0.5
                              + float(F.logsigmoid(torch.tensor(scores[j]))) for j in kept}
                    if block.mode == "bias":
                        logits["null"] = -block.strength * p / block.tau
                    top = max(logits.values())
                    denom = sum(torch.exp(torch.tensor(v - top)) for v in logits.values())
                    for j in kept:
                        weight = torch.exp(torch.tensor(logits[j] - top)) / denom
                        value = block.v_proj(language[b, j])
                        # per head: the value slice through the matching input columns of W_o
                        message += weight * block.out_proj.weight[:, sl] @ value[sl]
                        message += weight / block.num_heads * block.out_proj.bias
                gate = torch.sigmoid(torch.tensor(p / block.tau)) ** block.strength if block.mode == "gate" else 1.0
                out[b, :, y, x] += block.gamma * gate * kept_mass * message
    return out


@pytest.mark.parametrize("topk", [2, None])
@pytest.mark.parametrize("mode", ["gate", "bias"])
def test_multi_token_topk_matches_the_written_out_formula(mode: str, topk: int | None) -> None:
    block = _block(mode=mode, topk_tokens=topk, tau=0.7, strength=1.5)
    with torch.no_grad():
        block.gamma.fill_(0.8)
    visual, language, mask, prior = _inputs(seed=3)
    mask[1, 3:] = False  # the second sample has 3 valid tokens
    with torch.no_grad():
        out, info = block(visual, language, mask, prior)
        expected = _reference(block, visual, language, mask, prior)
    assert int(info["token_keep"][0].sum()) == (2 if topk else T)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
