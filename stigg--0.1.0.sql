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

-- ---- usage and events: a transactional queue, drained by the worker ----
--
-- Rows are written by stigg_report_usage and stigg_report_event only; they
-- become visible to the worker when the reporting transaction commits, and
-- vanish with it when it rolls back. Ordinary logged tables: a crash loses
-- nothing that committed.

CREATE TABLE stigg.usage_queue (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id text NOT NULL,
    feature_id text NOT NULL,
    resource_id text,
    value float8 NOT NULL,
    update_behavior text NOT NULL CHECK (update_behavior IN ('DELTA', 'SET')),
    dimensions jsonb,
    usage_timestamp timestamptz,
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'in_flight', 'delivered')),
    attempts integer NOT NULL DEFAULT 0,
    lease_until timestamptz,
    delivered_at timestamptz,
    measurement_id text,
    current_usage float8
);
CREATE INDEX usage_queue_undelivered ON stigg.usage_queue (id) WHERE state <> 'delivered';
CREATE INDEX usage_queue_delivered ON stigg.usage_queue (delivered_at) WHERE state = 'delivered';

CREATE TABLE stigg.event_queue (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id text NOT NULL,
    event_name text NOT NULL,
    idempotency_key text NOT NULL,
    resource_id text,
    dimensions jsonb NOT NULL DEFAULT '{}',
    event_timestamp timestamptz,
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'in_flight', 'delivered')),
    attempts integer NOT NULL DEFAULT 0,
    lease_until timestamptz,
    delivered_at timestamptz
);
CREATE INDEX event_queue_undelivered ON stigg.event_queue (id) WHERE state <> 'delivered';
CREATE INDEX event_queue_delivered ON stigg.event_queue (delivered_at) WHERE state = 'delivered';

-- Rows the sidecar refused for good (INVALID_ARGUMENT and the like), with
-- the reason; stigg_requeue_dead_letters sends them again.
CREATE TABLE stigg.dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('usage', 'event')),
    queue_id bigint NOT NULL,
    payload jsonb NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL,
    enqueued_at timestamptz NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- pg_dump keeps what is queued and what was refused
SELECT pg_catalog.pg_extension_config_dump('stigg.usage_queue', '');
SELECT pg_catalog.pg_extension_config_dump('stigg.event_queue', '');
SELECT pg_catalog.pg_extension_config_dump('stigg.dead_letters', '');

REVOKE ALL ON stigg.usage_queue, stigg.event_queue, stigg.dead_letters FROM PUBLIC;

