"""MultiBox: the class-agnostic proposal network (``model``) and its command line (``__main__``).

``python -m proposals.multibox train ...`` trains it (``detector.training.multibox``);
``python -m proposals.multibox propose ...`` prints the proposals of images.
"""
