"""Who may call: JWT verification of CDS clients (tokens), the trusted-clients file (trust), JWK
Sets and the cache of those fetched from ``jku`` URLs (jwks).

May import fhir (its outbound HTTP configuration and URL policy, fhir.http and fhir.url_policy),
errors and logs.
"""
