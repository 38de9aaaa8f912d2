"""The files of a Hugging Face Space that serves a pushed model's demo (`hf-vae push --with_demo`): `app.py`, which
calls `hf_vae.demo.launch` on the model repo, `requirements.txt`, and a README whose front matter (`sdk: gradio`,
`app_file: app.py`, `models: [...]`) makes the Hub build and run it."""

from __future__ import annotations

import yaml

from . import __version__

APP = '''"""The Gradio demo of {repo_id}, an hf-vae model (https://huggingface.co/{repo_id}).

Runs on a Hugging Face Space, or locally: pip install -r requirements.txt && python app.py
"""

import os

from hf_vae.demo import launch

launch({repo_id!r}, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
'''


def space_id_for(repo_id: str) -> str:
    """The default Space of a model repo: the same name with `-demo` appended, in the same namespace."""
    return f"{repo_id}-demo"


def space_files(repo_id: str) -> dict[str, bytes]:
    """app.py, requirements.txt and README.md of the demo Space of model repo `repo_id`."""
    metadata = {
        "title": f"{repo_id.split('/')[-1]} demo"[:60],
        "emoji": "🔢",
        "colorFrom": "gray",
        "colorTo": "blue",
        "sdk": "gradio",
        "app_file": "app.py",
        "pinned": False,
        "models": [repo_id],
        "tags": ["hf-vae", "vae"],
        "short_description": "Generate, explore, score and interpolate digits with a VAE",
    }
    try:
        import gradio

        metadata["sdk_version"] = gradio.__version__
    except ImportError:
        pass
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    readme = (
        f"---\n{front}---\n\n# {repo_id.split('/')[-1]}: interactive demo\n\n"
        f"The [hf-vae](https://github.com/) demo of [{repo_id}](https://huggingface.co/{repo_id}): draw samples "
        "(Generate), move through the latent space (Explore), draw or upload a digit to see its reconstruction, "
        "negative ELBO, IWAE NLL and anomaly verdict (Reconstruct and score), and walk between two digits "
        "(Interpolate).\n\nRun it locally with `hf-vae demo --model " + repo_id + "`.\n"
    )
    return {
        "app.py": APP.format(repo_id=repo_id).encode(),
        "requirements.txt": f"hf-vae[demo]>={__version__}\n".encode(),
        "README.md": readme.encode(),
    }


__all__ = ["space_files", "space_id_for"]
