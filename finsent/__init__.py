"""finsent, the application: the ``finsent`` command line, the daemon that runs the roles,
the one registry of roles (:mod:`finsent.roles`), the shipped model (``finsent/model``)
and the demo's assets (``finsent/demo``).

Layers (checked by ``tests/test_layers.py``): ``finsent`` → ``consumers`` | ``alerts`` |
``training`` → ``pipeline``. Nothing below imports this package.
"""

__version__ = "0.2.0"
