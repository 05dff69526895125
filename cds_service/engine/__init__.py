"""One hook call without Flask: parse and check the request, gather its data (prefetch, then FHIR
reads for what was not prefetched), and the pure seam :func:`evaluate` that turns gathered data into
cards. HTTP, ``cds-service evaluate``, the benchmark and the rule tests all go through it.

May import rules, config, rulepack, store, security, protocol, fhir, errors and logs; never Flask.
"""
