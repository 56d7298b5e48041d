"""Local simulators of three providers that implement the provider contract
(docs/provider-contract.openapi.json): `cloud`, `db` and `mail`. See docs/providers.md."""
