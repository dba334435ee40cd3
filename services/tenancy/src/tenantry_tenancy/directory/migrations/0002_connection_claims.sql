-- SSO connection ids are routing facts too (an SSO login names only its connection): each
-- is claimed by its tenant like a slug or a domain, and the tenant's row lists them.
ALTER TABLE directory_claims DROP CONSTRAINT directory_claims_kind_check;
ALTER TABLE directory_claims
    ADD CONSTRAINT directory_claims_kind_check CHECK (kind IN ('slug', 'domain', 'connection'));
