"""Write `preprocessor_config.json` (the model's `VAEImageProcessor`, read off its config.json) into model folders
saved before image processors were, such as the committed `pretrained/*` folders. Only that file is written: the
weights, config and card are not touched.

    python scripts/add_image_processors.py              # every pretrained/*/ folder that lacks one
    python scripts/add_image_processors.py out/my-model # given folders (an existing file is rewritten)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_processor_config(folder: Path) -> Path:
    """The folder's processor as `save_pretrained` writes it (with the `auto_map` of `trust_remote_code`), without
    the code file that `save_pretrained` would copy beside it."""
    from hf_vae.families import config_class, image_processor_auto_map, image_processor_class, model_type_of

    config = config_class(model_type_of(folder) or "hf_vae").from_pretrained(folder)
    processor = image_processor_class().from_model_config(config).to_dict()
    processor["auto_map"] = image_processor_auto_map()
    path = folder / "preprocessor_config.json"
    path.write_text(json.dumps(processor, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folders", nargs="*", type=Path, help="model folders (default: the VAEs in pretrained/* lacking one)"
    )
    from hf_vae.families import FAMILIES, model_type_of

    folders = parser.parse_args().folders or [
        path.parent
        for path in sorted((REPO_ROOT / "pretrained").glob("*/config.json"))
        if model_type_of(path.parent) in FAMILIES and not (path.parent / "preprocessor_config.json").is_file()
    ]
    for folder in folders:
        print(f"wrote {write_processor_config(folder)}")


if __name__ == "__main__":
    main()
