"""Containment: the controls agents check before acting (``control``: the table, the board that
stores and refreshes it) and the policy that flips them from incidents (``actions``)."""
