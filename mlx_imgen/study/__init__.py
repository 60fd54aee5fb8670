"""The study: next-token, masked-token and diffusion text-to-image models side by side on one
prompt suite (`mlx-imgen compare`), with prompt following, cost and a gallery."""
