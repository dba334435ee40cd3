-- Request rates sized for real integrations now that they are enforced (issue 8): a free
-- tenant's dashboard and one script must not trip the limit (WorkOS allows 6000/min per
-- key). Tenants already on a plan get the new rate on the plan's next change event.
UPDATE plans SET limits = limits || '{"requests_per_second": 20, "burst": 40}' WHERE plan_id = 'free';
UPDATE plans SET limits = limits || '{"requests_per_second": 50, "burst": 100}' WHERE plan_id = 'team';
UPDATE plans SET limits = limits || '{"requests_per_second": 200, "burst": 400}' WHERE plan_id = 'business';
UPDATE plans SET limits = limits || '{"requests_per_second": 1000, "burst": 2000}' WHERE plan_id = 'enterprise';
