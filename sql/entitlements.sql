-- Every function against the demo catalog. The guide's "Result" blocks come
-- back verbatim (compared as jsonb); the boolean "no access" block has
-- hasAccess false, correcting the guide's copy-paste slip.
\set VERBOSITY terse
SET timezone = 'UTC';

-- Boolean, has access / no access
SELECT stigg_get_boolean_entitlement('customer-demo-01', 'feature-04-analytics') = '{
  "hasAccess": true, "isFallback": false, "accessDeniedReason": null,
  "entitlement": {"feature": {"id": "feature-04-analytics", "featureType": "FEATURE_TYPE_BOOLEAN",
    "units": "", "unitsPlural": "", "meterType": "METER_TYPE_NONE", "isMetered": false}}
}'::jsonb AS guide_boolean_has_access;
SELECT stigg_get_boolean_entitlement('customer-demo-01', 'feature-03-custom-domain') = '{
  "hasAccess": false, "isFallback": false, "accessDeniedReason": null,
  "entitlement": {"feature": {"id": "feature-03-custom-domain", "featureType": "FEATURE_TYPE_BOOLEAN",
    "units": "", "unitsPlural": "", "meterType": "METER_TYPE_NONE", "isMetered": false}}
}'::jsonb AS guide_boolean_no_access;

-- Numeric, has access / no access
SELECT stigg_get_numeric_entitlement('customer-demo-01', 'feature-06-max-file-size') = '{
  "hasAccess": true, "isFallback": false, "accessDeniedReason": null,
  "entitlement": {"feature": {"id": "feature-06-max-file-size", "featureType": "FEATURE_TYPE_NUMBER",
    "units": "MB", "unitsPlural": "MB", "meterType": "METER_TYPE_NONE", "isMetered": false},
    "value": 100, "isUnlimited": false}
}'::jsonb AS guide_numeric_has_access;
SELECT stigg_get_numeric_entitlement('customer-demo-02', 'feature-06-max-file-size') = '{
  "hasAccess": false, "isFallback": false,
  "accessDeniedReason": "ACCESS_DENIED_REASON_NO_FEATURE_ENTITLEMENT_IN_SUBSCRIPTION",
  "entitlement": {"feature": null, "value": null, "isUnlimited": false}
}'::jsonb AS guide_numeric_no_access;

-- Metered, has access / no access
SELECT stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates') = '{
  "hasAccess": true, "isFallback": false, "accessDeniedReason": null, "requestedUsage": 0.0,
  "entitlement": {"feature": {"id": "feature-01-templates", "featureType": "FEATURE_TYPE_NUMBER",
    "units": "template", "unitsPlural": "templates", "meterType": "METER_TYPE_FLUCTUATING", "isMetered": true},
    "usageLimit": 6.0, "isUnlimited": false, "currentUsage": 3.0,
    "resetPeriod": "ENTITLEMENT_RESET_PERIOD_UNSPECIFIED", "nextResetDate": null}
}'::jsonb AS guide_metered_has_access;
SELECT stigg_get_metered_entitlement('customer-demo-02', 'feature-02-campaigns', requested_usage => 1) = '{
  "hasAccess": false, "isFallback": false,
  "accessDeniedReason": "ACCESS_DENIED_REASON_NO_FEATURE_ENTITLEMENT_IN_SUBSCRIPTION", "requestedUsage": 1.0,
  "entitlement": {"feature": null, "usageLimit": null, "isUnlimited": false, "currentUsage": 0.0,
    "resetPeriod": "ENTITLEMENT_RESET_PERIOD_UNSPECIFIED", "nextResetDate": null}
}'::jsonb AS guide_metered_no_access;

