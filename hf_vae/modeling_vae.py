"""hf-vae's Gaussian VAE as a `transformers.PreTrainedModel` (Kingma & Welling 2013).

encoder -> posterior q(z|x) = N(mean, exp(logvar)) -> reparameterised z -> decoder -> p(x|z), with a prior p(z)
(`config.prior`). An MLP or a convolutional network (`config.architecture`), a Bernoulli or discretised logistic
likelihood (`config.likelihood`), optionally conditional on a class label, trained on the ELBO (with beta, free bits
and KL warm-up) or on the importance-weighted bound (`num_importance_samples` > 1).

It implements the family contract of `modeling_utils`; the blocks it is built from live in the sibling modules
`layers`, `distributions`, `priors` and `likelihoods`. `save_pretrained` copies this file and its relative imports next
to the weights, so `AutoModel.from_pretrained(..., trust_remote_code=True)` works for people who never installed
hf-vae: it imports only torch, transformers, safetensors and those siblings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .configuration_vae import VAEConfig
from .distributions import DiagonalGaussian
from .estimators import iwae_bound
from .layers import BlockSpec, ConvDecoder, ConvGaussianEncoder, MLPDecoder, MLPGaussianEncoder
from .likelihoods import build_likelihood
from .modeling_utils import HfVaePreTrainedModel, in_eval_mode
from .priors import build_prior


@dataclass
class VAEOutput(ModelOutput):
    """Output of [`VAEModel.forward`]. Losses are in nats per image (means over the batch, or per image with
    `reduction="none"`).

    Args:
        loss: reconstruction + beta * KL (with free bits and the KL warm-up weight, when used), or minus the
            importance-weighted bound when the model trains with `num_importance_samples` > 1.
        loss_terms: {"recon_loss": -E_q[log p(x|z)], "kl_loss": KL(q(z|x) || p(z))}, the columns of metrics.csv.
        reconstruction_loss, kl_loss: the same two terms, as attributes.
        logits: the decoder's output for the (first) latent drawn, the parameters of p(x|z): Bernoulli logits
            (B, C, H, W), or for the discretised logistic (B, 2C, H, W), the location then the log-scale.
        mean, logvar: the posterior's parameters, (B, latent_dim); `latent_dist` the posterior itself.
        latents: the z given to the decoder, (B, latent_dim).
    """

    # The first seven fields keep the order of hf-vae 0.1, for callers that unpack `return_dict=False` tuples.
    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    kl_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mean: torch.FloatTensor | None = None
    logvar: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    latent_dist: DiagonalGaussian | None = None


@dataclass
class VAEEncoderOutput(ModelOutput):
    """Output of [`VAEModel.encode`]: the posterior q(z|x) (`latent_dist`) and its parameters, each
    (B, latent_dim)."""

    latent_dist: DiagonalGaussian | None = None
    mean: torch.FloatTensor | None = None
    logvar: torch.FloatTensor | None = None


@dataclass
class VAEDecoderOutput(ModelOutput):
    """Output of [`VAEModel.decode`]: the likelihood's parameters (`logits`, see [`VAEOutput`]) and the images
    they mean, (B, C, H, W) in [0, 1]: Bernoulli pixel probabilities, or the discretised logistic's location."""

    logits: torch.FloatTensor | None = None
    images: torch.FloatTensor | None = None


class VAEPreTrainedModel(HfVaePreTrainedModel):
    config_class = VAEConfig
    config: VAEConfig
    base_model_prefix = "vae"