-- Reporting runs as the extension's owner, so that a role allowed to call
-- these functions can queue rows without any right on the tables.
CREATE FUNCTION stigg_report_usage(customer_id text, feature_id text, value float8,
                                   update_behavior text DEFAULT 'delta',
                                   resource_id text DEFAULT NULL,
                                   dimensions jsonb DEFAULT NULL,
                                   "timestamp" timestamptz DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'stigg_report_usage'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION stigg_report_event(customer_id text, event_name text,
                                   dimensions jsonb DEFAULT '{}',
                                   idempotency_key text DEFAULT NULL,
                                   resource_id text DEFAULT NULL,
                                   "timestamp" timestamptz DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'stigg_report_event'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION stigg_flush(timeout interval DEFAULT '10 seconds')
RETURNS bigint
AS 'MODULE_PATHNAME', 'stigg_flush'
LANGUAGE C VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION stigg_restart_worker()
RETURNS boolean
AS 'MODULE_PATHNAME', 'stigg_restart_worker'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION stigg_worker_is_running()
RETURNS boolean
AS 'MODULE_PATHNAME', 'stigg_worker_is_running'
LANGUAGE C VOLATILE PARALLEL SAFE;

-- Internal: wakes the worker when the calling transaction commits.
CREATE FUNCTION stigg.wake_worker_at_commit()
RETURNS void
AS 'MODULE_PATHNAME', 'stigg_wake_worker_at_commit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION stigg.worker_info(OUT pid integer, OUT state text,
                                  OUT last_success timestamptz,
                                  OUT last_error text, OUT last_error_at timestamptz,
                                  OUT next_retry_at timestamptz,
                                  OUT delivered bigint, OUT dead_lettered bigint,
                                  OUT resent bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'stigg_worker_info'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION stigg_requeue_dead_letters(dead_letter_ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    m bigint;
BEGIN
    -- in the order they were first queued
    WITH moved AS (
        DELETE FROM stigg.dead_letters
         WHERE kind = 'usage' AND (dead_letter_ids IS NULL OR id = ANY (dead_letter_ids))
        RETURNING queue_id, payload
    ), queued AS (
        INSERT INTO stigg.usage_queue (customer_id, feature_id, resource_id, value,
                                       update_behavior, dimensions, usage_timestamp)
        SELECT r.customer_id, r.feature_id, r.resource_id, r.value,
               r.update_behavior, r.dimensions, r.usage_timestamp
          FROM moved, jsonb_populate_record(NULL::stigg.usage_queue, moved.payload) r
         ORDER BY moved.queue_id
        RETURNING 1
    )
    SELECT count(*) INTO n FROM queued;

    WITH moved AS (
        DELETE FROM stigg.dead_letters
         WHERE kind = 'event' AND (dead_letter_ids IS NULL OR id = ANY (dead_letter_ids))
        RETURNING queue_id, payload
    ), queued AS (
        INSERT INTO stigg.event_queue (customer_id, event_name, idempotency_key,
                                       resource_id, dimensions, event_timestamp)
        SELECT r.customer_id, r.event_name, r.idempotency_key,
               r.resource_id, r.dimensions, r.event_timestamp
          FROM moved, jsonb_populate_record(NULL::stigg.event_queue, moved.payload) r
         ORDER BY moved.queue_id
        RETURNING 1
    )
    SELECT count(*) INTO m FROM queued;

    PERFORM stigg.wake_worker_at_commit();
    RETURN n + m;
END
$$;

CREATE VIEW stigg.queue_status AS
SELECT q.kind, q.pending, q.in_flight, q.delivered,
       coalesce(d.dead_lettered, 0) AS dead_lettered,
       q.oldest_pending_age,
       w.pid AS worker_pid, w.state AS worker_state,
       w.last_success, w.last_error, w.last_error_at, w.next_retry_at
  FROM (SELECT 'usage'::text AS kind,
               count(*) FILTER (WHERE state = 'pending') AS pending,
               count(*) FILTER (WHERE state = 'in_flight') AS in_flight,
               count(*) FILTER (WHERE state = 'delivered') AS delivered,
               now() - min(enqueued_at) FILTER (WHERE state <> 'delivered') AS oldest_pending_age
          FROM stigg.usage_queue
        UNION ALL
        SELECT 'event',
               count(*) FILTER (WHERE state = 'pending'),
               count(*) FILTER (WHERE state = 'in_flight'),
               count(*) FILTER (WHERE state = 'delivered'),
               now() - min(enqueued_at) FILTER (WHERE state <> 'delivered')
          FROM stigg.event_queue) q
  LEFT JOIN (SELECT kind, count(*) AS dead_lettered FROM stigg.dead_letters GROUP BY kind) d
         USING (kind)
 CROSS JOIN stigg.worker_info() w;

REVOKE ALL ON FUNCTION stigg_report_usage(text, text, float8, text, text, jsonb, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION stigg_report_event(text, text, jsonb, text, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION stigg_flush(interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION stigg_restart_worker() FROM PUBLIC;
REVOKE ALL ON FUNCTION stigg_requeue_dead_letters(bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION stigg.wake_worker_at_commit() FROM PUBLIC;
GRANT SELECT ON stigg.queue_status, stigg.dead_letters TO pg_monitor;

-- a worker waiting for this extension starts at once
SELECT stigg.wake_worker_at_commit();

-- ---- gating: the entitlement cache and generic triggers ----

-- what a metered check adds on top of Stigg's usage
CREATE INDEX usage_queue_key_undelivered ON stigg.usage_queue (customer_id, feature_id)
    WHERE state <> 'delivered';

CREATE FUNCTION stigg_cache_invalidate(customer_id text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'stigg_cache_invalidate'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

-- stigg_enforce(feature_id, customer_column [, resource_column [, quantity]])
-- BEFORE INSERT OR UPDATE ... FOR EACH ROW
CREATE FUNCTION stigg_enforce()
RETURNS trigger
AS 'MODULE_PATHNAME', 'stigg_enforce'
LANGUAGE C;

-- stigg_track_usage(feature_id, customer_column [, resource_column [, quantity]])
-- AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW or FOR EACH STATEMENT with
-- transition tables
CREATE FUNCTION stigg_track_usage()
RETURNS trigger
AS 'MODULE_PATHNAME', 'stigg_track_usage'
LANGUAGE C;

-- ---- when the sidecar cannot answer ----

-- Like the SDKs' entitlementsFallback; used when stigg.on_sidecar_error = fallback.
CREATE TABLE stigg.fallback_entitlements (
    feature_id text PRIMARY KEY,
    has_access boolean NOT NULL,
    value integer,
    usage_limit float8,
    is_unlimited boolean NOT NULL DEFAULT false,
    enum_values text[]
);
SELECT pg_catalog.pg_extension_config_dump('stigg.fallback_entitlements', '');
REVOKE ALL ON stigg.fallback_entitlements FROM PUBLIC;

-- ---- statistics ----

CREATE FUNCTION stigg.stats_counters(OUT name text, OUT value bigint, OUT since timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'stigg_stats_counters'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE FUNCTION stigg.stats_latency(OUT round_trips bigint, OUT p50_ms float8,
                                    OUT p90_ms float8, OUT p99_ms float8,
                                    OUT since timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'stigg_stats_latency'
LANGUAGE C VOLATILE PARALLEL SAFE;

CREATE VIEW stigg.stats AS SELECT * FROM stigg.stats_counters();
CREATE VIEW stigg.stats_latency AS SELECT * FROM stigg.stats_latency();

CREATE FUNCTION stigg_stats_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'stigg_stats_reset'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
REVOKE ALL ON FUNCTION stigg_stats_reset() FROM PUBLIC;
GRANT SELECT ON stigg.stats, stigg.stats_latency TO pg_monitor;

-- ---- trigger arguments that survive column renames ----
--
-- When a stigg_enforce or stigg_track_usage trigger is created, its column
-- arguments are resolved to attribute numbers here (a wrong name is an error
-- right away); the trigger functions fall back to them when a column has
-- been renamed since.
CREATE TABLE stigg.trigger_columns (
    trigger_oid oid NOT NULL,
    arg integer NOT NULL,
    attnum smallint NOT NULL,
    PRIMARY KEY (trigger_oid, arg)
);
REVOKE ALL ON stigg.trigger_columns FROM PUBLIC;

CREATE FUNCTION stigg.record_trigger_columns()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cmd record;
    t record;
    args text[];
    col text;
    num smallint;
BEGIN
    FOR cmd IN SELECT objid FROM pg_event_trigger_ddl_commands() WHERE object_type = 'trigger' LOOP
        SELECT tg.tgrelid, tg.tgnargs, tg.tgargs, p.proname INTO t
          FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid
         WHERE tg.oid = cmd.objid;
        CONTINUE WHEN NOT FOUND OR t.proname NOT IN ('stigg_enforce', 'stigg_track_usage');
        DELETE FROM stigg.trigger_columns WHERE trigger_oid = cmd.objid;
        -- tgargs holds the arguments, each ended by a zero byte
        SELECT array_agg(convert_from(substring(t.tgargs FROM s + 1 FOR e - s - 1), current_setting('server_encoding')) ORDER BY n)
          INTO args
          FROM (SELECT n, lag(p, 1, 0) OVER (ORDER BY n) AS s, p AS e
                  FROM (SELECT row_number() OVER () AS n, i AS p
                          FROM generate_series(1, length(t.tgargs)) i
                         WHERE get_byte(t.tgargs, i - 1) = 0) z) y;
        FOR i IN 2 .. least(coalesce(array_length(args, 1), 0), 4) LOOP
            col := args[i];
            -- '' is "no resource"; a number is a constant quantity
            CONTINUE WHEN col = '' OR (i = 4 AND col ~ '^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$');
            SELECT attnum INTO num FROM pg_attribute
             WHERE attrelid = t.tgrelid AND attname = col AND attnum > 0 AND NOT attisdropped;
            IF NOT FOUND THEN
                RAISE EXCEPTION '%: column "%" does not exist in table %', t.proname, col, t.tgrelid::regclass
                    USING ERRCODE = 'undefined_column',
                          HINT = 'Trigger arguments after the feature name are columns of the table.';
            END IF;
            INSERT INTO stigg.trigger_columns VALUES (cmd.objid, i, num);
        END LOOP;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER stigg_record_trigger_columns ON ddl_command_end
    WHEN TAG IN ('CREATE TRIGGER')
    EXECUTE FUNCTION stigg.record_trigger_columns();

-- ---- the Stigg API (GraphQL) ----

CREATE FUNCTION stigg_api(query text, variables jsonb DEFAULT '{}')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'stigg_api'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- 'monthly' / 'annually' in any case, as the API's enum
CREATE FUNCTION stigg_billing_period(period text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF period IS NULL THEN
        RETURN NULL;
    ELSIF upper(period) IN ('MONTHLY', 'ANNUALLY') THEN
        RETURN upper(period);
    END IF;
    RAISE EXCEPTION 'invalid billing_period "%"', period
        USING ERRCODE = 'invalid_parameter_value', HINT = 'Use ''monthly'' or ''annually''.';
END
$$;

-- The two provisioning operations, their GraphQL and their variables,
-- shared by the immediate functions and the ones that run after commit.
CREATE FUNCTION stigg.provision_customer_request(customer_id text, name text, email text,
                                                 plan_id text, billing_period text, metadata jsonb,
                                                 OUT query text, OUT variables jsonb)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF customer_id IS NULL THEN
        RAISE EXCEPTION 'customer_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF plan_id IS NULL AND billing_period IS NOT NULL THEN
        RAISE EXCEPTION 'billing_period needs a plan_id' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    query := 'mutation ProvisionCustomer($input: ProvisionCustomerInput!) {
                provisionCustomer(input: $input) {
                  customer { customerId name email }
                  subscriptionDecisionStrategy
                  subscription { subscriptionId status plan { refId } }
                }
              }';
    variables := jsonb_build_object('input', jsonb_strip_nulls(jsonb_build_object(
        'customerId', customer_id, 'name', name, 'email', email,
        'additionalMetaData', metadata,
        'subscriptionParams', CASE WHEN plan_id IS NOT NULL THEN jsonb_strip_nulls(jsonb_build_object(
            'planId', plan_id,
            'billingPeriod', @extschema@.stigg_billing_period(billing_period))) END)));
END
$$;

CREATE FUNCTION stigg.provision_subscription_request(customer_id text, plan_id text, billing_period text,
                                                     unit_quantity float8, resource_id text, addons jsonb,
                                                     OUT query text, OUT variables jsonb)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF customer_id IS NULL OR plan_id IS NULL THEN
        RAISE EXCEPTION 'customer_id and plan_id must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF unit_quantity IS NOT NULL AND (unit_quantity <= 0 OR unit_quantity = 'Infinity' OR unit_quantity <> unit_quantity) THEN
        RAISE EXCEPTION 'unit_quantity must be a positive finite number' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF addons IS NOT NULL AND jsonb_typeof(addons) <> 'array' THEN
        RAISE EXCEPTION 'addons must be a JSON array of {"addonId": ..., "quantity": ...}'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    query := 'mutation ProvisionSubscription($input: ProvisionSubscriptionInput!) {
                provisionSubscription(input: $input) {
                  status checkoutUrl
                  subscription { subscriptionId status resource { resourceId } plan { refId } }
                  entitlements { feature { refId } hasAccess usageLimit }
                }
              }';
    variables := jsonb_build_object('input', jsonb_strip_nulls(jsonb_build_object(
        'customerId', customer_id, 'planId', plan_id,
        'billingPeriod', @extschema@.stigg_billing_period(billing_period),
        'unitQuantity', unit_quantity, 'resourceId', resource_id, 'addons', addons)));
END
$$;

CREATE FUNCTION stigg_provision_customer(customer_id text, name text DEFAULT NULL,
                                         email text DEFAULT NULL, plan_id text DEFAULT NULL,
                                         billing_period text DEFAULT NULL,
                                         metadata jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    r := stigg.provision_customer_request(customer_id, name, email, plan_id, billing_period, metadata);
    -- what the customer is entitled to changes: forget what is cached
    PERFORM @extschema@.stigg_cache_invalidate(customer_id);
    RETURN @extschema@.stigg_api(r.query, r.variables) -> 'provisionCustomer';
END
$$;

CREATE FUNCTION stigg_provision_subscription(customer_id text, plan_id text,
                                             billing_period text DEFAULT 'monthly',
                                             unit_quantity float8 DEFAULT NULL,
                                             resource_id text DEFAULT NULL,
                                             addons jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    r := stigg.provision_subscription_request(customer_id, plan_id, billing_period,
                                              unit_quantity, resource_id, addons);
    PERFORM @extschema@.stigg_cache_invalidate(customer_id);
    RETURN @extschema@.stigg_api(r.query, r.variables) -> 'provisionSubscription';
END
$$;

-- ---- provisioning after commit, for triggers ----
--
-- The *_after_commit functions queue the operation in the caller's
-- transaction; the worker runs it once that commits (never if it rolls
-- back) and records the outcome here.
CREATE TABLE stigg.provisioning (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    operation text NOT NULL CHECK (operation IN ('provisionCustomer', 'provisionSubscription')),
    customer_id text NOT NULL,
    query text NOT NULL,
    variables jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    result jsonb,
    error text,
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    done_at timestamptz
);
CREATE INDEX provisioning_pending ON stigg.provisioning (id) WHERE state = 'pending';
SELECT pg_catalog.pg_extension_config_dump('stigg.provisioning', '');
REVOKE ALL ON stigg.provisioning FROM PUBLIC;
GRANT SELECT ON stigg.provisioning TO pg_monitor;

CREATE FUNCTION stigg_provision_customer_after_commit(customer_id text, name text DEFAULT NULL,
                                                      email text DEFAULT NULL, plan_id text DEFAULT NULL,
                                                      billing_period text DEFAULT NULL,
                                                      metadata jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    queued bigint;
BEGIN
    r := stigg.provision_customer_request(customer_id, name, email, plan_id, billing_period, metadata);
    INSERT INTO stigg.provisioning (operation, customer_id, query, variables)
    VALUES ('provisionCustomer', customer_id, r.query, r.variables) RETURNING id INTO queued;
    PERFORM stigg.wake_worker_at_commit();
    RETURN queued;
END
$$;

CREATE FUNCTION stigg_provision_subscription_after_commit(customer_id text, plan_id text,
                                                          billing_period text DEFAULT 'monthly',
                                                          unit_quantity float8 DEFAULT NULL,
                                                          resource_id text DEFAULT NULL,
                                                          addons jsonb DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    queued bigint;
BEGIN
    r := stigg.provision_subscription_request(customer_id, plan_id, billing_period,
                                              unit_quantity, resource_id, addons);
    INSERT INTO stigg.provisioning (operation, customer_id, query, variables)
    VALUES ('provisionSubscription', customer_id, r.query, r.variables) RETURNING id INTO queued;
    PERFORM stigg.wake_worker_at_commit();
    RETURN queued;
END
$$;

-- The server key can do anything in the Stigg environment: grant with care.
REVOKE ALL ON FUNCTION stigg_api(text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION stigg_provision_customer(text, text, text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION stigg_provision_subscription(text, text, text, float8, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION stigg_provision_customer_after_commit(text, text, text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION stigg_provision_subscription_after_commit(text, text, text, float8, text, jsonb) FROM PUBLIC;
