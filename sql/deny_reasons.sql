-- Every reason Stigg gives for a denial, decided by the dev sidecar as Stigg
-- decides it, and carried through to SQL.
\set VERBOSITY terse

CREATE FUNCTION reason(j jsonb) RETURNS text LANGUAGE sql
AS $$ SELECT coalesce(j->>'accessDeniedReason', '(none)') || ' / hasAccess=' || (j->>'hasAccess') $$;

-- customer archived, unknown, without an active subscription
SELECT reason(stigg_get_boolean_entitlement('customer-archived', 'feature-04-analytics'));
SELECT reason(stigg_get_boolean_entitlement('customer-nobody', 'feature-04-analytics'));
SELECT reason(stigg_get_boolean_entitlement('customer-canceled', 'feature-04-analytics'));
-- resource unknown; feature unknown; feature not in the plan
SELECT reason(stigg_get_boolean_entitlement('customer-demo-01', 'feature-04-analytics', 'site-99'));
SELECT reason(stigg_get_boolean_entitlement('customer-demo-01', 'feature-99-nothing'));
SELECT reason(stigg_get_boolean_entitlement('customer-demo-02', 'feature-03-custom-domain'));
-- a typed check of a feature of another type
SELECT reason(stigg_get_boolean_entitlement('customer-demo-01', 'feature-01-templates'));
SELECT reason(stigg_get_numeric_entitlement('customer-demo-01', 'feature-01-templates'));
SELECT reason(stigg_get_metered_entitlement('customer-demo-01', 'feature-06-max-file-size'));
SELECT reason(stigg_get_enum_entitlement('customer-demo-01', 'feature-04-analytics'));
-- requested values outside the entitlement; requested usage over the limit
SELECT reason(stigg_get_enum_entitlement('customer-demo-02', 'feature-08-export-formats', requested_values => '{csv,json}'));
SELECT reason(stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates', requested_usage => 4));

-- stigg_has_access agrees, for every feature type
SELECT f, stigg_has_access('customer-demo-02', f) FROM unnest(ARRAY[
    'feature-04-analytics', 'feature-03-custom-domain', 'feature-01-templates',
    'feature-08-export-formats', 'feature-06-max-file-size', 'feature-99-nothing']) AS f;
SELECT stigg_has_access('customer-archived', 'feature-04-analytics'),
       stigg_has_access('customer-nobody', 'feature-04-analytics'),
       stigg_has_access('customer-canceled', 'feature-04-analytics'),
       stigg_has_access('customer-demo-01', 'feature-04-analytics', 'site-99');

-- the generic check carries the reason and the typed entitlement
SELECT jsonb_pretty(stigg_get_entitlement('customer-demo-01', 'feature-01-templates', requested_usage => 3.5));
SELECT stigg_get_entitlement('customer-demo-02', 'feature-08-export-formats', requested_values => '{json}')->>'accessDeniedReason';

-- an unknown or archived customer has no entitlements: no rows
SELECT count(*) FROM stigg_entitlements('customer-nobody');
SELECT count(*) FROM stigg_entitlements('customer-archived');
SELECT stigg_get_entitlements('customer-archived');
