"""Trace analysis: streaming detectors over normalised steps, incidents, paging, containment.

The analyzer is a ``collector.consumer.Consumer``: it receives every ``SpanBatch`` as spans
arrive (never by polling the database), turns rows into ``Step`` objects, keeps bounded state per
session and hands each step to the detectors in ``analyzer/detectors/``.
"""
