"""What every hf-vae family shares: the pre-trained model base (strict loading, PyTorch's own initialisation, the
generated model card on save and push), the output base, input checks, and the one eval-mode context.

The family contract. Every family's model implements:
- `encode(pixel_values, labels=None)` -> an output with the posterior (`latent_dist` for continuous latents);
- `decode(latents, labels=None)` -> an output with the likelihood's parameters (`logits`) and `images` in [0, 1];
- `forward(pixel_values, labels=None, *, generator=None, kl_weight=1.0, sample_posterior=True, reduction="mean")`
  -> an output with `loss` and `loss_terms`, a dict of named terms in nats per image (batch means, or per image with
  `reduction="none"`), named as their metrics.csv columns (`train_<name>`, `val_<name>`);
- `sample(num_samples, generator=None, labels=None, temperature=1.0, sampler="prior")` and
  `reconstruct(pixel_values, labels=None)` -> images; `sampler` is one of `model.samplers`: "prior", and "gmm" once a
  post-hoc Gaussian mixture is fitted (`hf-vae fit-sampler`, saved beside the weights as `gmm_sampler.safetensors`);
- `log_weights(pixel_values, num_samples, generator=None, labels=None, for_elbo=False)` -> (num_samples, B) values
  log p(x, z_k) - log q(z_k | x), where the family has a likelihood (see `estimators`).

Training, evaluation, pictures, the card and the Hub code use only this contract.

Copied next to the weights for `trust_remote_code`: imports only torch, transformers and safetensors.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .layers import is_compiling

_Method = TypeVar("_Method", bound=Callable[..., Any])
# `from_pretrained` keywords that only say where and how to read a folder (no config overrides): with only these, the
# weights' shapes can be checked against the config before loading.
_LOADING_OPTIONS = {"ignore_mismatched_sizes", "revision", "cache_dir", "local_files_only", "token", "force_download"}
GMM_SAMPLER_FILE = "gmm_sampler.safetensors"


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm running statistics, no dropout) without autograd, then every module back in the mode it
    came in: sampling, pictures and estimates must not depend on dropout nor update BatchNorm's statistics, must work
    for a single image, and may run in the middle of training."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def in_eval_mode(method: _Method) -> _Method:
    """Run a model method inside `evaluating(model)`."""

    @functools.wraps(method)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with evaluating(self):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _hf_vae_function(module: str, name: str) -> Callable[..., Any] | None:
    """A function of the installed hf-vae package, or None where this code runs as `trust_remote_code` without it."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None


