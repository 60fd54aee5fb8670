"""The weights layer, below the families: declarative key maps (rules with one or several sources
and a transform), strict key-and-shape checks, checkpoint readers (the restricted unpickler and
safetensors), safetensors shards, dtype casting, the wrapper-prefix stripper and the JSON reader.
It imports nothing of mlx_imgen above `nn`."""
