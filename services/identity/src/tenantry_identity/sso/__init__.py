"""Enterprise SSO: SAML 2.0 and OIDC connections per tenant, verified email domains, and
just-in-time accounts. `domain` (the login rules) and `email_domains` are pure; `saml`,
`oidc`, `metadata` and `txt_lookup` talk to the outside world; `store` is the Postgres edge;
`logins` (the login flow) and `connections` (what admins change) are the use cases;
`admin_api` and `login_api` the HTTP routes."""
