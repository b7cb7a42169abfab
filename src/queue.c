/*-------------------------------------------------------------------------
 * queue.c
 *	  stigg_report_usage, stigg_report_event and stigg_flush: the backend's
 *	  side of the transactional queue.
 *
 * A report is an INSERT into stigg.usage_queue or stigg.event_queue in the
 * caller's transaction, so it is delivered if and only if that transaction
 * commits. At commit a transaction callback wakes the worker; COMMIT
 * PREPARED wakes it through the utility hook; a timer in the worker covers
 * everything else.
 *
 * Order. Per (customer, feature, resource) usage must reach Stigg in commit
 * order, or a SET and a DELTA could cross. Before it draws its id, a report
 * takes a transaction-scoped advisory lock on the key: shared for a DELTA,
 * exclusive for a SET. A SET therefore waits for every open transaction
 * that reported the key, and holds back every later one, so the worker,
 * sending in id order, never sends a SET before a DELTA committed ahead of
 * it or after one committed behind it. DELTAs among themselves commute.
 * The locks show in pg_locks as advisory locks with objsubid 3.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"
#include "utils/wait_event.h"

#include "args.h"
#include "cache.h"
#include "guc.h"
#include "pbjson.h"
#include "queue.h"
#include "stats.h"
#include "worker.h"

#define USAGE_KEY_LOCK_SUBID 3

PG_FUNCTION_INFO_V1(stigg_report_usage);
PG_FUNCTION_INFO_V1(stigg_report_event);
PG_FUNCTION_INFO_V1(stigg_flush);
PG_FUNCTION_INFO_V1(stigg_wake_worker_at_commit);

/* Whether this transaction queued something: wake the worker at commit. */
static bool wake_at_commit = false;

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

static SPIPlanPtr usage_insert_plan = NULL;
static SPIPlanPtr event_insert_plan = NULL;

static void
queue_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		StiggStatsFlush();
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_at_commit)
				StiggWakeWorker();
			wake_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			wake_at_commit = false;
			break;
		default:
			break;
	}
}

/* A prepared transaction's rows become visible at COMMIT PREPARED. */
static void
queue_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	if (IsA(parsetree, TransactionStmt) &&
		((TransactionStmt *) parsetree)->kind == TRANS_STMT_COMMIT_PREPARED)
		StiggWakeWorker();
}

void
StiggQueueInit(void)
{
	RegisterXactCallback(queue_xact_callback, NULL);
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = queue_ProcessUtility;
}

void
StiggLockUsageKey(const char *customer_id, const char *feature_id,
				  const char *resource_id, bool exclusive)
{
	StringInfoData key;
	uint64		h;
	LOCKTAG		tag;

	initStringInfo(&key);
	appendBinaryStringInfo(&key, customer_id, strlen(customer_id) + 1);
	appendBinaryStringInfo(&key, feature_id, strlen(feature_id) + 1);
	if (resource_id != NULL)
		appendStringInfoString(&key, resource_id);
	h = hash_bytes_extended((const unsigned char *) key.data, key.len, 0);
	pfree(key.data);

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 USAGE_KEY_LOCK_SUBID);
	(void) LockAcquire(&tag, exclusive ? ExclusiveLock : ShareLock, false, false);
}

/* Reports are writes: refuse them clearly where they cannot be written. */
static void
check_writable(const char *what)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s on a hot standby", what),
				 errhint("Report on the primary server; its queue is delivered from there.")));
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s in a read-only transaction", what)));
}

static char *
text_or_null(text *t)
{
	return t ? text_to_cstring(t) : NULL;
}

