"""Mask-Biased Attention (MBA): language injected into SAM-2's stride-16 image features, steered by
a language-free mask prior.

SAM-2 first decodes a class-agnostic "where are objects" mask with no language at all (the visual
pre-pass). Its logits ``P`` say, per position of the stride-16 map, how likely that position lies
on *some* object. MBA cross-attends from every position to the language tokens and adds the result
to the features, with the prior deciding how much language each position may receive, so that a
salient distractor outside object regions cannot capture the language ("attention drift").

Where the public SALMA code falls short, and how this block differs
-------------------------------------------------------------------
- Its language input is a single ``[SEG]`` vector. With one key, the softmax over keys is 1 for
  every query, so the attention output is ``A·t + b`` (value projection, then output projection,
  of that one vector) at every position: the attention is query-independent and the block reduces
  to adding a gated constant vector. Top-K routing over one token always keeps it, a no-op.
  Here the language is several tokens (the ``[SEG]`` prompt plus the projected expression tokens,
  as the model configures), so which token a position attends to, and which tokens the router
  keeps, actually matter. The one-token case still reduces exactly to the closed form
  ``x + γ·s·σ(P/τ)^strength·(A·t + b)`` in gate mode (a test checks it).
- Its "bias" mode adds a per-query term (the prior at that position) to the attention logits
  before the softmax over the text keys. A constant added to every logit of one query cancels in
  the softmax (``softmax(z + c) = softmax(z)``), so that mode equals no gating at all. Here bias
  mode appends a *null* key (an attention sink with zero value) whose logit is
  ``-strength·P/τ``; see ``MaskBiasedAttention`` for why this changes the output.
- The public export drops MBA at inference; this block has no train-only behaviour (besides
  dropout), and the model runs it at inference too.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class MaskBiasedAttention(nn.Module):
    """Cross-attention from image positions to language tokens, gated by a mask prior.

    Shapes: N frames-objects, C = ``dim`` channels, H×W the stride-16 map, T language tokens.

    Computation, per position ``i`` of the map (queries) and language token ``j`` (keys/values):

    1. Queries are ``LayerNorm(visual)`` flattened to positions; keys and values are projections of
       the language tokens as given (no normalisation, so that the one-token closed form holds).
    2. **Top-K router.** A learned scorer ``r_j = Linear(C→1)(t_j)`` scores each token; the K
       highest-scoring valid tokens are kept and the rest are masked out of the attention
       (``topk_tokens=None`` keeps every valid token). The hard top-K selection has no gradient,
       so the kept tokens' scores also enter the attention as a prior: ``log σ(r_j)`` is added to
       their logits, i.e. ``p_ij ∝ σ(r_j)·exp(q_i·k_j/√d)``. This is the sparse
       mixture-of-experts top-K gate (Shazeer et al. 2017: the kept experts are weighted by a
       function of their router logits, which is how the router learns) applied to attention:
       the scorer gets an exact (not straight-through) gradient whenever two or more tokens are
       kept. In gate mode a single kept token's prior cancels in the softmax, so that prior alone
       gives the scorer no gradient when K = 1. Hence, as the Switch Transformer's top-1 router
       (Fedus et al. 2021: the chosen expert's output is multiplied by its router probability),
       the whole update is also multiplied by the *kept router mass*
       ``m = Σ_{j kept} softmax_j(r)`` (softmax over the valid tokens): with K = 1 the scorer is
       trained through ``m`` (raising the kept token's score against the dropped ones), and when
       every valid token is kept ``m = 1`` and nothing changes (in particular with one token,
       so the one-token closed form below stays exact). Dropped tokens' scores reach the loss only
       through ``m``.
    3. Multi-head attention over the kept tokens, then the output projection ``W_o·(·) + b``. Each
       token's message is ``W_o·v_j + b``; the bias ``b`` is weighted by the attention mass that
       went to language (1 in gate mode whenever a token is kept), so a position that attends to
       nothing (all tokens padded, or all mass on the null key in bias mode) receives nothing.
    4. **Prior.** ``mode="gate"``: the attention output is multiplied per position by
       ``σ(P/τ)^strength``. ``mode="bias"``: a null key with zero value and logit
       ``-strength·P/τ`` joins the softmax, so the mass position ``i`` sends to language is
       ``σ(logsumexp_j z_ij + strength·P_i/τ)`` (``z_ij`` the text logits): unlike the naive
       per-query bias this is not a constant shift of the text logits, because the null logit
       competes with them. Off-object positions (P ≪ 0) send their mass to the null slot and
       receive nothing; on-object positions (P ≫ 0) attend to language as usual; in between, a
       strong query–token match can overcome a weakly negative prior, which is what distinguishes
       bias mode from gate mode (the gate is applied regardless of the match). The router prior
       ``log σ(r_j) ≤ 0`` takes part in the same competition, so a low-scored token also yields
       mass to the null slot rather than only to the other tokens. This is the
       attention-sink / "softmax plus one" construction (Xiao et al. 2023; Miller 2023) with a
       prior-dependent sink logit.
    5. **FiLM** (``use_film``), in one of two variants (``film_variant``):

       - ``"layernorm_mean"`` (the default, FiLM as described for SALMA; Perez et al. 2018): a
         per-channel scale and shift from the mean of the valid language tokens,
         ``Δ_film = γ_film·s·(scale ⊙ LN_film(x) + shift)``, on the LayerNorm'd features, added
         to the residual with its own zero-initialised scalar ``γ_film`` (ungated: FiLM conditions
         every position; a sample without a valid token gets none);
       - ``"prior_gated_router_pooled"`` (what this block computed before the variant existed):
         scale and shift from the router-weighted mean of the *kept* tokens, applied to the raw
         features, ``Δ = scale ⊙ x + shift``, added to the attention output with the language
         mass as weight, then gated by the prior and scaled by the shared ``γ``.
    6. **Residual**: ``x + γ·s·update`` with ``γ`` a learned scalar initialised to 0 (so the
       block starts as the identity and the pretrained SAM-2 features are untouched) and ``s`` the
       warm-up scale set from outside by ``set_warmup_scale`` (the trainer ramps it from 0 to 1 over
       the first 10% of steps). Because ``γ = 0`` at initialisation, at the first step only ``γ``
       receives a nonzero gradient; every other parameter of the block gets an all-zero gradient
       (never ``None``) until ``γ`` moves. That is expected, and it is the ReZero / zero-init
       residual recipe (Bachlechner et al. 2020).

    The returned dict holds:
    - ``"energy"``: (N, H, W) squared L2 norm over channels of the residual update actually added
      (``γ·s·update``, plus the FiLM term in the ``layernorm_mean`` variant). Zero when ``γ = 0``.
      An energy map, not an attention map.
    - ``"router_scores"``: (N, T) scorer logits, ``-inf`` at padded tokens.
    - ``"token_keep"``: (N, T) bool, the tokens the router kept.
    - ``"language_weight"``: (N, H, W) the weight of language at each position: the gate times the
      head-averaged attention mass on language (gate mode: the gate wherever a token is kept;
      bias mode: one minus the null-slot mass).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        tau: float = 1.0,
        strength: float = 1.0,
        mode: Literal["gate", "bias"] = "gate",
        topk_tokens: int | None = 2,
        use_film: bool = False,
        film_variant: Literal["layernorm_mean", "prior_gated_router_pooled"] = "layernorm_mean",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim <= 0 or num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(
                f"dim={dim} must be a positive multiple of num_heads={num_heads}; "
                "pick num_heads among the divisors of dim (SAM-2's 256 channels: 1, 2, 4, 8, ...)."
            )
        if tau <= 0:
            raise ValueError(f"tau={tau} must be > 0: it divides the prior logits.")
        if strength < 0:
            raise ValueError(f"strength={strength} must be >= 0 (0 disables the prior).")
        if mode not in ("gate", "bias"):
            raise ValueError(f"mode={mode!r} must be 'gate' or 'bias'.")
        if topk_tokens is not None and topk_tokens < 1:
            raise ValueError(f"topk_tokens={topk_tokens} must be >= 1, or None to keep all tokens.")
        if film_variant not in ("layernorm_mean", "prior_gated_router_pooled"):
            raise ValueError(f"film_variant={film_variant!r} must be 'layernorm_mean' or 'prior_gated_router_pooled'.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1).")

        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.tau = tau
        self.strength = strength
        self.mode = mode
        self.topk_tokens = topk_tokens
        self.use_film = use_film
        self.film_variant = film_variant

        self.norm = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.router = nn.Linear(dim, 1)
        self.film = nn.Linear(dim, 2 * dim) if use_film else None
        described_film = use_film and film_variant == "layernorm_mean"
        self.film_norm = nn.LayerNorm(dim) if described_film else None
        self.film_gamma = nn.Parameter(torch.zeros(())) if described_film else None
        self.attn_dropout = nn.Dropout(dropout)
        self.gamma = nn.Parameter(torch.zeros(()))
        # A non-persistent buffer rather than a Python float: it follows .to(device), never enters
        # the state dict (strict loading and export stay unaffected), and torch.compile does not
        # specialise on its value. 1.0 (full strength) unless a trainer ramps it.
        self.register_buffer("warmup_scale", torch.ones(()), persistent=False)

    def set_warmup_scale(self, scale: float) -> None:
        """Set the residual warm-up factor ``s`` (0 → block off, 1 → full strength)."""
        if scale < 0:
            raise ValueError(f"warm-up scale {scale} must be >= 0.")
        with torch.no_grad():
            self.warmup_scale.fill_(scale)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, tau={self.tau}, "
            f"strength={self.strength}, mode={self.mode!r}, topk_tokens={self.topk_tokens}, "
            f"use_film={self.use_film}, film_variant={self.film_variant!r}"
        )

    def forward(
        self,
        visual: torch.Tensor,
        language: torch.Tensor,
        language_mask: torch.Tensor,
        prior: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Inject language into ``visual``.

        Args:
            visual: (N, C, H, W) image features (SAM-2 stride-16 map + no-memory embedding).
            language: (N, T, C) language tokens.
            language_mask: (N, T) bool, True for a real token, False for padding.
            prior: (N, 1, H, W) mask-prior logits of the language-free pre-pass, already resized to
                the feature map. Treated as a constant (detached here too).

        Returns:
            ``(visual + γ·s·update, info)``: (N, C, H, W) and the dict described in the class
            docstring.
        """
        n, c, h, w = visual.shape
        t = language.shape[1]
        if language.shape != (n, t, c):
            raise ValueError(f"language {tuple(language.shape)} must be (N, T, C) = ({n}, T, {c}).")
        if language_mask.shape != (n, t):
            raise ValueError(
                f"language_mask {tuple(language_mask.shape)} must be (N, T) = ({n}, {t})."
            )
        if prior.shape != (n, 1, h, w):
            raise ValueError(
                f"prior {tuple(prior.shape)} must be (N, 1, H, W) = ({n}, 1, {h}, {w}); "
                "resize the pre-pass logits to the feature map before calling MBA."
            )
        language_mask = language_mask.bool()
        prior = prior.detach().to(visual.dtype).flatten(1)  # (N, HW)

        x = visual.flatten(2).transpose(1, 2)  # (N, HW, C)
        scores = self.router(language).squeeze(-1)  # (N, T)
        keep = self._route(scores, language_mask)  # (N, T) bool

        q = self.q_proj(self.norm(x)).view(n, h * w, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(language).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(language).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)
        # q: (N, heads, HW, d); k, v: (N, heads, T, d)

        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (N, heads, HW, T)
        logits = logits + F.logsigmoid(scores)[:, None, None, :]  # router prior, step 2
        # A finite fill instead of -inf: a row with no kept token then softmaxes to a uniform
        # distribution (not NaN), which the multiplication by `keep` below turns into zeros.
        logits = logits.masked_fill(~keep[:, None, None, :], torch.finfo(logits.dtype).min)
        if self.mode == "bias":
            null_logit = (-self.strength / self.tau) * prior  # (N, HW)
            null_logit = null_logit[:, None, :, None].expand(n, self.num_heads, h * w, 1)
            logits = torch.cat([logits, null_logit.to(logits.dtype)], dim=-1)  # (N, heads, HW, T+1)
        probs = logits.float().softmax(dim=-1).to(v.dtype)
        # The null slot has a zero value, so dropping its column is the same as attending to it.
        probs = probs[..., :t] * keep[:, None, None, :]  # (N, heads, HW, T)
        probs = self.attn_dropout(probs)

        attended = (probs @ v).transpose(1, 2).reshape(n, h * w, c)  # (N, HW, C)
        language_mass = probs.sum(dim=-1).mean(dim=1).unsqueeze(-1)  # (N, HW, 1)
        update = F.linear(attended, self.out_proj.weight) + language_mass * self.out_proj.bias
        if self.film is not None and self.film_norm is None:
            update = update + language_mass * self._film_delta(self.film, x, language, scores, keep)

        if self.mode == "gate":
            gate = torch.sigmoid(prior / self.tau).pow(self.strength).unsqueeze(-1)  # (N, HW, 1)
            update = gate * update
            language_weight = gate * language_mass
        else:
            language_weight = language_mass
        if self.topk_tokens is not None:  # the kept router mass m, step 2
            valid_scores = scores.masked_fill(~language_mask, torch.finfo(scores.dtype).min)
            kept_mass = (valid_scores.float().softmax(dim=-1) * keep).sum(dim=-1).to(update.dtype)  # (N,)
            update = kept_mass[:, None, None] * update

        added = (self.gamma * self.warmup_scale) * update  # (N, HW, C)
        if self.film_norm is not None:
            added = added + (self.film_gamma * self.warmup_scale) * self._described_film(x, language, language_mask)
        out = (x + added).transpose(1, 2).reshape(n, c, h, w)
        info = {
            "energy": added.pow(2).sum(dim=-1).view(n, h, w),
            "router_scores": scores.masked_fill(~language_mask, float("-inf")),
            "token_keep": keep,
            "language_weight": language_weight.view(n, h, w),
        }
        return out, info

    def _route(self, scores: torch.Tensor, language_mask: torch.Tensor) -> torch.Tensor:
        """(N, T) scores, (N, T) valid → (N, T) bool: the top-K valid tokens of each row."""
        if self.topk_tokens is None:
            return language_mask
        k = min(self.topk_tokens, scores.shape[1])
        ranked = scores.detach().masked_fill(~language_mask, float("-inf"))
        top = ranked.topk(k, dim=-1).indices  # (N, k)
        keep = torch.zeros_like(language_mask).scatter(1, top, True)
        # A row with fewer than k valid tokens picks padding in its top-k; drop it again.
        return keep & language_mask

    def _described_film(self, x: torch.Tensor, language: torch.Tensor, language_mask: torch.Tensor) -> torch.Tensor:
        """scale ⊙ LN_film(x) + shift from the mean of the valid tokens; zero for a sample without any.

        (N, HW, C) features, (N, T, C) language, (N, T) valid → (N, HW, C).
        """
        valid = language_mask.to(language.dtype)  # (N, T)
        count = valid.sum(dim=1, keepdim=True)  # (N, 1)
        pooled = (valid.unsqueeze(-1) * language).sum(dim=1) / count.clamp_min(1.0)  # (N, C)
        scale, shift = self.film(pooled).chunk(2, dim=-1)  # (N, C) each
        delta = self.film_norm(x) * scale.unsqueeze(1) + shift.unsqueeze(1)
        return delta * (count > 0).to(delta.dtype).unsqueeze(-1)

    @staticmethod
    def _film_delta(
        film: nn.Linear,
        x: torch.Tensor,
        language: torch.Tensor,
        scores: torch.Tensor,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        """``prior_gated_router_pooled``: FiLM(x) − x = scale ⊙ x + shift, from the kept tokens'
        router-weighted mean, on the raw features.

        (N, HW, C) features, (N, T, C) language, (N, T) scores and keep → (N, HW, C).
        """
        token_weight = torch.sigmoid(scores) * keep  # (N, T)
        pooled = (token_weight.unsqueeze(-1) * language).sum(dim=1)  # (N, C)
        pooled = pooled / token_weight.sum(dim=1, keepdim=True).clamp_min(1e-6)
        scale, shift = film(pooled).chunk(2, dim=-1)  # (N, C) each
        return x * scale.unsqueeze(1) + shift.unsqueeze(1)
