"""CDS Hooks 2.0 on the wire: the request, response, card and feedback models, and the hook
definitions (context fields, prefetch tokens).

Protocol facts only, no coding knowledge. May import errors only.
"""
