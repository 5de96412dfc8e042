"""Plain ``nn.Module`` networks, each built as ``Net(num_classes, meta_dim, **options)``, and the
timm backbone factory they share (``backbones.py``)."""
