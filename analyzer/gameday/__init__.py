"""Gameday drills (issue 16): a failure's spans sent for real, and the score of the response.

``scenarios``: what each drill sends (pure data, checked against the policy in force);
``score``: the times from the first span to the resolve, against targets and earlier drills (pure);
``repository``: the ``gamedays`` table and the facts a score is computed from (the store's SQL).
"""
