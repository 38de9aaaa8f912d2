"""`VAEImageProcessor`: images of any size, colour mode and type in, the model's `pixel_values` out, and decoder
outputs back to PIL images. Saved with every model as `preprocessor_config.json`, so that
`AutoImageProcessor.from_pretrained(model)` gives what the model expects (size, channels, binarisation) without
reading its config.

Images come from users, so decoding is guarded: whatever the bytes, `decode_image` returns pixels or raises
`ImageDecodeError` with a short reason (damaged, truncated, over the decompression-bomb limit, out-of-range 32-bit
pixels). The dataset code decodes through the same function.

Copied next to the weights for `trust_remote_code`: imports only numpy, PIL, torch and transformers.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

BINARIZATIONS = ("none", "dynamic", "static")
RawImage = Image.Image | np.ndarray | torch.Tensor | bytes | str | os.PathLike


class ImageDecodeError(ValueError):
    """An input that is not an image this processor can read; the message says why (callers add which one)."""


# ---------------------------------------------------------------------------------------------- decoding
def decode_image(
    data: RawImage, mode: str, image_size: int | None, max_pixels: int | None = None
) -> np.ndarray:
    """One image (encoded bytes, a file path, a PIL image, an array or a tensor) as a uint8 array in `mode` ("L" or
    "RGB"), resized and centre-cropped to `image_size` x `image_size` when given.

    PIL parses bytes without running code, so every exception it raises means a damaged or unsupported file. An
    image over `max_pixels` (default: PIL's decompression-bomb limit, `Image.MAX_IMAGE_PIXELS`) is refused before
    its pixels are decoded, and one that libtiff reads only in part is refused rather than padded. 16-bit greyscale
    is scaled to 8 bits (PIL's own conversion would clip it to white); palette, RGBA (alpha dropped) and CMYK
    images are converted by PIL."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if isinstance(data, Image.Image):
                array = _image_to_array(data, mode, image_size, max_pixels)
            elif isinstance(data, (np.ndarray, torch.Tensor)):
                array = _image_to_array(_array_to_image(data), mode, image_size, max_pixels)
            else:
                source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
                with Image.open(source) as image:
                    array = _image_to_array(image, mode, image_size, max_pixels)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        reason = str(error).rstrip(".")
        raise ImageDecodeError(f"it is too large to decode safely ({reason}); shrink it first") from None
    except Exception as error:  # the decoding boundary: PIL runs no code, any failure means bad bytes
        reason = " ".join(str(error).split())[:200] or "no details"
        raise ImageDecodeError(
            f"it is damaged or not an image PIL can decode ({type(error).__name__}: {reason})"
        ) from None
    for warning in caught:
        message = " ".join(str(warning.message).split())
        if "truncated" in message.lower():  # libtiff decodes what is there and warns: the rest would be blank
            raise ImageDecodeError(f"it is truncated ({message})")
        if not issubclass(warning.category, Image.DecompressionBombWarning):
            warnings.warn(message, warning.category, stacklevel=2)
    return array


def _array_to_image(data: np.ndarray | torch.Tensor) -> Image.Image:
    """A PIL image from an array: numpy is (H, W) or (H, W, C), tensors are (H, W) or (C, H, W) (torch's order);
    floats are levels in [0, 1], integers levels in 0..255."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
        if data.dim() == 3:
            data = data.permute(1, 2, 0)
        data = data.float().numpy() if data.is_floating_point() else data.numpy()
    array = np.asarray(data)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels-first numpy
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageDecodeError(f"an array of shape {array.shape} is not an image (H, W), (H, W, C) or (C, H, W)")
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise ImageDecodeError(
                f"its float pixels span [{array.min():.4g}, {array.max():.4g}]; float images must lie in [0, 1]"
            )
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        if array.size and not (array.min() >= 0 and array.max() <= 255):
            raise ImageDecodeError(
                f"its integer pixels span [{array.min()}, {array.max()}]; integer images must lie in 0..255"
            )
        array = array.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def _image_to_array(image: Image.Image, mode: str, image_size: int | None, max_pixels: int | None) -> np.ndarray:
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit and width * height > limit:
        raise ImageDecodeError(
            f"it is {width}x{height} pixels ({width * height / 1e6:.3g} megapixels), over the "
            f"{limit / 1e6:.3g}-megapixel limit that guards against decompression bombs; shrink it first"
            + (f" (it is resized to {image_size}x{image_size} anyway)" if image_size else "")
        )
    if image.mode.startswith("I;16"):  # 16-bit greyscale: scale 0..65535 to 0..255 (PIL's convert clips it)
        levels = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8))
    elif image.mode in ("I", "F"):  # 32-bit integer or float pixels: only values 0..255 convert without clipping
        values = np.asarray(image)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 255):
            raise ImageDecodeError(
                f"its {image.mode!r} (32-bit) pixels span [{values.min()}, {values.max()}], outside 0..255; save it "
                "as an 8-bit image"
            )
    if image.mode != mode:
        image = image.convert(mode)
    if image_size is not None and image.size != (image_size, image_size):
        image = ImageOps.fit(image, (image_size, image_size), method=Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _as_list(images: Any) -> list:
    """One image or a batch as a list of single images: lists and tuples, 4-D arrays/tensors, 3-D tensors whose
    first axis and 3-D arrays whose last axis is not a channel axis (1, 3 or 4: batches of grey images) are batches."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, torch.Tensor):
        if images.dim() == 4 or (images.dim() == 3 and images.shape[0] not in (1, 3, 4)):
            return list(images)
        return [images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4 or (images.ndim == 3 and images.shape[-1] not in (1, 3, 4)):
            return list(images)
        return [images]
    return [images]


# ---------------------------------------------------------------------------------------------- the processor
class VAEImageProcessor(BaseImageProcessor):
    r"""Turns images into an hf-vae model's `pixel_values` (B, C, H, W) floats in [0, 1], and decoder outputs back
    into PIL images.

    Args:
        image_size (`int`, defaults to 28): images are resized (aspect kept) and centre-cropped to this square size.
        num_channels (`int`, defaults to 1): 1 converts to greyscale, 3 to RGB (alpha dropped, palettes expanded).
        binarize (`str`, defaults to `"none"`): the binarisation the model was trained with. Models trained on
            binarised data (`"dynamic"`, `"static"`) are evaluated on one fixed Bernoulli draw of the images, seeded
            with `seed`, as `hf-vae evaluate` does; `"none"` keeps the grey levels.
        seed (`int`, defaults to 0): the seed of that draw.
        max_image_pixels (`int`, *optional*): refuse larger inputs (default: PIL's decompression-bomb limit).
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_size: int = 28,
        num_channels: int = 1,
        binarize: str = "none",
        seed: int = 0,
        max_image_pixels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
        if num_channels not in (1, 3):
            raise ValueError(f"num_channels must be 1 (grey) or 3 (RGB), got {num_channels!r}.")
        if binarize not in BINARIZATIONS:
            raise ValueError(f"binarize must be one of {list(BINARIZATIONS)}, got {binarize!r}.")
        self.image_size = image_size
        self.num_channels = num_channels
        self.binarize = binarize
        self.seed = seed
        self.max_image_pixels = max_image_pixels

    @classmethod
    def from_model_config(cls, config: Any, **kwargs: Any) -> VAEImageProcessor:
        """The processor of a model saved before processors were (no preprocessor_config.json): read off its
        config's image size, channels and binarisation."""
        return cls(
            image_size=config.image_size,
            num_channels=config.num_channels,
            binarize=getattr(config, "binarize", "none"),
            **kwargs,
        )

    @classmethod
    def for_model(cls, model: Any, **kwargs: Any) -> VAEImageProcessor:
        """The processor saved with a loaded model (its `name_or_path`'s preprocessor_config.json, a folder or a Hub
        repo), else, for models saved before processors were, `from_model_config`. A saved processor that does not
        match the model's config (size, channels) is an error: one of the two files was edited."""
        source = str(getattr(model, "name_or_path", "") or "")
        processor = None
        if source:
            try:
                processor = cls.from_pretrained(source, **kwargs)
            except (OSError, ValueError):
                processor = None
        if processor is None:
            return cls.from_model_config(model.config, **kwargs)
        config = model.config
        if (processor.image_size, processor.num_channels) != (config.image_size, config.num_channels):
            raise ValueError(
                f"{source}: preprocessor_config.json makes {processor.num_channels}-channel {processor.image_size}px "
                f"images but the model takes {config.num_channels}-channel {config.image_size}px ones; save the "
                "model again with `save_pretrained` (it writes a matching processor)."
            )
        return processor

    @property
    def mode(self) -> str:
        return "L" if self.num_channels == 1 else "RGB"

    def load_images(self, images: RawImage | Sequence[RawImage]) -> torch.Tensor:
        """Decode and resize images (any of `preprocess`'s inputs) to a uint8 tensor (N, C, H, W), no binarisation.
        Raises `ImageDecodeError` naming which input (by position) could not be read."""
        items = _as_list(images)
        if not items:
            raise ImageDecodeError("no images given")
        arrays = []
        for index, item in enumerate(items):
            try:
                arrays.append(decode_image(item, self.mode, self.image_size, self.max_image_pixels))
            except ImageDecodeError as error:
                where = f"image {index}" if len(items) > 1 else "the image"
                raise ImageDecodeError(f"Cannot read {where}: {error}.") from None
        stacked = np.stack(arrays)
        tensor = torch.from_numpy(stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2))
        return tensor.contiguous()

    def to_pixel_values(self, images: torch.Tensor, binarize: bool | None = None, seed: int | None = None):
        """uint8 images (N, C, H, W) -> float pixel values in [0, 1], binarised by one seeded Bernoulli draw when
        `binarize` is true (by default: when the model was trained on binarised data)."""
        pixel_values = images.float().div_(255.0)
        if binarize is None:
            binarize = self.binarize != "none"
        if binarize:
            generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
            pixel_values = torch.bernoulli(pixel_values, generator=generator)
        return pixel_values

    def preprocess(
        self,
        images: RawImage | Sequence[RawImage],
        return_tensors: str | None = "pt",
        binarize: bool | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Images -> `BatchFeature` with `pixel_values` (N, C, H, W) floats in [0, 1].

        Args:
            images: a PIL image, a numpy array ((H, W) or (H, W, C), or a batch (N, H, W) / (N, H, W, C); uint8
                0..255 or floats in [0, 1]), a tensor ((H, W), (C, H, W), or a batch (N, H, W) / (N, C, H, W)),
                encoded bytes or a file path; or a list of them.
            return_tensors: "pt" (default) or "np".
            binarize: draw binary pixels (one Bernoulli draw seeded with `seed`); default: when the model was
                trained on binarised data, as evaluation does.
            seed: the draw's seed (default: the processor's `seed`).
        """
        if kwargs:
            raise TypeError(f"VAEImageProcessor got unexpected keyword(s) {sorted(kwargs)}.")
        pixel_values = self.to_pixel_values(self.load_images(images), binarize, seed)
        if return_tensors in ("np", "numpy"):
            return BatchFeature({"pixel_values": pixel_values.numpy()})
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}.")
        return BatchFeature({"pixel_values": pixel_values}, tensor_type="pt")

    def postprocess(self, images: Any, output_type: str = "pil") -> list[Image.Image] | np.ndarray:
        """Decoder outputs -> PIL images (`output_type="pil"`) or a uint8 array (N, H, W, C) (`"np"`). Takes a
        decoder output (its `images`), or images in [0, 1] as a tensor (N, C, H, W) or (C, H, W)."""
        images = getattr(images, "images", images)
        images = torch.as_tensor(images).detach().float().cpu()
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"postprocess takes images (N, C, H, W) or (C, H, W), got shape {tuple(images.shape)}.")
        array = images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return array
        if output_type != "pil":
            raise ValueError(f"output_type must be 'pil' or 'np', got {output_type!r}.")
        return [Image.fromarray(item[..., 0] if item.shape[-1] == 1 else item) for item in array]


__all__ = ["ImageDecodeError", "VAEImageProcessor", "decode_image"]
