/* stigg--0.1.0.sql: Stigg entitlement checks from SQL */

\echo Use "CREATE EXTENSION stigg" to load this file. \quit

-- Tables, views and types the extension owns live here; the stigg_*
-- functions live in the schema the extension is installed into.
CREATE SCHEMA stigg;
GRANT USAGE ON SCHEMA stigg TO PUBLIC;

-- All checks are VOLATILE: an entitlement can change between two calls in
-- one statement. None is STRICT: a NULL id is an error, not a NULL answer.

CREATE FUNCTION stigg_has_access(customer_id text, feature_id text,
                                 resource_id text DEFAULT NULL,
                                 requested_usage float8 DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'stigg_has_access'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION stigg_get_entitlement(customer_id text, feature_id text,
                                      resource_id text DEFAULT NULL,
                                      requested_usage float8 DEFAULT NULL,
                                      requested_values text[] DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stigg_get_entitlement'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION stigg_get_boolean_entitlement(customer_id text, feature_id text,
                                              resource_id text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stigg_get_boolean_entitlement'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION stigg_get_numeric_entitlement(customer_id text, feature_id text,
                                              resource_id text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stigg_get_numeric_entitlement'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION stigg_get_metered_entitlement(customer_id text, feature_id text,
                                              resource_id text DEFAULT NULL,
                                              requested_usage float8 DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stigg_get_metered_entitlement'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION stigg_get_enum_entitlement(customer_id text, feature_id text,
                                           resource_id text DEFAULT NULL,
                                           requested_values text[] DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stigg_get_enum_entitlement'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION stigg_get_entitlements(customer_id text,
                                       resource_id text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stigg_get_entitlements'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION stigg_entitlements(customer_id text, resource_id text DEFAULT NULL)
RETURNS TABLE (feature_id text,
               feature_type text,
               meter_type text,
               has_access boolean,
               is_unlimited boolean,
               value integer,
               usage_limit float8,
               current_usage float8,
               enum_values text[],
               units text,
               units_plural text,
               reset_period text,
               next_reset_date timestamptz)
AS 'MODULE_PATHNAME', 'stigg_entitlements'
LANGUAGE C VOLATILE PARALLEL SAFE ROWS 10;

CREATE FUNCTION stigg_reload_entitlements(customer_id text,
                                          resource_id text DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'stigg_reload_entitlements'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
