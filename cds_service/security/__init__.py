"""Who may call: JWT verification of CDS clients, trust files, the JWK Set cache.

May import fhir (its outbound HTTP session), errors and logs.
"""
