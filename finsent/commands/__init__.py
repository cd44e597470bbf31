"""Sub-command groups of the ``finsent`` CLI; each module owns its commands."""
