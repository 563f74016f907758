"""The shipped model folders, installed as the ``emotech_weights`` package.

Weights are CC BY-NC-SA 4.0 (trained on RAVDESS): see each folder's MODEL_CARD.md.
``runtime.spec.resolve_model_dir`` finds the default folder here with ``importlib.resources``.
"""
