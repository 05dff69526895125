"""FHIR at the edges: the outbound client fetching what was not prefetched (client), the queries
it runs (queries), the one outbound HTTP configuration and capped body reader (http) and the one
outbound-URL policy every call passes (url_policy), both of which the JWK Set fetch in security uses
too, reading input resources with fhir.resources (resources), the verdicts of validating what the
service emits (validation), and the
limits on incoming JSON (json_limits).

May import errors, logs and recent only.
"""
