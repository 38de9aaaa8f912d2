"""The vector quantiser of the VQ-VAE: nearest codebook entry, straight-through gradients, a commitment loss, EMA (or
loss-based) codebook updates, dead-code restarts and an optional k-means initialisation.

Written here rather than taken from a library. diffusers' `VectorQuantizer` (its `VQModel`) has the loss-based update
only; pythae's `Quantizer`/`QuantizerEMA` has no restarts, no k-means and no distributed reduction;
`vector-quantize-pytorch` does all of this well, but it would be a dependency of every `trust_remote_code` user (this
file is copied next to the weights and imports only torch), brings `einops`/`einx`, and names its buffers its own way
in our state dicts. The pieces follow those references: the EMA update and Laplace smoothing of Sonnet / VQ-VAE-2
(Razavi et al. 2019), restarts from encoder outputs as in Jukebox (Dhariwal et al. 2020), k-means as in
`vector-quantize-pytorch`.

Copied next to the weights for `trust_remote_code`: imports only torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Quantized:
    """One pass of the quantiser over vectors z_e (N, D): the `indices` (N,) of their nearest entries, the entries
    `codes` (N, D), `straight_through` (z_e + sg(codes - z_e): the codes forward, the identity backward), and the
    squared distances `commitment` ||z_e - sg(e)||^2 and `codebook` ||sg(z_e) - e||^2 per vector (N,)."""

    indices: torch.Tensor
    codes: torch.Tensor
    straight_through: torch.Tensor
    commitment: torch.Tensor
    codebook: torch.Tensor


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        torch.distributed.all_reduce(tensor)
    return tensor


def _broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """The main process's values on every process (a restart or k-means seeded from its own batch)."""
    if _distributed():
        torch.distributed.broadcast(tensor, src=0)
    return tensor


