-- A slug purged again after its quarantine ended is quarantined anew (ON CONFLICT ... DO
-- UPDATE in purges.py needs UPDATE).
GRANT UPDATE ON slug_quarantine TO {app_role};
