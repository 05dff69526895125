"""The ``cds-service`` command line: serve (gunicorn), demo, evaluate, check-cards, describe-rules,
db and report.

The top layer: may import anything in the package.
"""