def squared_distances(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, K) ||z_n - e_k||^2, as ||z||^2 - 2 z.e + ||e||^2 in one matrix product, outside autocast: the expansion
    cancels terms, and in bf16 near-ties between codes would be settled by rounding."""
    with torch.autocast(vectors.device.type, enabled=False):
        return (
            vectors.pow(2).sum(1, keepdim=True)
            - 2 * vectors @ codebook.t()
            + codebook.pow(2).sum(1).unsqueeze(0)
        )


def kmeans(
    vectors: torch.Tensor, count: int, iterations: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Lloyd's k-means: `count` centres of `vectors` (N, D), started from distinct data points; a centre left without
    points keeps its place."""
    start = torch.randperm(vectors.shape[0], generator=generator, device="cpu")[:count].to(vectors.device)
    if start.numel() < count:  # fewer vectors than codes: repeat them
        start = start.repeat((count + start.numel() - 1) // start.numel())[:count]
    centres = vectors[start].clone()
    for _ in range(iterations):
        nearest = squared_distances(vectors, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, nearest, vectors)
        sizes = torch.bincount(nearest, minlength=count).to(vectors.dtype)
        centres = torch.where(sizes.unsqueeze(1) > 0, sums / sizes.clamp(min=1).unsqueeze(1), centres)
    return centres


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation against a codebook of `codebook_size` entries of `embedding_dim`.

    With `update="ema"` the codebook (`embedding`) is a buffer moved, in training mode only, towards the mean of the
    vectors assigned to each entry: N_k <- decay N_k + (1 - decay) n_k, m_k <- decay m_k + (1 - decay) sum z_e, and
    e_k = m_k / N_k (N_k Laplace-smoothed). Counts and sums are all-reduced over processes when `torch.distributed`
    is initialised, so every process makes the same update. With `update="loss"` the codebook is a parameter that the
    optimiser trains on the codebook loss.

    Every state lives in the state dict: `embedding`, `ema_cluster_size`, `ema_embed_sum`, `steps_unused` (training
    steps since each entry was last chosen) and `initialized` (0 until the k-means initialisation has run).
    """

    def __init__(
        self,
        codebook_size: int,
        embedding_dim: int,
        update: str = "ema",
        decay: float = 0.99,
        epsilon: float = 1e-5,
        dead_code_steps: int = 100,
        kmeans_init: bool = False,
        kmeans_iterations: int = 10,
    ):
        super().__init__()
        self.codebook_size, self.embedding_dim = codebook_size, embedding_dim
        self.update, self.decay, self.epsilon = update, decay, epsilon
        self.dead_code_steps, self.kmeans_init, self.kmeans_iterations = dead_code_steps, kmeans_init, kmeans_iterations
        embedding = torch.empty(codebook_size, embedding_dim)
        if update == "loss":
            self.embedding = nn.Parameter(embedding)
        else:
            self.register_buffer("embedding", embedding)
            self.register_buffer("ema_cluster_size", torch.zeros(codebook_size))
            self.register_buffer("ema_embed_sum", torch.zeros(codebook_size, embedding_dim))
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.long))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Entries uniform in [-1/K, 1/K] (the VQ-VAE paper's and diffusers' choice); EMA statistics that start at the
        entries themselves, each counted once."""
        self.embedding.uniform_(-1.0 / self.codebook_size, 1.0 / self.codebook_size)
        if self.update == "ema":
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(self.embedding)
        self.steps_unused.zero_()
        self.initialized.fill_(0 if self.kmeans_init else 1)

    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        """(N,) index of each vector's nearest entry (squared Euclidean distance; the lowest index on ties)."""
        return squared_distances(vectors, self.embedding.to(vectors.dtype)).argmin(1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """The entries at `indices` (any shape) -> (*indices.shape, D)."""
        return F.embedding(indices, self.embedding)

    def forward(self, vectors: torch.Tensor, update: bool | None = None) -> Quantized:
        """Quantise `vectors` (N, D). With `update` (default: in training mode) this also runs the k-means
        initialisation (once), the EMA update and the dead-code restarts, after the assignment (the returned codes are
        those before the update)."""
        update = self.training if update is None else update and self.training
        vectors = vectors.to(torch.promote_types(vectors.dtype, self.embedding.dtype))  # bf16 under autocast
        if update and not bool(self.initialized):
            self._initialise_by_kmeans(vectors.detach())
        indices = self.nearest(vectors.detach())
        codes = self.lookup(indices)
        commitment = (vectors - codes.detach()).pow(2).sum(1)
        codebook = (vectors.detach() - codes).pow(2).sum(1)
        straight_through = vectors + (codes - vectors).detach()
        if update:
            self._update(vectors.detach(), indices)
        return Quantized(indices, codes, straight_through, commitment, codebook)

    @torch.no_grad()
    def _initialise_by_kmeans(self, vectors: torch.Tensor) -> None:
        centres = _broadcast(kmeans(vectors.float(), self.codebook_size, self.kmeans_iterations).contiguous())
        self.embedding.data.copy_(centres)
        if self.update == "ema":
            self.ema_cluster_size.fill_(1.0)
            self.ema_embed_sum.copy_(centres)
        self.initialized.fill_(1)

    @torch.no_grad()
    def _update(self, vectors: torch.Tensor, indices: torch.Tensor) -> None:
        counts = _all_reduce_sum(torch.bincount(indices, minlength=self.codebook_size).to(self.embedding.dtype))
        if self.update == "ema":
            sums = torch.zeros_like(self.embedding).index_add_(0, indices, vectors.to(self.embedding.dtype))
            sums = _all_reduce_sum(sums)
            self.ema_cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            total = self.ema_cluster_size.sum()
            smoothed = (self.ema_cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
            self.embedding.copy_(self.ema_embed_sum / smoothed.unsqueeze(1))
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_code_steps > 0:
            dead = self.steps_unused >= self.dead_code_steps
            if bool(dead.any()):
                self.restart(dead, vectors)

    @torch.no_grad()
    def restart(self, dead: torch.Tensor, vectors: torch.Tensor) -> None:
        """Re-seed the entries where `dead` (K,) is true from randomly chosen `vectors` (recent encoder outputs: the
        current batch), with the main process's choice on every process."""
        chosen = torch.randint(vectors.shape[0], (int(dead.sum()),), device=vectors.device)
        seeds = _broadcast(vectors[chosen].to(self.embedding.dtype).contiguous())
        self.embedding.data[dead] = seeds
        if self.update == "ema":
            self.ema_cluster_size[dead] = 1.0
            self.ema_embed_sum[dead] = seeds
        self.steps_unused[dead] = 0


def codebook_statistics(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The perplexity exp(H) of the code frequencies in `counts` (K,) and the fraction of entries used at least once."""
    probabilities = counts.double() / counts.sum().clamp(min=1)
    entropy = -(probabilities * probabilities.clamp(min=1e-30).log()).sum()
    return entropy.exp(), (counts > 0).double().mean()


__all__ = ["Quantized", "VectorQuantizer", "codebook_statistics", "kmeans", "squared_distances"]
