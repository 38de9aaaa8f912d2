"""The prior over a VQ-VAE's codes: a standard `transformers` causal language model (GPT-2 by default) over the
flattened code grid, read in raster order.

Tokens: the codes are 0 .. K-1, the begin token is K, and for a prior trained on labelled data the class tokens are
K+1 .. K+C. A sequence is `[begin, (class), code_1, ..., code_{h*w}]`, so the model learns p(class) as its first
prediction and p(codes | class) after it. The settings live in the language model's own config (`vq_codebook_size`,
`vq_grid_size`, `vq_num_classes`), which is saved with it in the VQ-VAE's `prior/` folder.

Copied next to the weights for `trust_remote_code`: imports only torch and transformers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GenerationConfig, GPT2Config, GPT2LMHeadModel, LogitsProcessor

PRIOR_FOLDER = "prior"


def build_prior(
    codebook_size: int,
    grid_size: int,
    num_classes: int | None = None,
    num_layers: int = 4,
    hidden_size: int = 128,
    num_heads: int = 4,
    dropout: float = 0.1,
) -> GPT2LMHeadModel:
    """A fresh GPT-2 sized for a code grid: vocabulary K + 1 (+ C), context 1 (+ 1) + h * w."""
    classes = num_classes or 0
    config = GPT2Config(
        vocab_size=codebook_size + 1 + classes,
        n_positions=1 + (1 if classes else 0) + grid_size * grid_size,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        n_inner=4 * hidden_size,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=codebook_size,
        eos_token_id=None,
        pad_token_id=None,  # no padding: every sequence has the same length
        tie_word_embeddings=True,
    )
    config.vq_codebook_size, config.vq_grid_size, config.vq_num_classes = codebook_size, grid_size, num_classes
    return GPT2LMHeadModel(config)


def load_prior(name_or_path: str, **kwargs) -> torch.nn.Module:
    """The prior saved in `prior/` of a VQ-VAE folder or Hub repo (`subfolder="prior"`)."""
    return AutoModelForCausalLM.from_pretrained(name_or_path, subfolder=PRIOR_FOLDER, **kwargs)


def _settings(prior: torch.nn.Module) -> tuple[int, int, int]:
    config = prior.config
    return config.vq_codebook_size, config.vq_grid_size, config.vq_num_classes or 0


def prefix(prior: torch.nn.Module, batch: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """(B, 1) the begin token, or (B, 2) the begin and class tokens when `labels` are given."""
    codebook_size, _, num_classes = _settings(prior)
    begin = torch.full((batch, 1), codebook_size, dtype=torch.long, device=device)
    if labels is None:
        return begin
    if not num_classes:
        raise ValueError("This prior was trained without labels: sample without `labels`, or train a labelled prior.")
    labels = torch.as_tensor(labels, device=device).long().view(-1).expand(batch)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be class indices in [0, {num_classes}), got {labels.tolist()}.")
    return torch.cat([begin, codebook_size + 1 + labels.view(batch, 1)], dim=1)


def token_sequences(prior: torch.nn.Module, indices: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(B, L) the prior's input for code grids `indices` (B, h, w), with the class token when labels are given."""
    start = prefix(prior, indices.shape[0], labels, indices.device)
    return torch.cat([start, indices.flatten(1).long()], dim=1)


def code_log_prob(prior: torch.nn.Module, indices: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) log-probabilities in nats of code grids `indices` (B, h, w). For a prior with class tokens: given
    `labels`, the joint log p(c, codes) = log p(c) + log p(codes | c), a lower bound on log p(codes) at most log C
    below it, in one pass; without labels, the marginal log sum_c p(c) p(codes | c), one pass per class. For a prior
    without class tokens, log p(codes)."""
    _, _, num_classes = _settings(prior)
    if labels is not None or not num_classes:
        tokens = token_sequences(prior, indices, labels if num_classes else None)
        log_probs = F.log_softmax(prior(input_ids=tokens).logits[:, :-1].float(), dim=-1)
        return log_probs.gather(2, tokens[:, 1:].unsqueeze(2)).squeeze(2).sum(1)
    per_class = [
        code_log_prob(prior, indices, torch.full((indices.shape[0],), label, device=indices.device))
        for label in range(num_classes)
    ]
    return torch.logsumexp(torch.stack(per_class), dim=0)


class _AllowedTokens(LogitsProcessor):
    """Only class tokens where a class is drawn, only codes where a code is drawn."""

    def __init__(self, prior: torch.nn.Module):
        self.codebook_size, _, self.num_classes = _settings(prior)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        if input_ids.shape[1] == 1 and self.num_classes:
            allowed[self.codebook_size + 1 : self.codebook_size + 1 + self.num_classes] = True
        else:
            allowed[: self.codebook_size] = True
        return scores.masked_fill(~allowed, -math.inf)


@torch.no_grad()
def generate_codes(
    prior: torch.nn.Module,
    num_samples: int,
    generator: torch.Generator | None = None,
    labels: torch.Tensor | int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """(num_samples, h, w) code grids drawn with `generate` (temperature, top-k; greedy at temperature 0). A labelled
    prior given no labels draws the class first. `generate` samples from the global RNG: it is seeded from
    `generator` inside `fork_rng`, so a seeded generator gives the same grids and the global RNG is left as it was."""
    _, grid_size, _ = _settings(prior)
    device = next(prior.parameters()).device
    start = prefix(prior, num_samples, labels, device)
    greedy = temperature <= 0
    options = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else float(temperature),
        top_k=top_k if not greedy else None,
        top_p=None,
        max_new_tokens=grid_size * grid_size + (2 - start.shape[1]) if _settings(prior)[2] else grid_size**2,
        min_new_tokens=0,
        pad_token_id=prior.config.bos_token_id,
        eos_token_id=None,
        bos_token_id=prior.config.bos_token_id,
    )
    seed = int(torch.randint(2**62, (1,), generator=generator)) if generator is not None else None
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        tokens = prior.generate(
            input_ids=start,
            attention_mask=torch.ones_like(start),
            generation_config=options,
            logits_processor=[_AllowedTokens(prior)],
        )
    return tokens[:, -grid_size * grid_size :].reshape(num_samples, grid_size, grid_size)


__all__ = ["PRIOR_FOLDER", "build_prior", "code_log_prob", "generate_codes", "load_prior", "token_sequences"]