/* "delta", "set" in any case, or the proto names. Returns whether SET. */
static bool
parse_update_behavior(FunctionCallInfo fcinfo, int argno)
{
	char	   *s;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("update_behavior must not be null"),
				 errhint("Use 'delta' to add the value or 'set' to replace the current usage.")));
	s = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	if (pg_strcasecmp(s, "delta") == 0 || strcmp(s, "USAGE_UPDATE_BEHAVIOR_DELTA") == 0)
		return false;
	if (pg_strcasecmp(s, "set") == 0 || strcmp(s, "USAGE_UPDATE_BEHAVIOR_SET") == 0)
		return true;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid update_behavior \"%s\"", s),
			 errhint("Use 'delta' (or USAGE_UPDATE_BEHAVIOR_DELTA) to add the value, 'set' (or USAGE_UPDATE_BEHAVIOR_SET) to replace the current usage.")));
	return false;				/* keep compiler quiet */
}

/* An optional timestamp argument: NULL, or finite. */
static bool
timestamp_arg(FunctionCallInfo fcinfo, int argno, TimestampTz *ts)
{
	if (PG_ARGISNULL(argno))
		return false;
	*ts = PG_GETARG_TIMESTAMPTZ(argno);
	if (TIMESTAMP_NOT_FINITE(*ts))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timestamp must be finite")));
	return true;
}

/* Dimensions: NULL, or a flat object of strings, numbers and booleans. */
static Jsonb *
dimensions_arg(FunctionCallInfo fcinfo, int argno)
{
	Jsonb	   *dims;
	ProtobufCMessage **entries;
	size_t		n;

	if (PG_ARGISNULL(argno))
		return NULL;
	dims = PG_GETARG_JSONB_P(argno);
	n = StiggDimensionsToPb(dims, "dimensions",
							&stigg__sidecar__v1__event__dimensions_entry__descriptor,
							&entries);
	(void) n;
	return dims;
}

static SPIPlanPtr
prepare_insert(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "SPI_keepplan failed");
	return plan;
}

static int64
run_insert(SPIPlanPtr plan, Datum *values, const char *nulls)
{
	bool		isnull;
	int64		id;
	int			rc;

	rc = SPI_execute_plan(plan, values, nulls, false, 1);
	if (rc != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "queue insert failed: %s", SPI_result_code_string(rc));
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	return id;
}

/* ---- running as the extension's owner ---- */

static Oid	save_userid;
static int	save_sec_context;

static Oid
extension_owner(void)
{
	static Oid	cached_ext = InvalidOid;
	static Oid	cached_owner = InvalidOid;
	Oid			ext = get_extension_oid("stigg", false);

	if (ext != cached_ext)
	{
		Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tup;

		ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
					ObjectIdGetDatum(ext));
		scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
		tup = systable_getnext(scan);
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "extension stigg has no catalog entry");
		cached_owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
		cached_ext = ext;
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
	}
	return cached_owner;
}

void
StiggBeginAsOwner(void)
{
	Oid			owner = extension_owner();

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(owner, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
}

void
StiggEndAsOwner(void)
{
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

int64
StiggEnqueueUsage(text *customer, text *feature, text *resource, double value,
				  bool is_set, Jsonb *dims, bool has_ts, TimestampTz ts)
{
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int64		id;

	StiggLockUsageKey(text_to_cstring(customer), text_to_cstring(feature),
					  text_or_null(resource), is_set);

	values[0] = PointerGetDatum(customer);
	values[1] = PointerGetDatum(feature);
	values[2] = PointerGetDatum(resource);
	nulls[2] = resource ? ' ' : 'n';
	values[3] = Float8GetDatum(value);
	values[4] = CStringGetTextDatum(is_set ? "SET" : "DELTA");
	values[5] = PointerGetDatum(dims);
	nulls[5] = dims ? ' ' : 'n';
	values[6] = TimestampTzGetDatum(ts);
	nulls[6] = has_ts ? ' ' : 'n';

	StiggBeginAsOwner();
	SPI_connect();
	if (usage_insert_plan == NULL)
	{
		Oid			types[7] = {TEXTOID, TEXTOID, TEXTOID, FLOAT8OID, TEXTOID, JSONBOID, TIMESTAMPTZOID};

		usage_insert_plan = prepare_insert(
			"INSERT INTO stigg.usage_queue (customer_id, feature_id, resource_id, value,"
			" update_behavior, dimensions, usage_timestamp)"
			" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id", 7, types);
	}
	id = run_insert(usage_insert_plan, values, nulls);
	SPI_finish();
	StiggEndAsOwner();

	/* checks in this statement must see this row */
	StiggMemoReset();
	wake_at_commit = true;
	return id;
}

Datum
stigg_report_usage(PG_FUNCTION_ARGS)
{
	text	   *customer;
	text	   *feature;
	text	   *resource;
	double		value;
	bool		is_set;
	Jsonb	   *dims;
	TimestampTz ts = 0;
	bool		has_ts;

	StiggStatCount(STIGG_STAT_REPORT_USAGE);
	check_writable("report usage");
	customer = StiggIdArg(fcinfo, 0, "customer_id", true);
	feature = StiggIdArg(fcinfo, 1, "feature_id", true);
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("value must not be null")));
	value = PG_GETARG_FLOAT8(2);
	if (isnan(value) || isinf(value))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("value must be a finite number"),
				 errdetail("The value given is %s.", isnan(value) ? "NaN" : "infinite")));
	is_set = parse_update_behavior(fcinfo, 3);
	resource = StiggIdArg(fcinfo, 4, "resource_id", false);
	dims = dimensions_arg(fcinfo, 5);
	has_ts = timestamp_arg(fcinfo, 6, &ts);

	PG_RETURN_INT64(StiggEnqueueUsage(customer, feature, resource, value, is_set,
									  dims, has_ts, ts));
}

