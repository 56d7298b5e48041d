"""One router per resource. Each router declares who may call it (`dependencies=[Security(...)]`), so a
route added to it cannot forget authentication; `PUBLIC_ROUTERS` are the few that are open by nature
(catalog and quotes, login, the OAuth/Stripe callbacks, the JWKS)."""
