"""Test tooling, in the dev group only (never in a service's image): the stack fixtures, a
throwaway PostgreSQL cluster, peer IdPs (SAML, OIDC), DNS, a mailbox and a browser."""
