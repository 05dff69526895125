"""Helpers the test modules share: the fixture corpus, apps on fresh databases, JWTs, served
processes, the test FHIR server, fault injection, and the PHI scan of logs."""
