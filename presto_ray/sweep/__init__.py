"""Ray Tune sweeps behind ``presto-ray sweep``: the sigma -> budget schedule of a trained layer-
dropping student searched at inference (:mod:`.layer_drop`, with the Pareto front of cost against
quality in :mod:`.pareto`) and the Presto-S loss weights searched by training (:mod:`.loss_weights`).
Search spaces live in ``tuning/*.yaml``."""