-- Metered with requested usage: has access (1) / no access (10)
SELECT stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates', requested_usage => 1) = '{
  "hasAccess": true, "isFallback": false, "accessDeniedReason": null, "requestedUsage": 1.0,
  "entitlement": {"feature": {"id": "feature-01-templates", "featureType": "FEATURE_TYPE_NUMBER",
    "units": "template", "unitsPlural": "templates", "meterType": "METER_TYPE_FLUCTUATING", "isMetered": true},
    "usageLimit": 6.0, "isUnlimited": false, "currentUsage": 3.0,
    "resetPeriod": "ENTITLEMENT_RESET_PERIOD_UNSPECIFIED", "nextResetDate": null}
}'::jsonb AS guide_requested_has_access;
SELECT stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates', requested_usage => 10) = '{
  "hasAccess": false, "isFallback": false,
  "accessDeniedReason": "ACCESS_DENIED_REASON_REQUESTED_USAGE_EXCEEDING_LIMIT", "requestedUsage": 10.0,
  "entitlement": {"feature": {"id": "feature-01-templates", "featureType": "FEATURE_TYPE_NUMBER",
    "units": "template", "unitsPlural": "templates", "meterType": "METER_TYPE_FLUCTUATING", "isMetered": true},
    "usageLimit": 6.0, "isUnlimited": false, "currentUsage": 3.0,
    "resetPeriod": "ENTITLEMENT_RESET_PERIOD_UNSPECIFIED", "nextResetDate": null}
}'::jsonb AS guide_requested_no_access;

-- All entitlements of a customer (the guide's GetEntitlements block)
SELECT stigg_get_entitlements('customer-demo-01') = '{"entitlements": [
  {"metered": {"feature": {"id": "feature-07-active-users", "featureType": "FEATURE_TYPE_NUMBER",
      "units": "active user", "unitsPlural": "active users", "meterType": "METER_TYPE_INCREMENTAL", "isMetered": true},
    "usageLimit": 25000.0, "currentUsage": 1.0, "resetPeriod": "ENTITLEMENT_RESET_PERIOD_MONTH",
    "nextResetDate": "2023-12-21T00:00:00Z"}},
  {"boolean": {"feature": {"id": "feature-04-analytics", "featureType": "FEATURE_TYPE_BOOLEAN",
      "units": "", "unitsPlural": "", "meterType": "METER_TYPE_NONE"}}},
  {"numeric": {"feature": {"id": "feature-06-max-file-size", "featureType": "FEATURE_TYPE_NUMBER",
      "units": "MB", "unitsPlural": "MB", "meterType": "METER_TYPE_NONE"}, "value": 100}},
  {"metered": {"feature": {"id": "feature-02-campaigns", "featureType": "FEATURE_TYPE_NUMBER",
      "units": "campaign", "unitsPlural": "campaigns", "meterType": "METER_TYPE_INCREMENTAL", "isMetered": true},
    "usageLimit": 32.0, "resetPeriod": "ENTITLEMENT_RESET_PERIOD_MONTH", "nextResetDate": "2023-12-21T00:00:00Z"}},
  {"metered": {"feature": {"id": "feature-01-templates", "featureType": "FEATURE_TYPE_NUMBER",
      "units": "template", "unitsPlural": "templates", "meterType": "METER_TYPE_FLUCTUATING", "isMetered": true},
    "usageLimit": 6.0, "currentUsage": 3.0, "resetPeriod": "ENTITLEMENT_RESET_PERIOD_UNSPECIFIED"}},
  {"boolean": {"feature": {"id": "feature-03-custom-domain", "featureType": "FEATURE_TYPE_BOOLEAN",
      "units": "", "unitsPlural": "", "meterType": "METER_TYPE_NONE"}}}
]}'::jsonb AS guide_get_entitlements;

