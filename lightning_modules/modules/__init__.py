"""LightningModules: one base (network injected by config) and the two whose training differs."""
