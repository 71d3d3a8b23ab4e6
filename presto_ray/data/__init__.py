"""Data layer: latent statistics, object-storage URIs, training datasets."""
