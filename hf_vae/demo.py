"""`hf-vae demo`: a Gradio app to play with a trained model: generate, explore the latent space, reconstruct and score
a drawn or uploaded digit, interpolate between two digits.

`DemoSession` holds the model, its image processor, the Explore tab's latent cloud and the anomaly threshold, and
does each tab's work in plain Python (tested without a browser); `build_demo` lays it out as a `gr.Blocks` app.
Gradio is imported only inside `build_demo` and `launch`, so the package does not need it.

Bad input never stops the app: a file that is not an image, an image too large to decode, or a colour photo for a
grey model gets a readable message in the page (`gr.Error` / `gr.Warning`), raised from `DemoInputError`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from .demo_explore import Explorer, LatentCloud, build_explorer, latent_cloud
from .estimators import ANOMALY_METHODS
from .image_processing_vae import ImageDecodeError, VAEImageProcessor, decode_image
from .modeling_utils import evaluating

logger = logging.getLogger(__name__)

DEFAULT_MNIST = "ylecun/mnist"
MAX_UPLOAD_PIXELS = 4096 * 4096  # the demo refuses larger uploads, far below PIL's decompression-bomb limit
DISPLAY_SCALE = 6  # 28 px digits shown at 168 px
IWAE_SAMPLES = 1000
ELBO_SAMPLES = 16


class DemoInputError(ValueError):
    """Input the demo cannot use; the message is shown in the page as it is."""


@dataclass
class Score:
    """What the Reconstruct tab reports for one image."""

    negative_elbo: float
    iwae_nll: float
    anomaly_score: float | None
    threshold: float | None
    method: str | None
    notes: list[str]
    reconstruction_nll: float | None = None  # set for a deterministic posterior (VQ-VAE): the bound's two terms
    prior_nll: float | None = None

    @property
    def is_anomaly(self) -> bool | None:
        return None if self.threshold is None else self.anomaly_score > self.threshold

    def markdown(self) -> str:
        if self.reconstruction_nll is None:
            lines = [
                f"**Negative ELBO:** {self.negative_elbo:.2f} nats ({ELBO_SAMPLES} posterior samples)",
                f"**IWAE NLL:** {self.iwae_nll:.2f} nats (K = {IWAE_SAMPLES})",
            ]
        else:
            lines = [
                f"**Likelihood bound:** {self.negative_elbo:.2f} nats, an upper bound on -log p(x): "
                f"reconstruction NLL {self.reconstruction_nll:.2f} + prior NLL of the codes {self.prior_nll:.2f}",
                "_The posterior is a point mass (the quantised codes), so this bound is exact to compute; "
                "there is no separate ELBO or IWAE estimate._",
            ]
        if self.threshold is None:
            lines.append("**Anomaly:** no saved threshold for this model (`hf-vae evaluate --output` writes one).")
        else:
            verdict = "anomaly" if self.is_anomaly else "normal"
            lines.append(
                f"**Anomaly:** {verdict} ({self.method} score {self.anomaly_score:.2f} "
                f"vs threshold {self.threshold:.2f})"
            )
        lines += [f"_{note}_" for note in self.notes]
        return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------- what the tabs need
def saved_threshold(model_name_or_path: str, revision: str | None = None) -> dict[str, Any] | None:
    """The anomaly threshold `hf-vae evaluate --anomaly_scores_output ... --output evaluation.json` wrote next to
    the model (`anomaly.threshold` and `anomaly.method`), from a folder or its Hub repo; None when there is none."""
    path = Path(model_name_or_path) / "evaluation.json"
    if not path.is_file():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model_name_or_path, "evaluation.json", revision=revision))
        except Exception:  # noqa: BLE001 - no file, no repo, no network: the demo runs without a threshold
            return None
    try:
        anomaly = json.loads(path.read_text(encoding="utf-8")).get("anomaly") or {}
        threshold = float(anomaly["threshold"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    method = anomaly.get("method", "elbo")
    return {"threshold": threshold, "method": method if method in ANOMALY_METHODS else "elbo"}


def explore_data(
    model: torch.nn.Module, processor: VAEImageProcessor, dataset_name: str | None, max_samples: int = 2000
) -> LatentCloud:
    """The Explore tab's points: posterior means of the first `max_samples` test images of `dataset_name`, or prior
    samples (logged) when there is no dataset or it cannot be loaded."""
    if dataset_name:
        try:
            from .evaluation import load_split

            data = load_split(dataset_name, model.config, "test", max_samples=max_samples)
            pixel_values = processor.to_pixel_values(data.images)
            return latent_cloud(model, pixel_values, data.labels)
        except Exception as error:  # noqa: BLE001 - offline, missing split, other data: the tab still works
            logger.warning("Explore uses prior samples: cannot load the test split of %r (%s)", dataset_name, error)
    return latent_cloud(model)


def default_dataset(config: Any) -> str | None:
    """ylecun/mnist for MNIST-shaped models (28 px grey), else none."""
    return DEFAULT_MNIST if (config.image_size, config.num_channels) == (28, 1) else None


def _display(images: torch.Tensor, nrow: int = 8) -> Image.Image:
    """Images (N, C, H, W) in [0, 1] as one enlarged picture (nearest neighbour: pixels stay sharp)."""
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=0.5)
    array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if images.shape[1] == 1 else array)
    return picture.resize((picture.width * DISPLAY_SCALE, picture.height * DISPLAY_SCALE), Image.Resampling.NEAREST)


class DemoSession:
    """The model and everything the tabs read, and each tab's work. Methods raise `DemoInputError` for bad input."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: VAEImageProcessor | None = None,
        cloud: LatentCloud | None = None,
        threshold: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor or VAEImageProcessor.for_model(model)
        self.processor.max_image_pixels = MAX_UPLOAD_PIXELS
        self.cloud = cloud or latent_cloud(model)
        self.explorer: Explorer = build_explorer(model, self.cloud)
        self.threshold = threshold
        self.samplers: tuple[str, ...] = tuple(getattr(model, "samplers", ("prior",)))

    @property
    def num_classes(self) -> int | None:
        return self.model.config.num_classes

    @property
    def sample_classes(self) -> int | None:
        """The classes Generate can ask for: the model's, or those of a VQ-VAE's labelled code prior."""
        return self.num_classes if self.num_classes is not None else getattr(self.model, "sample_classes", None)

    # -------------------------------------------------------------------------------------------- Generate
    def generate(self, seed: int, count: int, temperature: float, label: int | None, sampler: str) -> Image.Image:
        """A grid of `count` samples; a conditional model given no class draws the digits 0, 1, 2, ... in turn."""
        count = int(count)
        if not 1 <= count <= 256:
            raise DemoInputError(f"Count must be between 1 and 256, got {count}.")
        if not 0 < temperature <= 5:
            raise DemoInputError(f"Temperature must be in (0, 5], got {temperature}.")
        if sampler not in self.samplers:
            raise DemoInputError(f"Unknown sampler {sampler!r}; this model has {list(self.samplers)}.")
        labels = None
        if self.sample_classes is not None:
            labels = torch.arange(count) % self.sample_classes if label is None else torch.full((count,), int(label))
        keywords = {} if sampler == "prior" else {"sampler": sampler}
        generator = torch.Generator(self.model.device).manual_seed(int(seed))
        with evaluating(self.model):
            images = self.model.sample(count, generator=generator, labels=labels, temperature=temperature, **keywords)
        return _display(images, nrow=min(count, 10 if labels is not None else 8))

    # -------------------------------------------------------------------------------------------- Explore
    def explore(self, values: list[float], label: int | None = None) -> Image.Image:
        return _display(self.explorer.decode([float(value) for value in values], label).unsqueeze(0))

    def _code_grid(self):
        if self.explorer.code_grid is None:
            raise DemoInputError("This model has no code grid: only VQ-VAEs do.")
        return self.explorer.code_grid

    def code_grid_start(self, index: int) -> np.ndarray:
        """The code grid (h, w) of the cloud's image number `index`, to show in the table."""
        starts = self._code_grid().starts
        if index is None or not 0 <= int(index) < len(starts):
            raise DemoInputError(f"Start image must be a number from 0 to {len(starts) - 1}, got {index}.")
        return starts[int(index)].numpy()

    def explore_codes(self, table: Any) -> Image.Image:
        """The decoded image of an edited code grid (a table of integers)."""
        code_grid = self._code_grid()
        try:
            grid = code_grid.parse(table)
        except ValueError as error:
            raise DemoInputError(str(error)) from None
        return _display(code_grid.decode(grid).unsqueeze(0))

    def resample_cell(self, table: Any, row: int, column: int, seed: int) -> tuple[np.ndarray, Image.Image]:
        """The grid with cell (row, column), 1-based as the table numbers them, set to another random code, and its
        image."""
        code_grid = self._code_grid()
        height, width = code_grid.starts.shape[1:]
        if row is None or column is None or not (1 <= int(row) <= height and 1 <= int(column) <= width):
            raise DemoInputError(
                f"The cell must be a row in 1..{height} and a column in 1..{width}, got ({row}, {column})."
            )
        try:
            grid = code_grid.resample(code_grid.parse(table), int(row) - 1, int(column) - 1, int(seed or 0))
        except ValueError as error:
            raise DemoInputError(str(error)) from None
        return grid.numpy(), _display(code_grid.decode(grid).unsqueeze(0))

    def latent_map(self, point: tuple[float, float] | None = None) -> Image.Image | None:
        return None if self.explorer.latent_map is None else self.explorer.latent_map(point)

    # -------------------------------------------------------------------------------------------- Reconstruct
    def read_image(self, image: Any) -> tuple[torch.Tensor, list[str]]:
        """An upload (a file path or bytes) or a sketch (an array, or Gradio's editor value) as the model's
        `pixel_values` (1, C, H, W), and notes on what was done to it. A light background is inverted, since
        MNIST-like models know light digits on black."""
        sketch = isinstance(image, dict)
        if sketch:  # the sketchpad's value: the strokes drawn over the background
            image = image.get("composite")
        if image is None:
            raise DemoInputError("No image: draw a digit on the sketchpad or upload an image file.")
        notes: list[str] = []
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 4:
            if not image[..., 3].any():
                raise DemoInputError("The sketchpad is empty: pick the brush and draw a digit first.")
            rgba = image.astype(np.float32) / 255.0
            white = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])  # strokes over white paper
            image = np.round(white * 255).astype(np.uint8)
        try:
            colour = decode_image(image, "RGB", None, self.processor.max_image_pixels)
        except ImageDecodeError as error:
            reason = str(error)
            if isinstance(image, (str, Path)):  # name the upload, not the server's temporary path
                reason = reason.replace(str(image), Path(image).name)
            raise DemoInputError(f"Cannot use this file: {reason}. Upload a PNG or JPEG image of a digit.") from None
        channels = colour.astype(np.int16)
        if self.processor.num_channels == 1 and np.abs(channels - channels.mean(-1, keepdims=True)).max() > 48:
            notes.append("This model was trained on grey digits: the colour image was converted to grey.")
        uint8 = self.processor.load_images(Image.fromarray(colour))
        if uint8.float().mean() > 127:
            uint8 = 255 - uint8
            if not sketch:
                notes.append("Light background: inverted to a light digit on black, as the model was trained.")
        return self.processor.to_pixel_values(uint8), notes

    def _label_for(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor | None, list[str]]:
        """A conditional model's best class for an unlabelled image: the one with the lowest negative ELBO."""
        if self.num_classes is None:
            return None, []
        scores = [
            float(self.model.negative_elbo(pixel_values, torch.tensor([c]), ELBO_SAMPLES, self._generator()))
            for c in range(self.num_classes)
        ]
        best = int(np.argmin(scores))
        return torch.tensor([best]), [f"Conditional model: reconstructed and scored as the class it fits best, {best}."]

    @staticmethod
    def _generator() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    def reconstruct(self, image: Any) -> tuple[Image.Image, Image.Image, Score]:
        """The image as the model sees it, its reconstruction, and its scores."""
        pixel_values, notes = self.read_image(image)
        pixel_values = pixel_values.to(self.model.device)
        labels, label_notes = self._label_for(pixel_values)
        terms = {}
        with evaluating(self.model):
            reconstruction = self.model.reconstruct(pixel_values, labels)
            if hasattr(self.model, "decode_indices"):  # a point-mass posterior: the bound and its two terms
                figures = self.model.evaluation_figures(pixel_values)
                elbo = iwae = float(figures["likelihood_bound"][0])
                terms = {name: float(figures[name][0]) for name in ("reconstruction_nll", "prior_nll")}
            else:
                elbo = float(self.model.negative_elbo(pixel_values, labels, ELBO_SAMPLES, self._generator()))
                iwae = -float(self.model.log_likelihood(pixel_values, labels, IWAE_SAMPLES, self._generator()))
        anomaly = threshold = method = None
        if self.threshold is not None:
            from .evaluation import anomaly_scores

            method, threshold = self.threshold["method"], self.threshold["threshold"]
            anomaly = float(anomaly_scores(self.model, pixel_values.cpu(), None, method)[0])
        score = Score(elbo, iwae, anomaly, threshold, method, notes + label_notes, **terms)
        return _display(pixel_values), _display(reconstruction), score

    # -------------------------------------------------------------------------------------------- Interpolate
    def interpolate(self, start: Any, end: Any, steps: int = 8) -> Image.Image:
        steps = int(steps)
        if not 2 <= steps <= 32:
            raise DemoInputError(f"Steps must be between 2 and 32, got {steps}.")
        first, _ = self.read_image(start)
        last, _ = self.read_image(end)
        labels = None
        if self.num_classes is not None:
            labels, _ = self._label_for(first.to(self.model.device))
        images = self.model.interpolate(first[0].to(self.model.device), last[0].to(self.model.device), steps, labels)
        return _display(images, nrow=steps)


