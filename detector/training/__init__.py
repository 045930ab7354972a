"""Training: the shared scaffold, R-CNN region sampling, the region classifier and MultiBox trainers."""
