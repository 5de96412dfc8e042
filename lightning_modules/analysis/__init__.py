"""Post-hoc analysis of trained networks: ProtoPNet push (prototype projection) and attacks."""
