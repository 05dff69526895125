"""The rule pack in ``cards/``: its validated models (``models``, on ``model_base``, with the
payer profiles in ``payer_models`` and the compiled text patterns in ``patterns``), loading with
file:line errors (``loading``, ``problems``), the cross-checks ``check-cards`` runs
(``checks``), card text templates (``templates``) and the length budget of a card's detail
(``detail_fit``), a finding's explanation page as data (``explanation``), what the code declares
the pack must hold (``contract``), and ``describe-rules`` (``describe``).

Coding knowledge lives in the YAML, not here. May import protocol, errors and the paths helper.
"""
