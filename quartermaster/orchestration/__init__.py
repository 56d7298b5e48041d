"""Server side: the operations the API performs on Temporal (start, query, update workflows).

Only the API process and the tests import this package; it holds a Temporal client and the keyring.
Callers (agents, humans, the CLI) never do: they talk HTTP to `quartermaster.api`.
"""
