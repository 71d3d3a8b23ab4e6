"""Training layer: DeepSpeed engines per role, worker loops, checkpoints, TorchTrainer builders."""