# ---------------------------------------------------------------------------------------------- the app
def _guarded(function: Callable[..., Any]) -> Callable[..., Any]:
    """A handler whose `DemoInputError` shows as a readable error in the page (and the app keeps serving)."""
    import functools

    import gradio as gr

    @functools.wraps(function)
    def handler(*args: Any) -> Any:
        try:
            return function(*args)
        except DemoInputError as error:
            raise gr.Error(str(error)) from None

    return handler


def build_demo(model: torch.nn.Module, processor: VAEImageProcessor | None = None, **session: Any):
    """The Gradio `Blocks` app of a loaded model (`session`: `cloud` and `threshold`, see `DemoSession`)."""
    import gradio as gr

    state = DemoSession(model, processor, **session)
    config = model.config
    classes = [str(c) for c in range(config.num_classes)] if config.num_classes is not None else None
    sample_classes = [str(c) for c in range(state.sample_classes)] if state.sample_classes is not None else None
    name = Path(str(getattr(model, "name_or_path", "") or "model")).name or "model"

    def class_of(choice: str | None) -> int | None:
        return None if choice in (None, "", "all") else int(choice)

    with gr.Blocks(title=f"hf-vae demo: {name}") as demo:
        gr.Markdown(f"# hf-vae: {name}\n{config.describe_architecture()}")
        with gr.Tab("Generate"):
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="generate-seed")
                count = gr.Slider(1, 64, value=16, step=1, label="Count", elem_id="generate-count")
                temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="Temperature")
                sampler = gr.Dropdown(list(state.samplers), value="prior", label="Sampler", elem_id="generate-sampler")
                label = gr.Dropdown(
                    ["all", *sample_classes] if sample_classes else ["all"],
                    value="all",
                    label="Class",
                    visible=sample_classes is not None,
                )
            generate_button = gr.Button("Generate", variant="primary", elem_id="generate-button")
            grid = gr.Image(label="Samples", type="pil", elem_id="generate-grid", format="png")

            def generate(seed_value, count_value, temperature_value, label_value, sampler_value):
                chosen = class_of(label_value)
                return state.generate(seed_value or 0, count_value, temperature_value, chosen, sampler_value)

            generate_button.click(
                _guarded(generate), [seed, count, temperature, label, sampler], grid, api_name="generate"
            )

        with gr.Tab("Explore"):
            gr.Markdown(state.explorer.description)
            if state.explorer.code_grid is not None:
                _code_grid_tab(gr, state)
            else:
                explore_label = gr.Dropdown(
                    classes or ["all"], value=(classes or ["all"])[0], label="Class", visible=classes is not None
                )
                sliders = []
                with gr.Row():
                    with gr.Column():
                        for row_name, row in state.explorer.rows:
                            gr.Markdown(f"**{row_name}**")
                            with gr.Row():
                                for spec in row:
                                    sliders.append(
                                        gr.Slider(
                                            spec.minimum,
                                            spec.maximum,
                                            value=spec.value,
                                            step=0.01,
                                            label=spec.label,
                                            min_width=240,
                                            elem_id=f"explore-slider-{len(sliders)}",
                                        )
                                    )
                        decoded = gr.Image(
                            state.explore([s.value for s in state.explorer.sliders]),
                            label="Decoded",
                            type="pil",
                            elem_id="explore-image",
                            format="png",
                        )
                    if state.explorer.latent_map is not None:
                        first = tuple(s.value for s in state.explorer.sliders[:2])
                        latent_map = gr.Image(
                            state.latent_map(first), label="Latent map (click to pick a point)", type="pil",
                            elem_id="explore-map", format="png",
                        )  # fmt: skip

                def explore(label_value, *values):
                    return state.explore(list(values), class_of(label_value))

                for slider in sliders:
                    slider.release(_guarded(explore), [explore_label, *sliders], decoded, api_name=False)
                explore_label.change(_guarded(explore), [explore_label, *sliders], decoded, api_name=False)

                if state.explorer.latent_map is not None:

                    def pick(label_value, event):
                        x, y = state.explorer.from_map(*event.index)
                        return x, y, state.explore([x, y], class_of(label_value)), state.latent_map((x, y))

                    pick.__annotations__["event"] = gr.SelectData  # resolved: this module postpones annotations

                    latent_map.select(
                        pick, [explore_label], [sliders[0], sliders[1], decoded, latent_map], api_name=False
                    )

                    def move_marker(x, y):
                        return state.latent_map((x, y))

                    for slider in sliders[:2]:
                        slider.release(move_marker, sliders[:2], latent_map, api_name=False)

                explore_button = gr.Button("Decode", visible=False)
                explore_button.click(_guarded(explore), [explore_label, *sliders], decoded, api_name="explore")

        with gr.Tab("Reconstruct and score"):
            with gr.Row():
                sketch = _sketchpad(gr, "Draw a digit", "reconstruct-sketch")
                upload = gr.File(label="…or upload an image", type="filepath", elem_id="reconstruct-upload")
            with gr.Row():
                score_sketch = gr.Button("Score the drawing", variant="primary", elem_id="score-sketch")
                score_upload = gr.Button("Score the upload", variant="primary", elem_id="score-upload")
            with gr.Row():
                seen = gr.Image(label="What the model sees", type="pil", elem_id="reconstruct-input", format="png")
                rebuilt = gr.Image(label="Reconstruction", type="pil", elem_id="reconstruct-output", format="png")
            scores = gr.Markdown(elem_id="reconstruct-scores", label="Scores")

            def reconstruct(image):
                shown, reconstruction, score = state.reconstruct(image)
                for note in score.notes:
                    if "colour" in note:
                        gr.Warning(note)
                return shown, reconstruction, score.markdown()

            score_sketch.click(_guarded(reconstruct), sketch, [seen, rebuilt, scores], api_name="reconstruct_sketch")
            score_upload.click(_guarded(reconstruct), upload, [seen, rebuilt, scores], api_name="reconstruct")
            upload.upload(_guarded(reconstruct), upload, [seen, rebuilt, scores], api_name=False)

        with gr.Tab("Interpolate"):
            if state.explorer.code_grid is not None:
                gr.Markdown(
                    "_A VQ-VAE: the path runs straight between the two images' quantised grids, so the middle "
                    "steps decode vectors between codebook entries rather than codes._"
                )
            with gr.Row():
                start = _sketchpad(gr, "From (draw, or upload a picture as background)", "interpolate-start")
                end = _sketchpad(gr, "To", "interpolate-end")
            steps = gr.Slider(2, 16, value=8, step=1, label="Steps")
            interpolate_button = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
            path = gr.Image(label="Interpolation", type="pil", elem_id="interpolate-output", format="png")
            interpolate_button.click(_guarded(state.interpolate), [start, end, steps], path, api_name="interpolate")
    return demo


