"""The ``cds-service`` command line: serve (gunicorn, with a worker that reads requests whole in its
event loop), demo (with its signing-day patient), evaluate, check-cards, describe-rules, db and
report.

The top layer: may import anything in the package.
"""