/* A random (version 4) UUID, so that every retry sends the same key. */
static text *
new_idempotency_key(void)
{
	pg_uuid_t	uuid;

	if (!pg_strong_random(uuid.data, UUID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random idempotency key")));
	uuid.data[6] = (uuid.data[6] & 0x0f) | 0x40;
	uuid.data[8] = (uuid.data[8] & 0x3f) | 0x80;
	return cstring_to_text(DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&uuid))));
}

Datum
stigg_report_event(PG_FUNCTION_ARGS)
{
	text	   *customer;
	text	   *event_name;
	text	   *key;
	text	   *resource;
	Jsonb	   *dims;
	TimestampTz ts = 0;
	bool		has_ts;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	int64		id;

	StiggStatCount(STIGG_STAT_REPORT_EVENT);
	check_writable("report events");
	customer = StiggIdArg(fcinfo, 0, "customer_id", true);
	event_name = StiggIdArg(fcinfo, 1, "event_name", true);
	dims = dimensions_arg(fcinfo, 2);
	key = StiggIdArg(fcinfo, 3, "idempotency_key", false);
	resource = StiggIdArg(fcinfo, 4, "resource_id", false);
	has_ts = timestamp_arg(fcinfo, 5, &ts);
	if (key == NULL)
		key = new_idempotency_key();

	values[0] = PointerGetDatum(customer);
	values[1] = PointerGetDatum(event_name);
	values[2] = PointerGetDatum(key);
	values[3] = PointerGetDatum(resource);
	nulls[3] = resource ? ' ' : 'n';
	values[4] = dims ? PointerGetDatum(dims) : DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
	values[5] = TimestampTzGetDatum(ts);
	nulls[5] = has_ts ? ' ' : 'n';

	SPI_connect();
	if (event_insert_plan == NULL)
	{
		Oid			types[6] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, TIMESTAMPTZOID};

		event_insert_plan = prepare_insert(
			"INSERT INTO stigg.event_queue (customer_id, event_name, idempotency_key,"
			" resource_id, dimensions, event_timestamp)"
			" VALUES ($1, $2, $3, $4, $5, $6) RETURNING id", 6, types);
	}
	id = run_insert(event_insert_plan, values, nulls);
	SPI_finish();

	wake_at_commit = true;
	PG_RETURN_INT64(id);
}

Datum
stigg_wake_worker_at_commit(PG_FUNCTION_ARGS)
{
	wake_at_commit = true;
	PG_RETURN_VOID();
}

/* ---- stigg_flush ---- */

