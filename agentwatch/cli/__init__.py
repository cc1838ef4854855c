"""The ``agentwatch`` command (click): ``main`` holds serve, sql and policy; ``control`` and
``paging`` are the on-call commands, which talk to a running collector over its HTTP API."""