class GaussianMixtureSampler:
    """A Gaussian mixture over a model's latent space, fitted after training to the posterior means of the training
    images (Ghosh et al. 2020; pythae's GMMSampler): drawing from it instead of the prior avoids the prior's regions
    that no image encodes to ("holes"), which decode to blurry non-digits.

    Holds component weights (K,), means (K, D) and full covariances (K, D, D); sampling needs only torch."""

    def __init__(
        self,
        weights: torch.Tensor,
        means: torch.Tensor,
        covariances: torch.Tensor,
        metadata: dict[str, str] | None = None,
    ):
        if means.dim() != 2 or weights.shape != means.shape[:1] or covariances.shape != (*means.shape, means.shape[1]):
            raise ValueError(
                f"A Gaussian mixture needs weights (K,), means (K, D) and covariances (K, D, D); got "
                f"{tuple(weights.shape)}, {tuple(means.shape)} and {tuple(covariances.shape)}."
            )
        if not (torch.isfinite(weights).all() and torch.isfinite(means).all() and torch.isfinite(covariances).all()):
            raise ValueError("The Gaussian mixture's parameters contain NaN or infinite values; fit it again.")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("The Gaussian mixture's weights must be non-negative with a positive sum.")
        # float32 as saved, and the Cholesky factor computed from the saved values: a reloaded mixture draws the
        # same latents bit for bit.
        total = weights.double().sum()
        self.weights = weights.float() if abs(total - 1) < 1e-6 else (weights.double() / total).float()
        self.means = means.float()
        self.covariances = covariances.float()
        scale_tril, info = torch.linalg.cholesky_ex(self.covariances.double())
        if info.any():
            raise ValueError("A covariance of the Gaussian mixture is not positive definite; fit it again.")
        self.scale_tril = scale_tril.float()
        self.metadata = dict(metadata or {})  # how it was fitted (data, seed, ...), saved in the file's header

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.means.shape[1]

    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        like: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(num_samples, D) latents: a component per sample by weight, then its mean plus `temperature` times its
        Cholesky factor times N(0, I) noise, drawn on the generator's device and moved to `like`'s device and dtype."""
        device = generator.device if generator is not None else torch.device("cpu")
        components = torch.multinomial(self.weights.to(device), num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, self.latent_dim, 1, generator=generator, device=device)
        scale_tril = self.scale_tril.to(device)[components]
        latents = self.means.to(device)[components] + temperature * (scale_tril @ noise).squeeze(-1)
        return latents if like is None else latents.to(device=like.device, dtype=like.dtype)

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        """log density of (N, D) latents under the mixture, (N,)."""
        latents = latents.to(self.means)
        difference = latents.unsqueeze(1) - self.means  # (N, K, D)
        solved = torch.linalg.solve_triangular(self.scale_tril, difference.transpose(0, 1).mT, upper=False)  # (K, D, N)
        mahalanobis = solved.square().sum(1).T  # (N, K)
        log_det = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_normal = -0.5 * mahalanobis - log_det - 0.5 * self.latent_dim * math.log(2 * math.pi)
        return torch.logsumexp(log_normal + self.weights.log(), dim=1)

    def save(self, path: str | os.PathLike) -> None:
        tensors = {"weights": self.weights, "means": self.means, "covariances": self.covariances}
        metadata = {"format": "pt", **{key: str(value) for key, value in self.metadata.items()}}
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> GaussianMixtureSampler:
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as file:
                metadata = {key: value for key, value in (file.metadata() or {}).items() if key != "format"}
            return cls(tensors["weights"], tensors["means"], tensors["covariances"], metadata)
        except (SafetensorError, KeyError, ValueError, OSError, RuntimeError) as error:
            raise OSError(
                f"{path!s} is not a valid Gaussian mixture sampler ({error}); fit it again with `hf-vae fit-sampler` "
                f"or delete the file to sample from the prior only."
            ) from error


class HfVaePreTrainedModel(PreTrainedModel):
    """Base of every family's model. Subclasses set `config_class` and implement the contract above."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    gmm_sampler: GaussianMixtureSampler | None = None

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's own default initialisation (not transformers' normal(0, 0.02)), so that a fresh model starts
        exactly like the reference tutorial's plain-PyTorch network."""
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args: Any, **kwargs: Any):
        """transformers' `from_pretrained`, made strict: weights missing from the checkpoint, unexpected ones or
        ones of the wrong shape raise a `RuntimeError` that lists them (transformers would re-initialise them at
        random and only log a report), and a corrupt or truncated safetensors file raises an `OSError` that says
        so. Pass `ignore_mismatched_sizes=True` to get transformers' lenient behaviour back."""
        if kwargs.get("ignore_mismatched_sizes"):
            loaded = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
            model = loaded[0] if isinstance(loaded, tuple) else loaded
            model._load_gmm_sampler(pretrained_model_name_or_path, kwargs)
            return loaded
        output_loading_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True  # report mismatches below instead of transformers' opaque error
        if not model_args and set(kwargs) <= _LOADING_OPTIONS:
            cls._check_local_weights_fit(pretrained_model_name_or_path)
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            raise OSError(
                f"The weights of {pretrained_model_name_or_path!s} (model.safetensors) are not a valid safetensors "
                f"file, probably corrupt or truncated ({error}). Save the model again with `save_pretrained`, or "
                "download it again with `force_download=True`."
            ) from error
        except (AttributeError, TypeError, IndexError, KeyError, OverflowError) as error:
            # transformers reads some config.json entries (e.g. "dtype", with getattr(torch, ...)) without checks.
            raise OSError(
                f"{pretrained_model_name_or_path!s}: config.json cannot build the model ({type(error).__name__}: "
                f"{error}); it is probably damaged. Save the model again with `save_pretrained`, or download it again "
                "with `force_download=True`."
            ) from error
        problems = [
            f"{key}: checkpoint {tuple(checkpoint_shape)}, model {tuple(model_shape)}"
            for key, checkpoint_shape, model_shape in sorted(loading_info["mismatched_keys"])
        ]
        problems += [f"{key}: missing from the checkpoint" for key in sorted(loading_info["missing_keys"])]
        problems += [f"{key}: in the checkpoint, not in the model" for key in sorted(loading_info["unexpected_keys"])]
        if problems:
            raise RuntimeError(
                f"The weights in {pretrained_model_name_or_path!s} do not fit the architecture its config describes "
                f"({model.config.describe_architecture()}):\n  "
                + "\n  ".join(problems)
                + "\nWas config.json edited, or a config override passed to `from_pretrained`? Load with the config "
                "the weights were saved with."
            )
        model._load_gmm_sampler(pretrained_model_name_or_path, kwargs)
        return (model, loading_info) if output_loading_info else model

    def _load_gmm_sampler(self, name_or_path: str | os.PathLike | None, options: dict[str, Any]) -> None:
        """Attach the folder's or Hub repo's `gmm_sampler.safetensors`, when it has one."""
        if name_or_path is None:
            return
        if os.path.isdir(name_or_path):
            path = os.path.join(name_or_path, GMM_SAMPLER_FILE)
            path = path if os.path.isfile(path) else None
        else:
            from transformers.utils import cached_file

            where = {
                key: options[key] for key in ("revision", "cache_dir", "local_files_only", "token") if key in options
            }
            path = cached_file(
                str(name_or_path),
                GMM_SAMPLER_FILE,
                **where,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        if path is not None:
            self.set_gmm_sampler(GaussianMixtureSampler.load(path))

    @classmethod
    def _check_local_weights_fit(cls, folder: str | os.PathLike | None) -> None:
        """For a local folder, compare the weight shapes the config describes (a model built on the meta device, which
        allocates nothing) with those in the safetensors header, before anything is allocated: a damaged config.json
        asking for a huge layer is refused at once instead of after minutes and gigabytes."""
        if folder is None or not os.path.isdir(folder):
            return
        weights, config_file = os.path.join(folder, "model.safetensors"), os.path.join(folder, "config.json")
        if not (os.path.isfile(weights) and os.path.isfile(config_file)):
            return
        try:
            config = cls.config_class.from_pretrained(folder)
        except ValueError as error:
            raise ValueError(f"{config_file}: {error}") from error
        except (OSError, AttributeError, TypeError, IndexError, KeyError, OverflowError) as error:
            raise OSError(
                f"{config_file} cannot be read as a {cls.config_class.__name__} ({type(error).__name__}: {error}); it "
                "is probably damaged. Save the model again with `save_pretrained`."
            ) from error
        with torch.device("meta"):
            expected = {name: tuple(tensor.shape) for name, tensor in cls(config).state_dict().items()}
        try:
            with safe_open(weights, framework="pt") as file:
                found = {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}
        except (SafetensorError, OSError, ValueError) as error:
            raise OSError(
                f"The weights of {folder!s} (model.safetensors) are not a valid safetensors file, probably corrupt or "
                f"truncated ({error}). Save the model again with `save_pretrained`."
            ) from error
        problems = [
            f"{name}: checkpoint {found[name]}, model {shape}"
            for name, shape in sorted(expected.items())
            if name in found and found[name] != shape
        ]
        problems += [f"{name}: missing from the checkpoint" for name in sorted(set(expected) - set(found))]
        problems += [f"{name}: in the checkpoint, not in the model" for name in sorted(set(found) - set(expected))]
        if problems:
            raise RuntimeError(
                f"The weights in {folder!s} do not fit the architecture its config describes "
                f"({config.describe_architecture()}):\n  "
                + "\n  ".join(problems)
                + "\nWas config.json edited, or a config override passed to `from_pretrained`? Load with the config "
                "the weights were saved with."
            )

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, model_card: bool = True, **kwargs: Any):
        """transformers' `save_pretrained` (config.json, model.safetensors and, for `trust_remote_code`, the code
        files), the fitted Gaussian mixture sampler if any (`gmm_sampler.safetensors`), plus, when hf-vae is installed,
        the model's image processor (preprocessor_config.json, so that `AutoImageProcessor.from_pretrained` works on the
        folder) and hf-vae's generated model card as README.md when `model_card` is true (the training loop turns it
        off for its intermediate saves and writes the card once, at the end)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            processor_class = _hf_vae_function("hf_vae.image_processing_vae", "VAEImageProcessor")
            if processor_class is not None:
                processor_class.from_model_config(self.config).save_pretrained(save_directory)
            gmm_path = os.path.join(save_directory, GMM_SAMPLER_FILE)
            if self.gmm_sampler is not None:
                self.gmm_sampler.save(gmm_path)
            elif os.path.isfile(gmm_path):  # one fitted to other weights: the folder describes this model
                os.remove(gmm_path)
        write_model_card = _hf_vae_function("hf_vae.model_card", "write_model_card")
        if model_card and write_model_card is not None and kwargs.get("is_main_process", True):
            write_model_card(save_directory)
        return result

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload this model with hf-vae's generated card (metadata, usage, architecture, and the results and
        pictures of the folder it was loaded from, when that folder has them), the code files `trust_remote_code`
        needs, in one commit. Takes transformers' keywords (`commit_message`, `private`, `token`, `revision`,
        `create_pr`). Without hf-vae installed (remote code), transformers' own push is used."""
        push_model = _hf_vae_function("hf_vae.hub", "push_model")
        if push_model is None:
            return super().push_to_hub(repo_id, **kwargs)
        return push_model(self, repo_id, **kwargs)

    # ------------------------------------------------------------------ post-hoc latent samplers
    @property
    def samplers(self) -> tuple[str, ...]:
        """The latent samplers `sample(..., sampler=)` accepts: "prior" always, "gmm" once a mixture is fitted."""
        return ("prior", "gmm") if self.gmm_sampler is not None else ("prior",)

    @property
    def sampler_latent_dim(self) -> int:
        """Size of the latent that post-hoc samplers model (the whole latent; a hierarchy's top layer)."""
        return self.config.latent_dim

    sampler_latent_description = "z, the latent"

    def sampler_latents(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The posterior means a post-hoc sampler is fitted to, (B, sampler_latent_dim)."""
        return self.encode(pixel_values, labels).latent_dist.mode()

    def set_gmm_sampler(self, sampler: GaussianMixtureSampler | None) -> None:
        """Attach a fitted Gaussian mixture (or None to drop it); it is saved and pushed with the model."""
        if sampler is not None and sampler.latent_dim != self.sampler_latent_dim:
            raise ValueError(
                f"The Gaussian mixture is over {sampler.latent_dim} dimensions but this model's sampled latent has "
                f"{self.sampler_latent_dim}: it was fitted to another model. Fit it again on this one."
            )
        self.gmm_sampler = sampler

    def _posthoc_latents(
        self, sampler: str, num_samples: int, generator: torch.Generator | None, temperature: float
    ) -> torch.Tensor | None:
        """Latents from a post-hoc sampler, or None for "prior" (the family draws from its prior)."""
        if sampler == "prior":
            return None
        if sampler not in self.samplers:
            fix = "fit one with `hf-vae fit-sampler`" if sampler == "gmm" else f"use one of {list(self.samplers)}"
            raise ValueError(f"sampler={sampler!r} is not available for this model ({list(self.samplers)}): {fix}.")
        return self.gmm_sampler.sample(num_samples, generator, temperature, like=next(self.parameters()))

    # ------------------------------------------------------------------ inputs
    def _prepare_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Check shape, dtype and range, accept a flat (B, C*H*W) or channel-less (B, H, W) batch, cast to the
        model's dtype. Errors name the expected shape, because a silently broadcast batch trains garbage. The range
        check reads two numbers back from the device, so it is skipped while training on an accelerator (the
        training loop's pixels are in [0, 1] by construction), and under `torch.compile`, where its data-dependent
        branches split the compiled forward into six graphs."""
        config = self.config
        expected = (config.num_channels, config.image_size, config.image_size)
        num_pixels = math.prod(expected)
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if pixel_values.dim() == 2 and pixel_values.shape[1] == num_pixels:
            pixel_values = pixel_values.view(-1, *expected)
        elif pixel_values.dim() == 3 and config.num_channels == 1 and tuple(pixel_values.shape[1:]) == expected[1:]:
            pixel_values = pixel_values.unsqueeze(1)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(or flat (batch, {num_pixels})), got {tuple(pixel_values.shape)}."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a float tensor with values in [0, 1], got dtype {pixel_values.dtype}; "
                "scale uint8 images with `images.float() / 255`."
            )
        if not (self.training and pixel_values.device.type != "cpu") and not is_compiling():
            low, high = torch.aminmax(pixel_values.detach())
            if torch.isnan(low) or torch.isnan(high):
                raise ValueError("pixel_values contains NaN; check the data pipeline (pixels must be floats in [0, 1])")
            if not (low >= 0 and high <= 1):
                raise ValueError(
                    f"pixel_values must lie in [0, 1], got values in [{low.item():.4g}, {high.item():.4g}]; "
                    "scale images with `images.float() / 255` (and do not normalise them)."
                )
        return pixel_values.to(self.dtype)

    def _condition(self, labels: torch.Tensor | int | None, batch_size: int) -> torch.Tensor | None:
        """One-hot label vectors for conditional models (`config.num_classes` set); None for unconditional ones."""
        num_classes = self.config.num_classes
        if num_classes is None:
            return None
        if labels is None:
            raise ValueError(
                f"This model is conditional (num_classes={num_classes}): pass `labels`, a tensor of "
                f"{batch_size} class indices in [0, {num_classes})."
            )
        labels = torch.as_tensor(labels, device=self.device).long().view(-1)
        if labels.numel() == 1 and batch_size > 1:
            labels = labels.expand(batch_size)
        if labels.shape[0] != batch_size:
            raise ValueError(f"Got {labels.shape[0]} labels for a batch of {batch_size}.")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must be class indices in [0, {num_classes}), got {labels.tolist()}.")
        return F.one_hot(labels, num_classes).to(self.dtype)

    # ------------------------------------------------------------------ built on the contract
    @in_eval_mode
    def interpolate(
        self,
        start: torch.Tensor,
        end: torch.Tensor,
        steps: int = 8,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Walk the latent space in a straight line from `start`'s posterior mode to `end`'s.

        `start` and `end` are images (C, H, W) or batches (B, C, H, W); returns (steps, C, H, W) or
        (B, steps, C, H, W), the first and last steps being the two reconstructions. Conditional models keep one
        label along each path.
        """
        if steps < 2:
            raise ValueError(f"steps must be at least 2 (the two end points), got {steps}.")
        single = start.dim() == 3
        if single:
            start, end = start.unsqueeze(0), end.unsqueeze(0)
        z_start = self.encode(start, labels).latent_dist.mode()
        z_end = self.encode(end, labels).latent_dist.mode()
        weights = torch.linspace(0, 1, steps, device=z_start.device, dtype=z_start.dtype).view(1, steps, 1)
        path = torch.lerp(z_start.unsqueeze(1), z_end.unsqueeze(1), weights)  # (B, steps, D)
        batch = path.shape[0]
        path_labels = None
        if labels is not None:
            path_labels = torch.as_tensor(labels, device=self.device).view(-1).expand(batch).repeat_interleave(steps)
        images = self.decode(path.reshape(batch * steps, -1), path_labels).images
        images = images.view(batch, steps, *images.shape[1:])
        return images[0] if single else images

    # ------------------------------------------------------------------ estimates built on `log_weights`
    def log_likelihood(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_samples: int = 1000,
        generator: torch.Generator | None = None,
        max_batch_elements: int | None = None,
    ) -> torch.Tensor:
        """Importance-weighted estimate of log p(x) per image in nats (Burda et al. 2015), shape (B,):
        log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x). A lower bound that tightens as K grows; K=1 is the
        ELBO. Runs in eval mode whatever mode the model is in."""
        from .estimators import DEFAULT_MAX_BATCH_ELEMENTS, log_likelihood

        return log_likelihood(
            self,
            pixel_values,
            num_samples,
            generator=generator,
            labels=labels,
            max_batch_elements=max_batch_elements or DEFAULT_MAX_BATCH_ELEMENTS,
        )

    def negative_elbo(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        max_batch_elements: int | None = None,
    ) -> torch.Tensor:
        """-ELBO per image in nats, (B,), averaged over `num_samples` posterior draws, in eval mode."""
        from .estimators import DEFAULT_MAX_BATCH_ELEMENTS, negative_elbo

        return negative_elbo(
            self,
            pixel_values,
            num_samples,
            generator=generator,
            labels=labels,
            max_batch_elements=max_batch_elements or DEFAULT_MAX_BATCH_ELEMENTS,
        )

    def anomaly_score(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        method: str = "elbo",
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-image anomaly score in nats (higher = less like the training data): the negative ELBO
        (`method="elbo"`, 16 draws by default) or the IWAE estimate of -log p(x) (`method="iwae"`, 1000 draws).
        Seeded with 0 when no generator is given, so repeated calls agree."""
        from .estimators import anomaly_score

        return anomaly_score(self, pixel_values, labels, method, num_samples, generator)


__all__ = ["GMM_SAMPLER_FILE", "GaussianMixtureSampler", "HfVaePreTrainedModel", "evaluating", "in_eval_mode"]
