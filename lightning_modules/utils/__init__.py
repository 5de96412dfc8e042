"""Plain helpers: atomic file writes, predictions.csv, pictures, figures, image logging."""
