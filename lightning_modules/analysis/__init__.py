"""Post-hoc saliency: Grad-CAM, and lesion-mass reports over a split."""