class VAEModel(VAEPreTrainedModel):
    """A Variational Autoencoder with a Gaussian posterior.

    Example:

    ```python
    >>> import torch
    >>> from hf_vae import VAEConfig, VAEModel
    >>> model = VAEModel(VAEConfig.from_preset("mnist-2d"))
    >>> out = model(torch.rand(8, 1, 28, 28))
    >>> out.loss  # nats per image: reconstruction + beta * KL
    >>> images = model.sample(16, generator=torch.Generator().manual_seed(0))  # (16, 1, 28, 28)
    ```
    """

    def __init__(self, config: VAEConfig):
        # Overrides passed to `from_pretrained` are set on the config after its own validation: check again.
        config._validate_fields()
        super().__init__(config)
        spec = BlockSpec(config.resolved_normalization, config.activation, config.dropout)
        label_features = config.num_classes or 0
        self.likelihood = build_likelihood(config.likelihood)
        out_channels = config.num_channels * self.likelihood.params_per_channel
        if config.architecture == "mlp":
            self.encoder = MLPGaussianEncoder(
                config.num_pixels + label_features, config.hidden_sizes, config.latent_dim, spec
            )
            self.decoder = MLPDecoder(
                config.latent_dim + label_features,
                list(reversed(config.hidden_sizes)),
                (out_channels, config.image_size, config.image_size),
                spec,
            )
        else:
            conv = (config.image_size, config.conv_channels, config.num_res_blocks)
            self.encoder = ConvGaussianEncoder(config.num_channels, *conv, config.latent_dim, config.num_classes, spec)
            self.decoder = ConvDecoder(config.latent_dim + label_features, *conv, out_channels, spec)
        self.prior = build_prior(config, self.encoder)
        self.post_init()

    # ------------------------------------------------------------------ the contract
    def encode(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> VAEEncoderOutput:
        """The posterior q(z|x)."""
        pixel_values = self._prepare_pixels(pixel_values)
        mean, logvar = self.encoder(pixel_values, self._condition(labels, pixel_values.shape[0]))
        return VAEEncoderOutput(latent_dist=DiagonalGaussian(mean, logvar), mean=mean, logvar=logvar)

    def decode(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> VAEDecoderOutput:
        """Decode latents (B, latent_dim) into the likelihood's parameters and images (B, C, H, W)."""
        if latents.dim() != 2 or latents.shape[1] != self.config.latent_dim:
            raise ValueError(f"latents must have shape (batch, {self.config.latent_dim}), got {tuple(latents.shape)}.")
        latents = latents.to(device=self.device, dtype=self.dtype)
        logits = self.decoder(latents, self._condition(labels, latents.shape[0]))
        return VAEDecoderOutput(logits=logits, images=self.likelihood.mean(logits))

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool = True,
        sample_posterior: bool = True,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> VAEOutput | tuple:
        """Encode, draw z (`sample_posterior=False` takes the posterior mean), decode, and score.

        Args:
            pixel_values: images in [0, 1], (B, C, H, W) (or flat (B, C*H*W)).
            labels: class indices (B,), required by conditional models.
            kl_weight: multiplies beta; the training loop anneals it from 0 to 1 (KL warm-up).
            generator: for a reproducible posterior sample.
            reduction: "mean" over the batch, or "none" for per-image losses (free bits, a batch-level rule, then
                do not apply).
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
        pixel_values = self._prepare_pixels(pixel_values)
        condition = self._condition(labels, pixel_values.shape[0])
        posterior = DiagonalGaussian(*self.encoder(pixel_values, condition))
        kl_weight = self.config.beta * kl_weight
        num_samples = self.config.num_importance_samples if sample_posterior else 1
        latents = posterior.sample(generator, num_samples) if sample_posterior else posterior.mode()[None]
        log_px_z, logits = self._log_px_z(latents, condition, pixel_values)
        reconstruction = -log_px_z.mean(0)
        log_ratio = None  # log p(z_k) - log q(z_k|x), (K, B), when needed
        if num_samples > 1 or not self.prior.has_closed_form_kl:
            log_ratio = self.prior.log_prob(latents) - posterior.log_prob(latents)
        kl = self.prior.kl(posterior) if self.prior.has_closed_form_kl else -log_ratio.mean(0)
        if num_samples > 1:
            # Minus the IWAE bound with p(z)^w / q(z|x)^w, w = beta * kl_weight: warm-up and beta act on the
            # prior/posterior ratio as they act on the KL in the ELBO.
            loss = -iwae_bound(log_px_z + kl_weight * log_ratio)
        else:
            loss = reconstruction + kl_weight * kl
        if reduction == "mean":
            loss, reconstruction, kl = loss.mean(), reconstruction.mean(), kl.mean()
            if self.training and self.config.free_bits > 0:
                kl_floor = self.prior.kl_per_dimension(posterior).mean(0).clamp(min=self.config.free_bits).sum()
                loss = reconstruction + kl_weight * kl_floor
        output = VAEOutput(
            loss=loss,
            loss_terms={"recon_loss": reconstruction, "kl_loss": kl},
            reconstruction_loss=reconstruction,
            kl_loss=kl,
            logits=logits[: pixel_values.shape[0]],
            mean=posterior.mean,
            logvar=posterior.logvar,
            latents=latents[0],
            latent_dist=posterior,
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
        """(num_samples, B) log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x). With `for_elbo` and a prior with a
        closed-form KL, log p(x|z_k) - KL instead: the same mean (the ELBO), less variance."""
        pixel_values = self._prepare_pixels(pixel_values)
        condition = self._condition(labels, pixel_values.shape[0])
        posterior = DiagonalGaussian(*self.encoder(pixel_values, condition))
        latents = posterior.sample(generator, num_samples)
        log_px_z, _ = self._log_px_z(latents, condition, pixel_values)
        if for_elbo and self.prior.has_closed_form_kl:
            return log_px_z - self.prior.kl(posterior)
        return log_px_z + self.prior.log_prob(latents) - posterior.log_prob(latents)

    @in_eval_mode
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | int | None = None,
        temperature: float = 1.0,
        sampler: str = "prior",
    ) -> torch.Tensor:
        """Images (num_samples, C, H, W) decoded from z ~ p(z) (scaled by `temperature`), or from a post-hoc
        sampler of `self.samplers` (`sampler="gmm"`: `temperature` scales each component's spread). Conditional models
        take `labels` (one class for all samples, or one per sample)."""
        latents = self._posthoc_latents(sampler, num_samples, generator, temperature)
        if latents is None:
            latents = self.prior.sample(num_samples, generator, like=next(self.parameters()))
            if temperature != 1.0:
                latents = latents * temperature
        return self.decode(latents, labels=labels).images

    @in_eval_mode
    def reconstruct(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode each image's posterior mean: the deterministic reconstruction, (B, C, H, W)."""
        return self.decode(self.encode(pixel_values, labels).mean, labels).images

    # ------------------------------------------------------------------ pieces
    def _log_px_z(
        self, latents: torch.Tensor, condition: torch.Tensor | None, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x|z) for (K, B, D) latents, (K, B), and the decoder output for all K * B of them."""
        count, batch = latents.shape[:2]
        flat_condition = None if condition is None else condition.repeat(count, 1)
        logits = self.decoder(latents.reshape(count * batch, -1).to(self.dtype), flat_condition)
        return -self.likelihood.nll(logits.view(count, batch, *logits.shape[1:]), pixel_values), logits

    def reconstruction_nll(self, logits: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image (nats, summed over pixels), shape (B,), from the decoder output `logits`."""
        return self.likelihood.nll(logits, pixel_values)

    def logits_to_images(self, logits: torch.Tensor) -> torch.Tensor:
        """The images (B, C, H, W) in [0, 1] a decoder output stands for."""
        return self.likelihood.mean(logits)

    @staticmethod
    def kl_per_dimension(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, exp(logvar)) || N(0, 1)) per latent dimension, (B, latent_dim)."""
        return DiagonalGaussian(mean, logvar).kl_per_dimension()


__all__ = ["VAEModel", "VAEPreTrainedModel", "VAEOutput", "VAEEncoderOutput", "VAEDecoderOutput"]