def _code_grid_tab(gr: Any, state: DemoSession) -> None:
    """The Explore tab of a VQ-VAE: a start image, its code grid as an editable table, the decoded image, and a
    control that redraws one cell."""
    code_grid = state.explorer.code_grid
    count, height, width = code_grid.starts.shape
    with gr.Row():
        with gr.Column():
            start = gr.Number(
                value=0, precision=0, minimum=0, maximum=count - 1, label=f"Start image (0 to {count - 1})",
                elem_id="explore-start",
            )  # fmt: skip
            table = gr.Dataframe(
                state.code_grid_start(0), headers=[str(c + 1) for c in range(width)], datatype="number",
                row_count=height, column_count=width, type="array", interactive=True, show_row_numbers=True,
                label=f"Code grid (codebook indices 0 to {code_grid.codebook_size - 1})", elem_id="explore-codes",
            )  # fmt: skip
            with gr.Row():
                row = gr.Number(value=1, precision=0, minimum=1, maximum=height, label="Row", min_width=80)
                column = gr.Number(value=1, precision=0, minimum=1, maximum=width, label="Column", min_width=80)
                seed = gr.Number(value=0, precision=0, label="Seed", min_width=80)
                resample = gr.Button("Resample this cell (a random code)", elem_id="explore-resample")
        decoded = gr.Image(
            state.explore_codes(state.code_grid_start(0)), label="Decoded", type="pil", elem_id="explore-image",
            format="png",
        )  # fmt: skip

    def restart(index):
        grid = state.code_grid_start(index)
        return grid, state.explore_codes(grid)

    start.submit(_guarded(restart), start, [table, decoded], api_name=False)
    table.input(_guarded(state.explore_codes), table, decoded, api_name="explore_codes")
    resample.click(_guarded(state.resample_cell), [table, row, column, seed], [table, decoded], api_name=False)


