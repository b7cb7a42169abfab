-- The queue's SQL surface, without the worker (the library is not
-- preloaded here): reports are queued with the caller's transaction, bad
-- input is refused and leaves no row behind.
\set VERBOSITY terse

-- a report returns the queued row's id; the row waits for the worker
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1) > 0 AS queued;
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', -1, 'DELTA') > 0 AS negative_delta;
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 5, 'set', 'site-01',
                          '{"plan": "pro", "seats": 3, "trial": false}', '2023-12-05 10:00+00') > 0 AS with_everything;
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 2, 'USAGE_UPDATE_BEHAVIOR_SET') > 0 AS proto_name;
SELECT customer_id, feature_id, resource_id, value, update_behavior, dimensions, usage_timestamp AT TIME ZONE 'UTC' AS ts, state, attempts
  FROM stigg.usage_queue ORDER BY id;

SELECT stigg_report_event('customer-demo-01', 'user_login', '{"user_id": "u-1"}', 'key-1') > 0 AS event_queued;
SELECT stigg_report_event('customer-demo-01', 'user_login') > 0 AS event_without_key;
SELECT event_name, idempotency_key ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' AS uuid_key,
       dimensions, state
  FROM stigg.event_queue ORDER BY id;

-- rolled back: nothing queued; a rolled-back savepoint takes its rows along
SELECT count(*) AS before FROM stigg.usage_queue \gset
BEGIN;
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 100) > 0;
ROLLBACK;
BEGIN;
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1) > 0;
SAVEPOINT s;
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 100) > 0;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT count(*) - :before AS added, sum(value) FILTER (WHERE value = 100) AS hundreds FROM stigg.usage_queue;

-- bad input: a specific SQLSTATE each, and no row behind
SELECT count(*) AS usage_rows FROM stigg.usage_queue \gset
SELECT count(*) AS event_rows FROM stigg.event_queue \gset
SELECT stigg_report_usage(NULL, 'feature-01-templates', 1);
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', NULL, 1);
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', NULL);
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 'NaN');
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', '-Infinity');
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1, 'increment');
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1, NULL);
\echo :SQLSTATE
SELECT stigg_report_usage('', 'feature-01-templates', 1);
\echo :SQLSTATE
SELECT stigg_report_usage(repeat('c', 300), 'feature-01-templates', 1);
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1, resource_id => '');
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1, dimensions => '[1, 2]');
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1, dimensions => '{"a": {"b": 1}}');
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1, dimensions => '{"a": null}');
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1, dimensions => '{"a": [1]}');
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1, dimensions => '{"": 1}');
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1, dimensions => '"scalar"');
\echo :SQLSTATE
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1, "timestamp" => 'infinity');
\echo :SQLSTATE
SELECT stigg_report_event(NULL, 'user_login');
\echo :SQLSTATE
SELECT stigg_report_event('customer-demo-01', NULL);
\echo :SQLSTATE
SELECT stigg_report_event('customer-demo-01', 'user_login', '{"n": 1e400}');
\echo :SQLSTATE
SELECT stigg_report_event('customer-demo-01', 'user_login', '{"x": [1]}');
\echo :SQLSTATE
SELECT stigg_report_event('customer-demo-01', 'user_login', idempotency_key => '');
\echo :SQLSTATE
SELECT stigg_report_event('customer-demo-01', 'user_login', idempotency_key => repeat('k', 256));
\echo :SQLSTATE
SELECT (SELECT count(*) FROM stigg.usage_queue) - :usage_rows AS usage_rows_added,
       (SELECT count(*) FROM stigg.event_queue) - :event_rows AS event_rows_added;

-- read-only transactions cannot report
BEGIN READ ONLY;
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1);
\echo :SQLSTATE
ROLLBACK;

-- without the worker: flush says what is missing; the status view says why
SELECT stigg_flush();
\echo :SQLSTATE
SELECT stigg_worker_is_running();
SELECT kind, pending, in_flight, delivered, dead_lettered, worker_pid, worker_state FROM stigg.queue_status ORDER BY kind;
SELECT stigg_requeue_dead_letters();

-- privileges: the tables are closed to PUBLIC; a role granted the function
-- reports without any right on them
CREATE ROLE stigg_reporter;
CREATE ROLE stigg_stranger;
GRANT EXECUTE ON FUNCTION stigg_report_usage(text, text, float8, text, text, jsonb, timestamptz) TO stigg_reporter;
SET ROLE stigg_reporter;
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1) > 0 AS reporter_can_report;
INSERT INTO stigg.usage_queue (customer_id, feature_id, value, update_behavior) VALUES ('x', 'y', 1, 'DELTA');
\echo :SQLSTATE
SELECT count(*) FROM stigg.usage_queue;
\echo :SQLSTATE
RESET ROLE;
SET ROLE stigg_stranger;
SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1);
\echo :SQLSTATE
DELETE FROM stigg.usage_queue;
\echo :SQLSTATE
SELECT stigg_report_event('customer-demo-01', 'user_login');
\echo :SQLSTATE
RESET ROLE;
-- the SECURITY DEFINER functions pin search_path
SELECT p.proname, p.prosecdef, p.proconfig FROM pg_proc p
 WHERE p.prosecdef ORDER BY 1;
REVOKE ALL ON FUNCTION stigg_report_usage(text, text, float8, text, text, jsonb, timestamptz) FROM stigg_reporter;
DROP ROLE stigg_reporter;
DROP ROLE stigg_stranger;
