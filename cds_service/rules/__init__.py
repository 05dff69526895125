"""The coding logic as pure functions: facts read from the FHIR resources, the findings (each rule
with its declared contract), claim edits and card building.

No I/O, no clock, no randomness (ids are injected): the same input gives the same cards. May import
rulepack, protocol, fhir (resource reading only), errors and logs.
"""
