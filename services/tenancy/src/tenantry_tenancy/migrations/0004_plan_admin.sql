-- Operators edit plan definitions through the API (PUT /v1/plans/{plan_id}).
GRANT UPDATE ON plans TO {app_role};
