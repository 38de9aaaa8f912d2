"""hf-vae's hierarchical VAE: stochastic layers z_1 (bottom) ... z_L (top) with top-down inference, as in the Ladder
VAE (Sønderby et al. 2016) and NVAE (Vahdat & Kautz 2020), on MLP blocks or with convolutions facing the pixels.

Generation runs top-down: z_L ~ N(0, I), z_l ~ p(z_l | z_{l+1}), x ~ p(x | z_1). Inference reads x once bottom-up
(features d_1 ... d_L) and then follows the same top-down path: q(z_L | x) from d_L, and q(z_l | x, z_{l+1}) from d_l
and the top-down features of z_{l+1}, so that every posterior is conditioned on what the layers above drew.

It implements the family contract of `modeling_utils`: `log_weights` covers the joint latents, so the IWAE bound, the
estimates and `hf-vae evaluate` work unchanged, and `forward` names one KL term per layer (`kl_loss_1` is the bottom).
Copied next to the weights for `trust_remote_code`: imports only torch, transformers and its sibling modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from .configuration_hvae import HVAEConfig
from .distributions import DiagonalGaussian, standard_normal
from .estimators import iwae_bound
from .layers import BlockSpec, ConvDecoder, ConvFeatures, MLPDecoder, mlp_layers
from .likelihoods import build_likelihood
from .modeling_utils import HfVaePreTrainedModel, in_eval_mode
from .priors import StandardNormal, VampPrior


@dataclass
class HVAEOutput(ModelOutput):
    """Output of [`HVAEModel.forward`]: `loss`, `loss_terms` (`recon_loss`, `kl_loss` and `kl_loss_1` ... `kl_loss_L`,
    nats per image), the decoder's `logits`, and `latent_dist`, the layers' posteriors side by side (bottom first) along
    the first draw's path."""

    loss: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    logits: torch.FloatTensor | None = None
    latent_dist: DiagonalGaussian | None = None


@dataclass
class HVAEEncoderOutput(ModelOutput):
    """Output of [`HVAEModel.encode`]: the posteriors along the mean path (each layer's mean given the means above),
    side by side (`latent_dist`, bottom first) and per layer (`layer_dists`)."""

    latent_dist: DiagonalGaussian | None = None
    layer_dists: list[DiagonalGaussian] | None = None


@dataclass
class HVAEDecoderOutput(ModelOutput):
    logits: torch.FloatTensor | None = None
    images: torch.FloatTensor | None = None


def _gaussian(parameters: torch.Tensor) -> DiagonalGaussian:
    mean, logvar = parameters.chunk(2, dim=-1)
    return DiagonalGaussian(mean, logvar)


@dataclass
class _Path:
    """One top-down pass: per layer (bottom first) the latents (K, B, D_l), posteriors and conditional priors (the top
    layer's prior is N(0, I), `None` here); posteriors and priors are over K * B rows (the top posterior over B)."""

    latents: list[torch.Tensor]
    posteriors: list[DiagonalGaussian]
    priors: list[DiagonalGaussian | None]