-- The same answers, as a reader sees them
SELECT jsonb_pretty(stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates', requested_usage => 10));
SELECT jsonb_pretty(stigg_get_boolean_entitlement('customer-demo-01', 'feature-03-custom-domain'));

-- One row per entitlement, for reports and joins
SELECT * FROM stigg_entitlements('customer-demo-01');
CREATE TABLE customers (id text PRIMARY KEY, name text);
INSERT INTO customers VALUES ('customer-demo-01', 'Revvenu'), ('customer-demo-02', 'Small Shop'),
    ('customer-enterprise', 'Big Corp'), ('customer-nobody', 'Gone');
SELECT c.name, e.feature_id, e.has_access, e.value, e.usage_limit, e.current_usage, e.is_unlimited
  FROM customers c, LATERAL stigg_entitlements(c.id) e
 ORDER BY c.name, e.feature_id;

-- Resource-scoped entitlements: site-01 has its own plan
SELECT * FROM stigg_entitlements('customer-demo-01', 'site-01');
SELECT stigg_get_numeric_entitlement('customer-demo-01', 'feature-06-max-file-size', 'site-01')->'entitlement'->'value' AS site_max_file_size;
SELECT stigg_has_access('customer-demo-01', 'feature-01-templates', 'site-01', 8) AS site_8_more,
       stigg_has_access('customer-demo-01', 'feature-01-templates', 'site-01', 9) AS site_9_more,
       stigg_has_access('customer-demo-01', 'feature-01-templates', NULL, 3) AS customer_3_more,
       stigg_has_access('customer-demo-01', 'feature-01-templates', NULL, 4) AS customer_4_more;
-- site-02 exists but has no subscription of its own
SELECT stigg_get_boolean_entitlement('customer-demo-01', 'feature-04-analytics', 'site-02')->>'accessDeniedReason';

-- Enum entitlements and requested values
SELECT jsonb_pretty(stigg_get_enum_entitlement('customer-demo-01', 'feature-08-export-formats', 'site-01', '{json,csv}'));
SELECT stigg_get_enum_entitlement('customer-demo-01', 'feature-08-export-formats', 'site-01', '{xml}')->>'accessDeniedReason';

-- Unlimited: numeric and metered
SELECT jsonb_pretty(stigg_get_numeric_entitlement('customer-enterprise', 'feature-10-max-projects'));
SELECT (stigg_get_metered_entitlement('customer-enterprise', 'feature-09-api-calls', requested_usage => 1e12)->'entitlement') - 'feature'::text;
-- Soft limit: over the limit and still has access
SELECT stigg_get_metered_entitlement('customer-enterprise', 'feature-11-storage', requested_usage => 100) #> '{hasAccess}' AS soft_has_access,
       stigg_get_metered_entitlement('customer-enterprise', 'feature-11-storage')->'entitlement'->'currentUsage' AS soft_usage;

-- Reset periods: the next reset follows whole periods from the anchor
SELECT feature_id, reset_period, current_usage, next_reset_date
  FROM stigg_entitlements('customer-enterprise') WHERE reset_period IS NOT NULL ORDER BY 1;
-- A daily period that has passed: the 5 exports counted yesterday no longer count
SELECT (stigg_get_metered_entitlement('customer-demo-02', 'feature-12-exports', requested_usage => 5)->'entitlement') - 'feature'::text;
-- An hourly one that has not: 99 of 100 used
SELECT stigg_has_access('customer-enterprise', 'feature-12-exports', requested_usage => 1) AS one_more,
       stigg_has_access('customer-enterprise', 'feature-12-exports', requested_usage => 2) AS two_more;

-- A metered check of a customer exactly at the limit that requests nothing has access
SELECT stigg_has_access('customer-demo-02', 'feature-01-templates', requested_usage => 1) AS to_the_limit,
       stigg_has_access('customer-demo-02', 'feature-01-templates', requested_usage => 2) AS past_the_limit;

-- Reload: whether the customer (and resource) exists
SELECT stigg_reload_entitlements('customer-demo-01'),
       stigg_reload_entitlements('customer-demo-01', 'site-01'),
       stigg_reload_entitlements('customer-demo-01', 'site-99'),
       stigg_reload_entitlements('customer-nobody');

-- In a CHECK constraint: the row that the plan does not allow is refused
CREATE TABLE custom_domains (customer_id text NOT NULL, domain text,
    CHECK (stigg_has_access(customer_id, 'feature-03-custom-domain')));
INSERT INTO custom_domains VALUES ('customer-demo-01', 'example.com');
CREATE TABLE reports (customer_id text NOT NULL,
    CHECK (stigg_has_access(customer_id, 'feature-04-analytics')));
INSERT INTO reports VALUES ('customer-demo-01'), ('customer-demo-02');
INSERT INTO reports VALUES ('customer-nobody');
SELECT count(*) FROM reports;
