"""Plain helpers: atomic file writes, pictures, figures, image logging."""
