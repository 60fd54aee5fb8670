"""The study: comparing the paradigms' text-to-image models side by side (mlx-imgen compare)."""
