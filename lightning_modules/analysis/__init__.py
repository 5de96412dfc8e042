"""Post-hoc saliency: Grad-CAM, lesion-mass reports over a split, and the figure of attention
next to Grad-CAM."""
