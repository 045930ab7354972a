"""Foundation: typed values, box maths, configuration, image loading, paths, checkpoints, devices.

Every other layer may import from here; nothing here imports from another layer.
"""