def _sketchpad(gr: Any, label: str, elem_id: str):
    """A square canvas with a thick black brush on white (read back as a light digit on black)."""
    return gr.Sketchpad(
        label=label,
        type="numpy",
        image_mode="RGBA",
        canvas_size=(280, 280),
        fixed_canvas=True,
        brush=gr.Brush(default_size=16, colors=["#000000"], color_mode="fixed"),
        sources=("upload",),
        elem_id=elem_id,
        layers=False,
    )


def launch(
    model_name_or_path: str,
    *,
    revision: str | None = None,
    dataset_name: str | None = "auto",
    max_explore_samples: int = 2000,
    threshold: float | None = None,
    anomaly_method: str = "elbo",
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    device: str = "cpu",
    **launch_kwargs: Any,
):
    """Load a model (folder or Hub repo), build its app and serve it. `dataset_name="auto"` uses ylecun/mnist for
    MNIST-shaped models; `threshold` overrides the saved anomaly threshold."""
    from .evaluation import load_model

    model = load_model(model_name_or_path, revision, device)
    processor = VAEImageProcessor.for_model(model)
    if dataset_name == "auto":
        dataset_name = default_dataset(model.config)
    cloud = explore_data(model, processor, dataset_name, max_explore_samples)
    saved = (
        {"threshold": threshold, "method": anomaly_method}
        if threshold is not None
        else saved_threshold(model_name_or_path, revision)
    )
    demo = build_demo(model, processor, cloud=cloud, threshold=saved)
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size="25mb", **launch_kwargs)


__all__ = ["DemoInputError", "DemoSession", "Score", "build_demo", "explore_data", "launch", "saved_threshold"]
