"""presto_ray: Presto! step and layer distillation for EDM text-to-music models, on Ray."""

__version__ = "0.1.0"
