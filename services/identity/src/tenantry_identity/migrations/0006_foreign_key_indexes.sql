-- Every foreign key gets an index on its referencing columns: deleting a referenced row
-- (an account, an SSO connection; a tenant's purge deletes them all) checks the
-- referencing table, and without an index each check is a full scan of it.
CREATE INDEX refresh_tokens_by_account ON refresh_tokens (account_id);
CREATE INDEX sso_domains_by_connection ON sso_domains (connection_id);
CREATE INDEX sso_login_requests_by_connection ON sso_login_requests (connection_id);
CREATE INDEX sso_codes_by_account ON sso_codes (account_id);
