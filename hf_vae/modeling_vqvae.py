"""hf-vae's VQ-VAE (van den Oord et al. 2017): a conv encoder to a grid of vectors, each replaced by its nearest
codebook entry (`quantization.VectorQuantizer`), a conv decoder, and a prior over the codes that is a standard
`transformers` causal language model (`code_prior`), saved in `prior/` beside the weights.

It implements the family contract of `modeling_utils` with a deterministic posterior: `encode(x).latent_dist` is a
point mass at the quantised grid (flattened), so the pictures, the interpolations and `log_weights` work unchanged.
With q(z|x) a point mass, log p(x, z) - log q(z|x) = log p(x|z) + log p(z) is the VQ-VAE paper's likelihood bound;
p(z) is the trained prior when there is one, else uniform over the codes (the prior of VQ-VAE training, as in the
paper). As a tokenizer: `encode(x).indices` (B, h, w) and `decode_indices(indices)`.

Copied next to the weights for `trust_remote_code`: imports only torch, transformers and its sibling modules.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from .code_prior import PRIOR_FOLDER, code_log_prob, generate_codes, load_prior
from .configuration_vqvae import VQVAEConfig
from .layers import BlockSpec, ConvGridDecoder, ConvGridEncoder
from .likelihoods import build_likelihood
from .modeling_utils import HfVaePreTrainedModel, in_eval_mode
from .quantization import VectorQuantizer, codebook_statistics


class PointMass:
    """A deterministic posterior: `mode()` and every `sample()` are the same point."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    def mode(self) -> torch.Tensor:
        return self.value

    def sample(self, generator: torch.Generator | None = None, num_samples: int | None = None) -> torch.Tensor:
        return self.value if num_samples is None else self.value.expand(num_samples, *self.value.shape)


@dataclass
class VQVAEOutput(ModelOutput):
    """Output of [`VQVAEModel.forward`]: `loss`, `loss_terms` (`recon_loss`, `commitment_loss` (||z_e - sg(e)||^2
    summed over the grid), `codebook_loss` with the loss-based update, and the batch's `codebook_perplexity` and
    `codebook_usage`, the fraction of entries used; per image these two repeat the batch's value), the decoder's
    `logits` and the grid's `indices`."""

    loss: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    logits: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None
    latent_dist: PointMass | None = None


@dataclass
class VQVAEEncoderOutput(ModelOutput):
    """Output of [`VQVAEModel.encode`]: `indices` (B, h, w), the encoder's vectors `latents` and the `quantized` grid
    (B, D, h, w), and `latent_dist`, the point mass at the quantised grid flattened to (B, D * h * w)."""

    indices: torch.LongTensor | None = None
    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    latent_dist: PointMass | None = None


@dataclass
class VQVAEDecoderOutput(ModelOutput):
    logits: torch.FloatTensor | None = None
    images: torch.FloatTensor | None = None


class VQVAEPreTrainedModel(HfVaePreTrainedModel):
    config_class = VQVAEConfig
    config: VQVAEConfig
    base_model_prefix = "vqvae"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, VectorQuantizer):
            module.reset_parameters()
        else:
            super()._init_weights(module)


