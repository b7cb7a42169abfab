-- Arguments are checked before anything is sent; each error has its SQLSTATE.
CREATE EXTENSION stigg;
\set VERBOSITY terse

-- NULL ids are errors, never a NULL answer that would pass a CHECK
SELECT stigg_has_access(NULL, 'feature-04-analytics');
\echo :SQLSTATE
SELECT stigg_has_access('customer-demo-01', NULL);
\echo :SQLSTATE
SELECT stigg_get_boolean_entitlement(NULL, NULL);
\echo :SQLSTATE
SELECT * FROM stigg_entitlements(NULL);
\echo :SQLSTATE
SELECT stigg_reload_entitlements(NULL);
\echo :SQLSTATE

-- empty and over-long ids
SELECT stigg_has_access('', 'feature-04-analytics');
\echo :SQLSTATE
SELECT stigg_get_numeric_entitlement('customer-demo-01', '');
\echo :SQLSTATE
SELECT stigg_has_access('customer-demo-01', 'feature-04-analytics', '');
\echo :SQLSTATE
SELECT stigg_has_access(repeat('x', 256), 'feature-04-analytics');
\echo :SQLSTATE
SELECT stigg_has_access('customer-demo-01', repeat('é', 200));
\echo :SQLSTATE
SELECT stigg_get_metered_entitlement('customer-demo-01', repeat('y', 10000000));
\echo :SQLSTATE
-- 255 bytes is allowed: the sidecar answers (the customer is unknown)
SELECT stigg_has_access(repeat('x', 255), 'feature-04-analytics');

-- requested usage must be finite and not negative
SELECT stigg_has_access('customer-demo-01', 'feature-01-templates', requested_usage => 'NaN');
\echo :SQLSTATE
SELECT stigg_has_access('customer-demo-01', 'feature-01-templates', requested_usage => 'Infinity');
\echo :SQLSTATE
SELECT stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates', requested_usage => '-Infinity');
\echo :SQLSTATE
SELECT stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates', requested_usage => -1);
\echo :SQLSTATE

-- requested values: no NULL elements, not too many
SELECT stigg_get_enum_entitlement('customer-demo-01', 'feature-08-export-formats', 'site-01', ARRAY['csv', NULL]);
\echo :SQLSTATE
SELECT stigg_get_enum_entitlement('customer-demo-01', 'feature-08-export-formats', 'site-01',
                                  array_fill('csv'::text, ARRAY[1001]));
\echo :SQLSTATE
-- an empty array requests nothing
SELECT stigg_get_enum_entitlement('customer-demo-01', 'feature-08-export-formats', 'site-01', '{}')->'hasAccess';

-- settings
SET stigg.timeout = 0;
\echo :SQLSTATE
SET stigg.sidecar_host = 'http://localhost:8443';
\echo :SQLSTATE
SET stigg.sidecar_host = '';
\echo :SQLSTATE
SET stigg.sidecar_port = 70000;
\echo :SQLSTATE
SET stigg.no_such_setting = 1;
\echo :SQLSTATE
SELECT name, setting, unit, context FROM pg_settings WHERE name LIKE 'stigg.%' AND name <> 'stigg.sidecar_port' ORDER BY name;

-- where the sidecar lives is for superusers only
CREATE ROLE stigg_app;
SET ROLE stigg_app;
SET stigg.sidecar_host = 'attacker.example';
\echo :SQLSTATE
SET stigg.sidecar_port = 25;
\echo :SQLSTATE
SET stigg.timeout = '2s';
SHOW stigg.timeout;
SELECT stigg_has_access('customer-demo-01', 'feature-04-analytics');
RESET ROLE;
DROP ROLE stigg_app;
