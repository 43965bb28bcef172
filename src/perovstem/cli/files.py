"""``perovstem info`` and ``perovstem convert``."""
