-- Erasing one person (issue 17, GDPR Art. 17; tenantry_identity.erasure): their sessions
-- and email verification links are deleted, so the app role may delete those rows (the
-- account row itself stays, anonymized: other rows and the audit trail name its id).
GRANT DELETE ON refresh_tokens, email_verifications TO {app_role};
