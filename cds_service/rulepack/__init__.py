"""The rule pack in ``cards/``: its validated models, loading with file:line errors, the
cross-checks ``check-cards`` runs, and ``describe-rules``.

Coding knowledge lives in the YAML, not here. May import protocol, errors and the paths helper.
"""
