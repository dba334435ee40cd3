-- DELETE /v1/rate-plans/{plan_id} removes a plan's policies.
GRANT DELETE ON plan_rate_policies TO {app_role};