class VQVAEModel(VQVAEPreTrainedModel):
    """A VQ-VAE with EMA codebook updates, dead-code restarts and a `transformers` prior over its codes.

    ```python
    >>> from hf_vae.configuration_vqvae import VQVAEConfig
    >>> from hf_vae.modeling_vqvae import VQVAEModel
    >>> model = VQVAEModel(VQVAEConfig.from_preset("mnist-vqvae"))
    >>> codes = model.encode(model.sample(4)).indices  # (4, 7, 7) integers in [0, 128)
    ```
    """

    def __init__(self, config: VQVAEConfig):
        config._validate_fields()
        super().__init__(config)
        spec = BlockSpec(config.normalization, config.activation, 0.0)
        self.likelihood = build_likelihood(config.likelihood)
        out_channels = config.num_channels * self.likelihood.params_per_channel
        self.encoder = ConvGridEncoder(
            config.num_channels, config.conv_channels, config.num_res_blocks, config.embedding_dim, spec
        )
        self.quantizer = VectorQuantizer(
            config.codebook_size,
            config.embedding_dim,
            update=config.codebook_update,
            decay=config.ema_decay,
            epsilon=config.ema_epsilon,
            dead_code_steps=config.dead_code_steps,
            kmeans_init=config.kmeans_init,
            kmeans_iterations=config.kmeans_iterations,
        )
        self.decoder = ConvGridDecoder(
            config.embedding_dim, config.conv_channels, config.num_res_blocks, out_channels, spec
        )
        self.__dict__["_code_prior"] = None  # not a submodule: the prior has its own folder and weights
        self.post_init()

    @classmethod
    def card_sections(cls, config: VQVAEConfig) -> dict[str, str]:
        """The model card's family-specific paragraphs: what the model is, how to use it, what it was trained on."""
        grid, size = config.grid_size, config.codebook_size
        update = (
            f"exponential moving averages (decay {config.ema_decay})"
            if config.codebook_update == "ema"
            else "its own loss ||sg(z_e) - e||^2"
        )
        restarts = (
            f"; an entry unused for {config.dead_code_steps} training steps is re-seeded from an encoder output"
            if config.dead_code_steps
            else ""
        )
        return {
            "summary": (
                f"A VQ-VAE (van den Oord et al. 2017) for {config.image_size}x{config.image_size} images, trained with "
                f"the `hf-vae` package. Its encoder maps an image to a {grid}x{grid} grid of codes, each one of "
                f"{size} codebook entries, and its decoder maps the grid back to pixels. It is an image tokenizer "
                "(`encode(x).indices`, `decode_indices`), and with the causal language model over its codes in "
                "`prior/` (a `transformers` GPT-2) it generates new images."
            ),
            "usage": (
                "generator = torch.Generator().manual_seed(0)\n"
                "images = model.sample(16, generator=generator, temperature=1.0)  # codes from the prior, decoded\n"
                f"codes = model.encode(images).indices  # (16, {grid}, {grid}) integers in [0, {size})\n"
                "decoded = model.decode_indices(codes).images  # back to images\n"
                "bound = -model.log_weights(images, 1)[0]  # -log p(x|z) - log p(z) per image, nats"
            ),
            "model": (
                f"The posterior is deterministic (the nearest codebook entry of each encoder vector), gradients pass "
                f"the quantiser straight through, the codebook is updated by {update}{restarts}. The training loss is "
                f"the reconstruction NLL plus {config.commitment_cost} times the commitment loss ||z_e - sg(e)||^2, in "
                "nats per image. The prior over the flattened code grid (a begin token, a class token for labelled "
                "data, then the codes in raster order) is trained afterwards with `hf-vae train-prior`."
            ),
        }

    # ------------------------------------------------------------------ the prior over codes
    @property
    def code_prior(self) -> nn.Module | None:
        """The causal language model over the codes (`prior/`), or None: then p(z) is uniform over the codes."""
        return self.__dict__.get("_code_prior")

    @property
    def samplers(self) -> tuple[str, ...]:
        return ("prior",)

    @property
    def sample_classes(self) -> int | None:
        """The classes `sample(labels=)` can ask the prior for (its class tokens), or None."""
        prior = self.code_prior
        return None if prior is None else getattr(prior.config, "vq_num_classes", None)

    def set_code_prior(self, prior: nn.Module | None) -> None:
        if prior is not None:
            settings = (prior.config.vq_codebook_size, prior.config.vq_grid_size)
            if settings != (self.config.codebook_size, self.config.grid_size):
                raise ValueError(
                    f"The prior is for {settings[0]} codes on a {settings[1]}-grid; this VQ-VAE has "
                    f"{self.config.codebook_size} codes on a {self.config.grid_size}-grid. Train a prior for it."
                )
            prior = prior.to(self.device).eval()
        self.__dict__["_code_prior"] = prior

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args: Any, **kwargs: Any):
        """The strict `from_pretrained` of every family, plus the prior in `prior/` of the folder or Hub repo when it
        has one."""
        result = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        model = result[0] if isinstance(result, tuple) else result
        options = {key: kwargs[key] for key in ("revision", "cache_dir", "local_files_only", "token") if key in kwargs}
        location = str(pretrained_model_name_or_path)
        if os.path.isdir(location):
            if (Path(location) / PRIOR_FOLDER / "config.json").is_file():
                model.set_code_prior(load_prior(location, **options))
        else:
            try:
                model.set_code_prior(load_prior(location, **options))
            except OSError:  # the repo has no prior/
                pass
        return result

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any):
        """The model as every family saves it, and its prior (when it has one) in `prior/`."""
        if self.code_prior is not None and kwargs.get("is_main_process", True):
            self.code_prior.save_pretrained(Path(save_directory) / PRIOR_FOLDER)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def code_log_prob(self, indices: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) log p(z) of code grids in nats: the prior's (for a prior with class tokens the marginal over the
        classes, or with `labels` the joint log p(z, c), a lower bound on log p(z) within log C of it, C times
        cheaper), or uniform, -h * w * log K, without a prior."""
        prior = self.code_prior
        if prior is None:
            return torch.full(
                (indices.shape[0],), -indices[0].numel() * math.log(self.config.codebook_size), device=indices.device
            )
        prior.to(indices.device)
        use_labels = labels if getattr(prior.config, "vq_num_classes", None) else None
        with torch.no_grad():
            return code_log_prob(prior, indices, use_labels)

    # ------------------------------------------------------------------ the tokenizer
    def _quantize(self, pixel_values: torch.Tensor, update: bool = False):
        latents = self.encoder(pixel_values)
        batch, dim, height, width = latents.shape
        quantized = self.quantizer(latents.permute(0, 2, 3, 1).reshape(-1, dim), update=update)
        grid = quantized.straight_through.view(batch, height, width, dim).permute(0, 3, 1, 2)
        return latents, quantized, grid, quantized.indices.view(batch, height, width)

    def encode(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> VQVAEEncoderOutput:
        """The code grid of each image (`indices`), its entries (`quantized`) and the encoder's vectors (`latents`).
        The codebook never moves here: only `forward` in training mode updates it."""
        pixel_values = self._prepare_pixels(pixel_values)
        latents, _, grid, indices = self._quantize(pixel_values)
        return VQVAEEncoderOutput(
            indices=indices, latents=latents, quantized=grid, latent_dist=PointMass(grid.flatten(1))
        )

    def decode(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> VQVAEDecoderOutput:
        """Decode grids of vectors (B, D, h, w), or the same flattened (B, D * h * w) as `latent_dist.mode()`."""
        config = self.config
        shape = (config.embedding_dim, config.grid_size, config.grid_size)
        if latents.dim() == 2 and latents.shape[1] == math.prod(shape):
            latents = latents.view(-1, *shape)
        if latents.dim() != 4 or tuple(latents.shape[1:]) != shape:
            raise ValueError(
                f"latents must be (batch, {', '.join(map(str, shape))}) or (batch, {math.prod(shape)}), got "
                f"{tuple(latents.shape)}; to decode code indices use `decode_indices`."
            )
        logits = self.decoder(latents.to(device=self.device, dtype=self.dtype))
        return VQVAEDecoderOutput(logits=logits, images=self.likelihood.mean(logits))

    def decode_indices(self, indices: torch.Tensor) -> VQVAEDecoderOutput:
        """Decode code grids (B, h, w) of integers in [0, codebook_size)."""
        indices = torch.as_tensor(indices, device=self.device).long()
        size, grid = self.config.codebook_size, self.config.grid_size
        if indices.dim() != 3 or tuple(indices.shape[1:]) != (grid, grid):
            raise ValueError(f"indices must be (batch, {grid}, {grid}), got {tuple(indices.shape)}.")
        if indices.numel() and (indices.min() < 0 or indices.max() >= size):
            raise ValueError(f"indices must lie in [0, {size}), got values in [{indices.min()}, {indices.max()}].")
        return self.decode(self.quantizer.lookup(indices).permute(0, 3, 1, 2))

    # ------------------------------------------------------------------ the contract
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool = True,
        sample_posterior: bool = True,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> VQVAEOutput | tuple:
        """loss = -log p(x | z_q) + beta ||z_e - sg(e)||^2 (+ ||sg(z_e) - e||^2 with the loss-based update), in nats
        per image. In training mode (and only here) the quantiser also updates the codebook (EMA, restarts).
        `sample_posterior`, `kl_weight` and `generator` are accepted for the contract and change nothing: the posterior
        is deterministic and there is no KL term."""
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
        pixel_values = self._prepare_pixels(pixel_values)
        batch = pixel_values.shape[0]
        _, quantized, grid, indices = self._quantize(pixel_values, update=self.training)
        logits = self.decoder(grid)
        reconstruction = self.likelihood.nll(logits, pixel_values)
        commitment = quantized.commitment.view(batch, -1).sum(1)
        loss = reconstruction + self.config.commitment_cost * commitment
        terms = {"recon_loss": reconstruction, "commitment_loss": commitment}
        if self.config.codebook_update == "loss":
            terms["codebook_loss"] = quantized.codebook.view(batch, -1).sum(1)
            loss = loss + terms["codebook_loss"]
        counts = torch.bincount(indices.flatten(), minlength=self.config.codebook_size)
        perplexity, usage = codebook_statistics(counts)
        terms["codebook_perplexity"] = perplexity.to(loss.dtype).expand(batch)
        terms["codebook_usage"] = usage.to(loss.dtype).expand(batch)
        if reduction == "mean":
            loss, terms = loss.mean(), {name: value.mean() for name, value in terms.items()}
        output = VQVAEOutput(
            loss=loss, loss_terms=terms, logits=logits, indices=indices, latent_dist=PointMass(grid.flatten(1))
        )
        return output if return_dict else output.to_tuple()

    def log_weights(
        self,
        pixel_values: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        for_elbo: bool = False,
    ) -> torch.Tensor:
        """(num_samples, B) log p(x | z) + log p(z) at the encoder's codes z: with a point-mass posterior every draw
        is the same and log q(z | x) = 0, so this is the likelihood bound (and the ELBO)."""
        pixel_values = self._prepare_pixels(pixel_values)
        encoded = self.encode(pixel_values)
        log_px_z = -self.likelihood.nll(self.decode(encoded.quantized).logits, pixel_values)
        return (log_px_z + self.code_log_prob(encoded.indices, labels).to(log_px_z)).expand(num_samples, -1)

    @in_eval_mode
    def evaluation_figures(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """Per-image figures of `hf-vae evaluate` for this family (the IWAE estimate does not apply to a point-mass
        posterior): `reconstruction_nll` -log p(x|z), `prior_nll` -log p(z), `likelihood_bound` (their sum, also
        reported as `negative_elbo` and `iwae_nll`, which it equals here), `commitment_loss`, and `code_counts`
        (B, K), how often each entry is used in each image (for the split's perplexity and usage). With the images'
        `labels` and a prior with class tokens, `prior_nll` is -log p(z, c) at the true class: -log p(x|z) -
        log p(z, c) >= -log p(x) is still an upper bound on the NLL (at most log C looser than the marginal's)."""
        pixel_values = self._prepare_pixels(pixel_values)
        encoded = self.encode(pixel_values)
        reconstruction = self.likelihood.nll(self.decode(encoded.quantized).logits, pixel_values)
        use_labels = labels is not None and bool(self.sample_classes)
        prior_nll = -self.code_log_prob(encoded.indices, labels if use_labels else None).to(reconstruction)
        bound = reconstruction + prior_nll
        flat = encoded.indices.flatten(1)
        counts = torch.zeros(flat.shape[0], self.config.codebook_size, device=flat.device)
        counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=counts.dtype))
        commitment = (encoded.latents - encoded.quantized).pow(2).flatten(1).sum(1)
        return {
            "reconstruction_nll": reconstruction,
            "prior_nll": prior_nll,
            "likelihood_bound": bound,
            "negative_elbo": bound,
            "iwae_nll": bound,
            "commitment_loss": commitment,
            "code_counts": counts,
            "prior_given_class": torch.full_like(bound, float(use_labels)),
        }

    def evaluation_summary(self, figures: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The split's figures from `evaluation_figures`: means over images, and the codebook's perplexity and usage
        over every code of the split."""
        perplexity, usage = codebook_statistics(figures["code_counts"].sum(0))
        prior = self.code_prior
        return {
            "reconstruction_nll": float(figures["reconstruction_nll"].mean()),
            "prior_nll": float(figures["prior_nll"].mean()),
            "likelihood_bound": float(figures["likelihood_bound"].mean()),
            "commitment_loss": float(figures["commitment_loss"].mean()),
            "codebook_perplexity": float(perplexity),
            "codebook_usage": float(usage),
            "codes_used": int((figures["code_counts"].sum(0) > 0).sum()),
            "codebook_size": self.config.codebook_size,
            "iwae_samples": 1,  # a point-mass posterior: one draw is exact, whatever K was asked
            "elbo_samples": 1,
            "latent_dim": None,
            "code_prior": "uniform over the codes (no prior/ trained)"
            if prior is None
            else f"{type(prior).__name__} ({prior.num_parameters():,} parameters)",
            "prior_nll_is": "-log p(z, c) at the true class c"
            if bool(figures.get("prior_given_class", torch.zeros(1)).all())
            else "-log p(z)",
        }

    @in_eval_mode
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | int | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        sampler: str = "prior",
    ) -> torch.Tensor:
        """Images decoded from code grids drawn from the prior with `generate` (temperature, top-k; a labelled prior
        draws the class first unless `labels` are given), or, without a prior, uniformly random codes. `sampler` is
        the shared contract's: the code prior is this family's only one."""
        if sampler != "prior":
            raise ValueError(
                f"sampler={sampler!r}: a VQ-VAE draws its codes from its code prior only; use sampler='prior' "
                "(post-hoc Gaussian mixtures model continuous latents)."
            )
        prior = self.code_prior
        if prior is None:
            size, grid = self.config.codebook_size, self.config.grid_size
            indices = torch.randint(size, (num_samples, grid, grid), generator=generator)
        else:
            prior.to(self.device)
            use_labels = labels if getattr(prior.config, "vq_num_classes", None) else None
            indices = generate_codes(prior, num_samples, generator, use_labels, temperature, top_k)
        return self.decode_indices(indices.to(self.device)).images

    @in_eval_mode
    def reconstruct(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(pixel_values).quantized).images


__all__ = [
    "PointMass",
    "VQVAEDecoderOutput",
    "VQVAEEncoderOutput",
    "VQVAEModel",
    "VQVAEOutput",
    "VQVAEPreTrainedModel",
]
