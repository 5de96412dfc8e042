"""dermattn's models: networks (``nets/``), the LightningModules that train them (``modules/``),
the capabilities a network may declare (``contracts.py``), the callbacks that run with them
(``callbacks/``), and what scores or explains them (``analysis/``, ``protopnet/``, ``metrics/``)."""
