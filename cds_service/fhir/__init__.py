"""FHIR at the edges: the outbound client and its HTTP session (fetching what was not prefetched),
reading input resources with fhir.resources, and the limits on incoming JSON.

May import errors and logs only.
"""
