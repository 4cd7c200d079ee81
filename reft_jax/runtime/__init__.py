"""What runs the steps: device meshes and multi-host setup (`parallel`), train and frozen model state (`state`),
Orbax checkpoints (`checkpoint`), float32 promotion (`numerics`), JAX's persistent compilation cache
(`compile_cache`), the command's malloc (`malloc`) and the on-disk layout of a run (`workdir`)."""
