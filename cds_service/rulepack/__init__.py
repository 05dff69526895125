"""The rule pack in ``cards/``: its validated models (``models``, with the compiled text patterns
in ``patterns``), loading with file:line errors (``loading``, ``problems``), the cross-checks
``check-cards`` runs (``checks``), card text templates (``templates``), what the code declares
the pack must hold (``contract``), and ``describe-rules`` (``describe``).

Coding knowledge lives in the YAML, not here. May import protocol, errors and the paths helper.
"""
