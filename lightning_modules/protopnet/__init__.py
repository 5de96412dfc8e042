"""ProtoPNet's own machinery beside its network: push search and projection, receptive fields,
prototype pictures and gallery, local/global analysis and the "this does not look like that" attack."""
