"""Training pieces: losses and learning-rate schedules."""