class _TopPosterior(nn.Module):
    """The bottom-up path and the top layer's posterior head as one encoder, pixels -> (mean, logvar) of q(z_L | x),
    for the VampPrior's pseudo-inputs. It holds the model's own modules: it is kept by the prior outside the model's
    submodules, so the weights are neither saved twice nor trained apart."""

    def __init__(self, bottom_up: nn.ModuleList, top_posterior: nn.Linear, flatten: bool):
        super().__init__()
        self.bottom_up, self.top_posterior, self.flatten = bottom_up, top_posterior, flatten

    def forward(self, pixel_values: torch.Tensor, condition: None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = pixel_values.flatten(1) if self.flatten else pixel_values
        for block in self.bottom_up:
            hidden = block(hidden)
        return self.top_posterior(hidden).chunk(2, dim=-1)


class HVAEPreTrainedModel(HfVaePreTrainedModel):
    config_class = HVAEConfig
    config: HVAEConfig
    base_model_prefix = "hvae"


class HVAEModel(HVAEPreTrainedModel):
    """A hierarchical VAE with top-down inference.

    With `architecture="conv"` only the two ends that touch pixels change: the bottom-up path starts with the shared
    strided-convolution body (`layers.ConvFeatures`) whose flattened feature map feeds the bottom-up MLP, and z_1 is
    decoded by the shared transposed-convolution `ConvDecoder`. The stochastic layers stay vectors, and the top-down
    blocks MLPs, on purpose: the family contract hands latents around as (B, D) vectors (`decode`, the side-by-side
    posterior whose means give per-layer active units, the per-layer noise of `decode_top_down` and the layers
    picture), and all of it then works unchanged for either architecture. Spatial latents (NVAE's latent channels on a
    grid) pay off with many groups at several resolutions, a model far beyond what this family trains on a CPU; at
    32x32 with a 4x4 smallest map they would buy little over a vector while adding a second kind of latent. Convolutions
    are where the images' spatial structure is learnt, and both ends have them.

    ```python
    >>> from hf_vae.configuration_hvae import HVAEConfig
    >>> from hf_vae.modeling_hvae import HVAEModel
    >>> model = HVAEModel(HVAEConfig.from_preset("mnist-hvae"))
    >>> images = model.sample(16)
    ```
    """

    def __init__(self, config: HVAEConfig):
        config._validate_fields()
        super().__init__(config)
        spec = BlockSpec(config.normalization, config.activation, 0.0)
        width, dims = config.hidden_sizes[-1], config.latent_dims
        self.likelihood = build_likelihood(config.likelihood)
        out_shape = (config.num_channels * self.likelihood.params_per_channel, config.image_size, config.image_size)
        if config.architecture == "conv":
            conv = (config.image_size, config.conv_channels, config.num_res_blocks)
            body = ConvFeatures(config.num_channels, *conv, spec)
            first = nn.Sequential(body, *mlp_layers(body.out_features, config.hidden_sizes, spec))
        else:
            first = nn.Sequential(*mlp_layers(config.num_pixels, config.hidden_sizes, spec))
        self.bottom_up = nn.ModuleList([first])
        self.bottom_up.extend(nn.Sequential(*mlp_layers(width, [width], spec)) for _ in dims[1:])
        self.top_posterior = nn.Linear(width, 2 * dims[-1])
        # Top-down block l (l = 0 .. L-2): features of z_{l+2} -> the prior of z_{l+1} and, with d_{l+1}, its posterior.
        levels = range(len(dims) - 1)
        self.top_down = nn.ModuleList(nn.Sequential(*mlp_layers(dims[level + 1], [width], spec)) for level in levels)
        self.prior_heads = nn.ModuleList(nn.Linear(width, 2 * dims[level]) for level in levels)
        self.posterior_heads = nn.ModuleList(
            nn.Sequential(*mlp_layers(2 * width, [width], spec), nn.Linear(width, 2 * dims[level]))
            for level in levels
        )
        if config.architecture == "conv":
            self.decoder = ConvDecoder(dims[0], *conv, out_shape[0], spec)
        else:
            self.decoder = MLPDecoder(dims[0], list(reversed(config.hidden_sizes)), out_shape, spec)
        if config.prior == "vamp":
            top_encoder = _TopPosterior(self.bottom_up, self.top_posterior, flatten=config.architecture == "mlp")
            image_shape = (config.num_channels, config.image_size, config.image_size)
            self.top_prior = VampPrior(dims[-1], config.num_pseudo_inputs, image_shape, top_encoder)
        else:
            self.top_prior = StandardNormal(dims[-1])
        self.post_init()

    # ------------------------------------------------------------------ the top-down pass
    def _top_down(
        self, pixel_values: torch.Tensor, num_samples: int, generator: torch.Generator | None, sample: bool
    ) -> _Path:
        features = []
        hidden = pixel_values if self.config.architecture == "conv" else pixel_values.flatten(1)
        for block in self.bottom_up:
            hidden = block(hidden)
            features.append(hidden)
        batch = pixel_values.shape[0]
        top = _gaussian(self.top_posterior(features[-1]))
        z = top.sample(generator, num_samples) if sample else top.mode().expand(num_samples, -1, -1)
        latents, posteriors, priors = [z], [top], [None]
        for level in reversed(range(len(self.config.latent_dims) - 1)):
            top_down = self.top_down[level](z.reshape(num_samples * batch, -1).to(self.dtype))
            prior = _gaussian(self.prior_heads[level](top_down))
            bottom_up = features[level].expand(num_samples, -1, -1).reshape(num_samples * batch, -1)
            posterior = _gaussian(self.posterior_heads[level](torch.cat([bottom_up, top_down], dim=-1)))
            z = (posterior.sample(generator) if sample else posterior.mode()).view(num_samples, batch, -1)
            latents.insert(0, z)
            posteriors.insert(0, posterior)
            priors.insert(0, prior)
        return _Path(latents, posteriors, priors)

    def _log_px_z(self, latents: torch.Tensor, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count, batch = latents.shape[:2]
        logits = self.decoder(latents.reshape(count * batch, -1).to(self.dtype), None)
        return -self.likelihood.nll(logits.view(count, batch, *logits.shape[1:]), pixel_values), logits

    def _layer_kls(self, path: _Path, count: int, batch: int, log_prior_top: torch.Tensor) -> list[torch.Tensor]:
        """Per layer (bottom first), the closed-form KL of the posterior to its conditional prior, (K, B): exact for the
        top layer (estimated at the drawn z_L, log q - `log_prior_top`, for the VampPrior), and exact given the drawn
        z_{l+1} below it."""
        kls = []
        for posterior, prior in zip(path.posteriors, path.priors, strict=True):
            if prior is None and not self.top_prior.has_closed_form_kl:
                kls.append(posterior.log_prob(path.latents[-1]) - log_prior_top)
            elif prior is None:
                kls.append(posterior.kl().expand(count, batch))
            else:
                kls.append(posterior.kl(prior).view(count, batch))
        return kls

    def _log_ratio(self, path: _Path, count: int, batch: int, log_prior_top: torch.Tensor) -> torch.Tensor:
        """sum over layers of log p(z_l | z_{l+1}) - log q(z_l | x, z_{l+1}), (K, B)."""
        total = log_prior_top - path.posteriors[-1].log_prob(path.latents[-1])
        for latents, posterior, prior in zip(path.latents[:-1], path.posteriors[:-1], path.priors[:-1], strict=True):
            flat = latents.reshape(count * batch, -1)
            total = total + (prior.log_prob(flat) - posterior.log_prob(flat)).view(count, batch)
        return total

    @staticmethod
    def _side_by_side(path: _Path, batch: int) -> DiagonalGaussian:
        means = [posterior.mean.reshape(-1, batch, posterior.mean.shape[-1])[0] for posterior in path.posteriors]
        logvars = [posterior.logvar.reshape(-1, batch, posterior.logvar.shape[-1])[0] for posterior in path.posteriors]
        return DiagonalGaussian(torch.cat(means, dim=-1), torch.cat(logvars, dim=-1))

    # ------------------------------------------------------------------ the contract
    def encode(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> HVAEEncoderOutput:
        pixel_values = self._prepare_pixels(pixel_values)
        path = self._top_down(pixel_values, 1, None, sample=False)
        batch = pixel_values.shape[0]
        return HVAEEncoderOutput(latent_dist=self._side_by_side(path, batch), layer_dists=path.posteriors)

    def decode(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> HVAEDecoderOutput:
        """Decode the bottom layer's latents: (B, latent_dims[0]), or all layers side by side (B, sum(latent_dims)),
        of which the decoder reads the first latent_dims[0]."""
        bottom, total = self.config.latent_dims[0], self.config.latent_dim
        if latents.dim() != 2 or latents.shape[1] not in (bottom, total):
            raise ValueError(f"latents must be (batch, {bottom}) or (batch, {total}), got {tuple(latents.shape)}.")
        logits = self.decoder(latents[:, :bottom].to(device=self.device, dtype=self.dtype), None)
        return HVAEDecoderOutput(logits=logits, images=self.likelihood.mean(logits))

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool = True,
        sample_posterior: bool = True,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> HVAEOutput | tuple:
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
        pixel_values = self._prepare_pixels(pixel_values)
        batch = pixel_values.shape[0]
        count = self.config.num_importance_samples if sample_posterior else 1
        path = self._top_down(pixel_values, count, generator, sample=sample_posterior)
        log_px_z, logits = self._log_px_z(path.latents[0], pixel_values)
        # Once per step: for the VampPrior this encodes every pseudo-input, as costly as a second batch.
        log_prior_top = self.top_prior.log_prob(path.latents[-1])
        layer_kls = self._layer_kls(path, count, batch, log_prior_top)
        weight = self.config.beta * kl_weight
        reconstruction = -log_px_z.mean(0)
        kl = torch.stack(layer_kls).sum(0).mean(0)
        if count > 1:
            loss = -iwae_bound(log_px_z + weight * self._log_ratio(path, count, batch, log_prior_top))
        else:
            loss = reconstruction + weight * kl
        terms = {"recon_loss": reconstruction, "kl_loss": kl}
        terms.update({f"kl_loss_{level + 1}": value.mean(0) for level, value in enumerate(layer_kls)})
        if reduction == "mean":
            loss, terms = loss.mean(), {name: value.mean() for name, value in terms.items()}
            if self.training and self.config.free_bits > 0:
                floor = sum(
                    self._kl_per_unit(posterior, prior).mean(0).clamp(min=self.config.free_bits).sum()
                    for posterior, prior in zip(path.posteriors, path.priors, strict=True)
                )
                loss = terms["recon_loss"] + weight * floor
        output = HVAEOutput(
            loss=loss, loss_terms=terms, logits=logits[:batch], latent_dist=self._side_by_side(path, batch)
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _kl_per_unit(posterior: DiagonalGaussian, prior: DiagonalGaussian | None) -> torch.Tensor:
        return posterior.kl_per_dimension(prior)

    def log_weights(
        self,
        pixel_values: torch.Tensor,
        num_samples: int,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
        for_elbo: bool = False,
    ) -> torch.Tensor:
        """(num_samples, B) log p(x, z_1..z_L) - log q(z_1..z_L | x) over the joint latents; with `for_elbo`,
        log p(x | z_1) - sum of the layers' closed-form KLs (the same mean, less variance)."""
        pixel_values = self._prepare_pixels(pixel_values)
        batch = pixel_values.shape[0]
        path = self._top_down(pixel_values, num_samples, generator, sample=True)
        log_px_z, _ = self._log_px_z(path.latents[0], pixel_values)
        log_prior_top = self.top_prior.log_prob(path.latents[-1])
        if for_elbo:
            return log_px_z - torch.stack(self._layer_kls(path, num_samples, batch, log_prior_top)).sum(0)
        return log_px_z + self._log_ratio(path, num_samples, batch, log_prior_top)

    @in_eval_mode
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | int | None = None,
        temperature: float = 1.0,
        sampler: str = "prior",
    ) -> torch.Tensor:
        """Images decoded from the top-down prior: z_L ~ p(z_L) (N(0, I) or the VampPrior, or a post-hoc sampler of
        `self.samplers` fitted to the top layer's posterior means), then each z_l ~ p(z_l | z_{l+1}); `temperature`
        scales every layer's standard deviation (and the top draws)."""
        like = next(self.parameters())
        top = self._posthoc_latents(sampler, num_samples, generator, temperature)
        if top is None:
            top = self.top_prior.sample(num_samples, generator, like=like) * temperature
        noise = [
            standard_normal((num_samples, dim), like, generator) * temperature for dim in self.config.latent_dims[:-1]
        ]
        return self.decode_top_down(top, noise)

    @property
    def sampler_latent_dim(self) -> int:
        return self.config.latent_dims[-1]

    sampler_latent_description = "z_L, the top layer"

    def sampler_latents(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The top layer's posterior means (the last `latent_dims[-1]` of the side-by-side posterior)."""
        return self.encode(pixel_values, labels).latent_dist.mode()[:, -self.config.latent_dims[-1] :]

    @in_eval_mode
    def decode_top_down(self, top_latents: torch.Tensor, lower_noise: list[torch.Tensor]) -> torch.Tensor:
        """Images from given top latents z_L (B, latent_dims[-1]) and, for each lower layer (bottom first), the standard
        normal noise of its draw from p(z_l | z_{l+1}) (B, latent_dims[l]): holding one fixed while the other varies
        shows what each level of the hierarchy decides."""
        z = top_latents.to(device=self.device, dtype=self.dtype)
        for level in reversed(range(len(self.config.latent_dims) - 1)):
            prior = _gaussian(self.prior_heads[level](self.top_down[level](z.to(self.dtype))))
            z = prior.mean + prior.std * lower_noise[level].to(prior.mean)
        return self.decode(z).images

    @in_eval_mode
    def reconstruct(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(pixel_values).latent_dist.mode()).images


__all__ = ["HVAEModel", "HVAEPreTrainedModel", "HVAEOutput", "HVAEEncoderOutput", "HVAEDecoderOutput"]
