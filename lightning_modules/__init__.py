"""dermattn's models: networks (``nets/``), the LightningModules that train them (``modules/``),
the capabilities a network may declare (``contracts.py``), and what observes or explains them
(``callbacks/``, ``analysis/``, ``protopnet/``, ``metrics/``)."""
