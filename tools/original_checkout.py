"""Using a checkout of the original ava-256 code (facebookresearch/ava-256) from tools and tests.

Nothing of the original is copied into ava: these helpers check that a checkout is complete, that
its Python dependencies (and, for training, its compiled CUDA extensions) are there, and import
its training script `ddp-train.py` by path so that its own functions can be called.

    from original_checkout import OriginalCheckout
    checkout = OriginalCheckout("/path/to/ava-256")
    checkout.require_modules()            # SystemExit with the pip command when some are missing
    train_script = checkout.train_script()  # the module: prepare(), FRONTAL_CAMERAS, ...

As a script it prints the PyPI names of the original's dependencies that are missing here, on
one line (nothing when all are there), for `pip install`; .ci/run uses it:

    python tools/original_checkout.py
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Modules the original's data pipeline and training script import, and their PyPI names.
MODULES = {
    "einops": "einops",
    "fvcore": "fvcore",
    "igl": "libigl",
    "numpy": "numpy",
    "pandas": "pandas",
    "PIL": "pillow",
    "pillow_avif": "pillow-avif-plugin",
    "plyfile": "plyfile",
    "tensorboard": "tensorboard",
    "torch": "torch",
    "tqdm": "tqdm",
    "trimesh": "trimesh",
    "yaml": "PyYAML",
    "zipp": "zipp",
}
# Files that make a folder an original checkout.
LANDMARK_FILES = ("ddp-train.py", "data/ava_dataset.py", "utils.py", "configs/config.yaml", "assets/face_topology.obj")
# The CUDA extensions its model needs, built in place (`make` in each folder): folder, library.
EXTENSIONS = (("extensions/mvpraymarch", "mvpraymarchlib"), ("extensions/utils", "utilslib"))


class CheckoutError(SystemExit):
    """A checkout that cannot be used; the message says what to do (exit status 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def missing_modules(names=MODULES) -> list[str]:
    """The modules of `names` that cannot be imported here (found without importing them)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def install_hint(missing: list[str]) -> str:
    return "pip install " + " ".join(MODULES.get(name, name) for name in missing)


class OriginalCheckout:
    """A folder holding the original ava-256 code."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        absent = [name for name in LANDMARK_FILES if not (self.path / name).is_file()]
        if absent:
            raise CheckoutError(f"{self.path} is not a checkout of facebookresearch/ava-256 (it lacks {', '.join(absent)})")

    def require_modules(self) -> None:
        """Raises CheckoutError naming the original's Python dependencies that are missing here."""
        missing = missing_modules()
        if missing:
            raise CheckoutError(f"the original code needs modules that are missing here: {', '.join(missing)} "
                                f"({install_hint(missing)})")

    def missing_extensions(self) -> list[str]:
        """The compiled CUDA extensions that are not built in place (e.g. extensions/utils/utilslib*.so)."""
        return [f"{folder}/{library}*.so" for folder, library in EXTENSIONS
                if not any((self.path / folder).glob(f"{library}*.so"))]

    def require_extensions(self) -> None:
        missing = self.missing_extensions()
        if missing:
            raise CheckoutError(
                f"{self.path} lacks its compiled CUDA extensions ({', '.join(missing)}); build them in place "
                f"first: (cd {self.path}/extensions/mvpraymarch && make) && (cd {self.path}/extensions/utils && make) "
                "(CUDA 13 no longer compiles for the -arch=sm_70 in their setup.py: use your GPU's, e.g. sm_90)"
            )

    def on_path(self) -> None:
        """Puts the checkout first on sys.path, so that its top-level `data`, `models` and `utils` import."""
        if str(self.path) not in sys.path:
            sys.path.insert(0, str(self.path))

    def train_script(self):
        """`ddp-train.py` imported as a module (its `__main__` block does not run)."""
        self.on_path()
        spec = importlib.util.spec_from_file_location("ava256_ddp_train", self.path / "ddp-train.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def config(self, overrides: dict) -> dict:
        """Its `configs/config.yaml` as a dict, with `overrides` ({"train.nids": 4,
        "progress.tensorboard.logdir": None, ...}) set on it; raises CheckoutError for a key the
        file does not have. `yaml.safe_dump` of the result is a config its script reads."""
        import yaml

        with open(self.path / "configs" / "config.yaml") as handle:
            config = yaml.load(handle, Loader=yaml.SafeLoader)
        for key, value in overrides.items():
            *parents, name = key.split(".")
            node = config
            for parent in parents:
                node = node.get(parent) if isinstance(node, dict) else None
            if not isinstance(node, dict) or name not in node:
                raise CheckoutError(f"the original's config.yaml has no key {key}")
            node[name] = value
        return config

    def config_node(self, overrides: dict):
        """`config(overrides)` as the fvcore CfgNode its training script works with."""
        from fvcore.common.config import CfgNode

        return CfgNode(self.config(overrides))


if __name__ == "__main__":
    print(" ".join(MODULES[name] for name in missing_modules()))