static int64
spi_int8(const char *sql, int nargs, Oid *types, Datum *args)
{
	bool		isnull;
	Datum		d;
	/* not read-only: in READ COMMITTED each check takes a new snapshot */
	int			rc = SPI_execute_with_args(sql, nargs, types, args, NULL, false, 1);

	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "query failed: %s", sql);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? 0 : DatumGetInt64(d);
}

static int64
interval_to_ms(Interval *span)
{
	int64		usecs = span->time +
		(int64) span->day * USECS_PER_DAY +
		(int64) span->month * DAYS_PER_MONTH * USECS_PER_DAY;

	return usecs / 1000;
}

/*
 * Waits until every row committed before the call has been delivered or
 * dead-lettered. Each check runs with a new snapshot (READ COMMITTED), so it
 * sees the worker's progress.
 */
Datum
stigg_flush(PG_FUNCTION_ARGS)
{
	int64		timeout_ms;
	int64		max_usage;
	int64		max_event;
	int64		pending_at_start;
	int64		remaining;
	int64		dead;
	TimestampTz start;
	Oid			types[3] = {INT8OID, INT8OID, TIMESTAMPTZOID};
	Datum		args[3];
	char	   *dbname;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timeout must not be null")));
	timeout_ms = interval_to_ms(PG_GETARG_INTERVAL_P(0));
	if (timeout_ms <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must be positive")));
	if (!StiggWorkerShmemReady())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stigg_flush needs the stigg background worker"),
				 errhint("Add stigg to shared_preload_libraries and restart the server.")));
	dbname = get_database_name(MyDatabaseId);
	if (strcmp(dbname, stigg_database) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the stigg worker delivers database \"%s\", not \"%s\"",
						stigg_database, dbname),
				 errhint("Set stigg.database and restart the server.")));
	if (wake_at_commit)
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("stigg_flush cannot wait for rows this transaction has queued"),
				 errhint("Commit first, then call stigg_flush.")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("stigg_flush needs READ COMMITTED"),
				 errdetail("In a snapshot isolation level it could never see the worker's progress.")));

	SPI_connect();
	max_usage = spi_int8("SELECT max(id) FROM stigg.usage_queue", 0, NULL, NULL);
	max_event = spi_int8("SELECT max(id) FROM stigg.event_queue", 0, NULL, NULL);
	args[0] = Int64GetDatum(max_usage);
	args[1] = Int64GetDatum(max_event);
#define REMAINING_SQL \
	"SELECT (SELECT count(*) FROM stigg.usage_queue WHERE state <> 'delivered' AND id <= $1)" \
	"     + (SELECT count(*) FROM stigg.event_queue WHERE state <> 'delivered' AND id <= $2)"
	pending_at_start = spi_int8(REMAINING_SQL, 2, types, args);
	start = GetCurrentTimestamp();
	StiggWakeWorker();

	remaining = pending_at_start;
	while (remaining > 0)
	{
		if (TimestampDifferenceExceeds(start, GetCurrentTimestamp(), (int) Min(timeout_ms, INT_MAX)))
		{
			char	   *last_error = StiggWorkerLastError();

			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("stigg_flush timed out with " INT64_FORMAT " of " INT64_FORMAT " rows not delivered",
							remaining, pending_at_start),
					 last_error[0] ? errdetail("The worker's last error: %s", last_error) :
					 StiggWorkerPid() == 0 ? errdetail("The stigg worker is not running.") : 0,
					 errhint("See SELECT * FROM stigg.queue_status.")));
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		remaining = spi_int8(REMAINING_SQL, 2, types, args);
	}

	args[2] = TimestampTzGetDatum(start);
	dead = spi_int8("SELECT count(*) FROM stigg.dead_letters"
					" WHERE failed_at >= $3 AND ((kind = 'usage' AND queue_id <= $1)"
					"                         OR (kind = 'event' AND queue_id <= $2))",
					3, types, args);
	SPI_finish();
	PG_RETURN_INT64(pending_at_start - dead);
}
