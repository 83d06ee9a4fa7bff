"""lit_sr: PyTorch Lightning experiments for single-image super-resolution."""

import os

# albumentations makes a blocking network update check on import unless told not to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["create_model", "list_models"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import lit_sr` stays cheap; the method modules (and Lightning) load on first use.
    if name in __all__:
        from lit_sr import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'lit_sr' has no attribute {name!r}")
