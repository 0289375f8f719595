"""Adapters that put a ``dd.Monitor`` inside other training frameworks (optional extras).

* ``deepdiag.integrations.lightning.DeepdiagCallback``: a PyTorch Lightning ``Callback``
  (``pip install 'deepdiag[lightning]'``).
* ``deepdiag.integrations.transformers.DeepdiagCallback``: a transformers ``TrainerCallback``
  (``pip install 'deepdiag[transformers]'``).

This package imports neither framework; each submodule imports its own and says which extra to install
when it is missing.
"""
