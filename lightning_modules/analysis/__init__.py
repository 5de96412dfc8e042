"""Post-hoc analysis of trained networks (saliency, ProtoPNet push, prototype attacks)."""
