"""Enterprise SSO: SAML 2.0 and OIDC connections per tenant, verified email domains, and
just-in-time accounts. `domain` is pure; `saml`, `oidc` and `domains` talk to the outside
world; `store` is the Postgres edge; `api` the HTTP routes."""
