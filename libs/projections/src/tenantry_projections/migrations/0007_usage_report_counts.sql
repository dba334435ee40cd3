-- What each tenant and resource was last reported as, and when: the reconciliation sweep
-- reports only counts that changed since (or that were last sent long ago), so a quiet
-- tenant costs one count per sweep and no event.
ALTER TABLE usage_report_versions
    ADD COLUMN last_count  bigint,
    ADD COLUMN reported_at timestamptz;
