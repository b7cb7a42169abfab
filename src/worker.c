/*-------------------------------------------------------------------------
 * worker.c
 *	  The background worker that delivers queued usage and events to the
 *	  Stigg sidecar.
 *
 * Delivery of one batch, usage or events alike:
 *	1. claim: in one transaction, up to stigg.batch_size pending rows, lowest
 *	   id first, become in_flight (FOR UPDATE SKIP LOCKED); commit;
 *	2. send: ReportUsageBulk or ReportEvents, with no transaction open;
 *	3. settle: in one transaction, delivered rows get the sidecar's
 *	   acknowledgement (usage: measurement id and current usage); on a
 *	   retryable failure they go back to pending and the worker backs off
 *	   (exponentially, with jitter, up to stigg.retry_max_delay), always
 *	   resuming from the lowest id, so order is kept; on a permanent failure
 *	   the batch is sent again row by row, and the rows the sidecar refuses
 *	   move to stigg.dead_letters with the reason.
 *
 * One worker runs at a time: it holds a session advisory lock. So at start
 * it may turn rows left in_flight by a crash back into pending; they are
 * sent again. That is the at-least-once window: the sidecar applied a batch
 * but the worker died before step 3 committed (ReportUsageRequest has no
 * idempotency key; events carry one, so Stigg drops their repeats). A
 * timeout or broken connection during step 2 leaves the same doubt. Such
 * rows are counted as "resent" in stigg.queue_status.
 *
 * SIGTERM lets a send in progress finish (at most stigg.timeout) and settle
 * before the worker exits, to keep that window closed on a clean shutdown.
 *
 * Locking protocol of StiggWorkerShared: one spinlock guards every field;
 * it is held only to copy fields in or out, never across a call.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"
#if PG_VERSION_NUM >= 150000
#include "common/pg_prng.h"
#endif

#include "access/xlog.h"
#include "api.h"
#include "args.h"
#include "cache.h"
#include "guc.h"
#include "pbjson.h"
#include "sidecar.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(stigg_worker_info);
PG_FUNCTION_INFO_V1(stigg_restart_worker);
PG_FUNCTION_INFO_V1(stigg_worker_is_running);

#define WORKER_LOCK_SUBID 4
#define PURGE_BATCH 10000
#define MIN_BACKOFF_MS 100

typedef struct StiggWorkerShared
{
	slock_t		mutex;
	pid_t		pid;			/* 0 when not running */
	Latch	   *latch;
	char		state[64];
	TimestampTz last_success;
	TimestampTz last_error_at;
	TimestampTz next_retry_at;
	char		last_error[512];
	uint64		delivered;
	uint64		dead_lettered;
	uint64		resent;
} StiggWorkerShared;

typedef enum RunOutcome
{
	RUN_DONE,					/* the queue is empty */
	RUN_BACKOFF,				/* the sidecar failed: wait, then resume */
	RUN_NOT_READY				/* no extension yet, or another worker runs */
} RunOutcome;

static StiggWorkerShared *shared = NULL;
#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/* worker-local state */
static volatile sig_atomic_t got_sigterm = false;
static volatile sig_atomic_t in_send = false;
static bool ready = false;
static int	backoff_ms = 0;
static MemoryContext batch_ctx = NULL;
static uint32 wait_event_main = PG_WAIT_EXTENSION;

/* ---- shared memory ---- */

static Size
shared_size(void)
{
	return MAXALIGN(sizeof(StiggWorkerShared));
}

#if PG_VERSION_NUM >= 150000
static void
worker_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(shared_size());
}
#endif

static void
worker_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared = ShmemInitStruct("stigg worker", shared_size(), &found);
	if (!found)
	{
		memset(shared, 0, sizeof(*shared));
		SpinLockInit(&shared->mutex);
		strlcpy(shared->state, "not started", sizeof(shared->state));
	}
	LWLockRelease(AddinShmemInitLock);
}

void
StiggWorkerInit(void)
{
	BackgroundWorker worker;

#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = worker_shmem_request;
#else
	RequestAddinShmemSpace(shared_size());
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = worker_shmem_startup;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "stigg", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "StiggWorkerMain", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "stigg usage worker", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "stigg usage worker", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

bool
StiggWorkerShmemReady(void)
{
	return shared != NULL;
}

void
StiggWakeWorker(void)
{
	Latch	   *latch;

	if (shared == NULL)
		return;
	SpinLockAcquire(&shared->mutex);
	latch = shared->pid != 0 ? shared->latch : NULL;
	SpinLockRelease(&shared->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

int
StiggWorkerPid(void)
{
	int			pid;

	if (shared == NULL)
		return 0;
	SpinLockAcquire(&shared->mutex);
	pid = shared->pid;
	SpinLockRelease(&shared->mutex);
	return pid;
}

char *
StiggWorkerLastError(void)
{
	char		buf[sizeof(shared->last_error)];

	if (shared == NULL)
		return pstrdup("");
	SpinLockAcquire(&shared->mutex);
	memcpy(buf, shared->last_error, sizeof(buf));
	SpinLockRelease(&shared->mutex);
	return pstrdup(buf);
}

static void
set_state(const char *state)
{
	SpinLockAcquire(&shared->mutex);
	strlcpy(shared->state, state, sizeof(shared->state));
	SpinLockRelease(&shared->mutex);
}

static void
record_error(const char *message)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&shared->mutex);
	strlcpy(shared->last_error, message, sizeof(shared->last_error));
	shared->last_error_at = now;
	SpinLockRelease(&shared->mutex);
}

static void
count_success(uint64 delivered)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&shared->mutex);
	shared->delivered += delivered;
	shared->last_success = now;
	SpinLockRelease(&shared->mutex);
}

/* ---- transactions ---- */

/*
 * Committing leaves CurrentMemoryContext at TopMemoryContext; end_tx puts
 * back the caller's (a batch's) context, or everything allocated after a
 * commit would outlive the batch.
 */
static MemoryContext tx_caller_ctx = NULL;

static void
begin_tx(const char *activity)
{
	tx_caller_ctx = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
end_tx(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(tx_caller_ctx);
}

static Datum
int8_array(int64 *ids, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(ids[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static void
exec_or_fail(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc != expected)
		elog(ERROR, "stigg worker query failed (%s): %s", SPI_result_code_string(rc), sql);
}

/*
 * Waits for CREATE EXTENSION in stigg.database, takes the singleton lock,
 * and puts rows a crashed predecessor left in flight back in line.
 */
static bool
prepare_queue(void)
{
	LOCKTAG		tag;
	bool		exists;
	uint64		reset = 0;

	begin_tx("waiting for CREATE EXTENSION stigg");
	exists = SPI_execute("SELECT 1 FROM pg_extension WHERE extname = 'stigg'", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1;
	if (exists)
	{
		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0x53544947, 0x47574B52, WORKER_LOCK_SUBID);
		if (LockAcquire(&tag, ExclusiveLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		{
			end_tx();
			set_state("waiting for another stigg worker to exit");
			return false;
		}
		exec_or_fail("UPDATE stigg.usage_queue SET state = 'pending', lease_until = NULL"
					 " WHERE state = 'in_flight'", 0, NULL, NULL, NULL, SPI_OK_UPDATE);
		reset += SPI_processed;
		exec_or_fail("UPDATE stigg.event_queue SET state = 'pending', lease_until = NULL"
					 " WHERE state = 'in_flight'", 0, NULL, NULL, NULL, SPI_OK_UPDATE);
		reset += SPI_processed;
	}
	end_tx();
	if (!exists)
	{
		set_state("waiting for CREATE EXTENSION stigg");
		return false;
	}
	if (reset > 0)
	{
		ereport(LOG,
				(errmsg("stigg worker: " UINT64_FORMAT " rows were in flight when the previous worker stopped; sending them again", reset),
				 errdetail("Usage has no idempotency key: if the sidecar had applied them, they count twice.")));
		SpinLockAcquire(&shared->mutex);
		shared->resent += reset;
		SpinLockRelease(&shared->mutex);
	}
	return true;
}

/* ---- a queued row and its message ---- */

typedef struct QueuedRow
{
	int64		id;
	int			attempts;
	ProtobufCMessage *msg;		/* ReportUsageRequest or Event */
} QueuedRow;

static char *
col_utf8(HeapTuple tup, TupleDesc desc, int col)
{
	char	   *s = SPI_getvalue(tup, desc, col);

	return s ? StiggCStringToUtf8(s) : NULL;
}

static bool
col_timestamp(HeapTuple tup, TupleDesc desc, int col, Google__Protobuf__Timestamp **ts)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	if (isnull)
		return false;
	*ts = StiggTimestampToPb(DatumGetTimestampTz(d));
	return true;
}

static Jsonb *
col_jsonb(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : DatumGetJsonbPCopy(d);
}

/* Builds the messages of claimed rows, in batch_ctx. */
static QueuedRow *
rows_from_spi(bool usage, int *n)
{
	MemoryContext old = MemoryContextSwitchTo(batch_ctx);
	TupleDesc	desc = SPI_tuptable->tupdesc;
	QueuedRow  *rows = palloc(sizeof(QueuedRow) * Max(SPI_processed, 1));

	*n = (int) SPI_processed;
	for (int i = 0; i < *n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		char	   *resource;

		rows[i].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		rows[i].attempts = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		if (usage)
		{
			Stigg__Sidecar__V1__ReportUsageRequest *u = palloc(sizeof(*u));
			char	   *behavior = SPI_getvalue(tup, desc, 7);
			Google__Protobuf__Timestamp *ts;

			stigg__sidecar__v1__report_usage_request__init(u);
			u->customer_id = col_utf8(tup, desc, 3);
			u->feature_id = col_utf8(tup, desc, 4);
			resource = col_utf8(tup, desc, 5);
			if (resource)
				PB_SET(u, resource_id, resource);
			u->value = DatumGetFloat8(SPI_getbinval(tup, desc, 6, &isnull));
			PB_SET(u, update_behavior, strcmp(behavior, "SET") == 0 ?
				   STIGG__SIDECAR__V1__USAGE_UPDATE_BEHAVIOR__USAGE_UPDATE_BEHAVIOR_SET :
				   STIGG__SIDECAR__V1__USAGE_UPDATE_BEHAVIOR__USAGE_UPDATE_BEHAVIOR_DELTA);
			u->n_dimensions = StiggDimensionsToPb(col_jsonb(tup, desc, 8), "dimensions",
												  &stigg__sidecar__v1__report_usage_request__dimensions_entry__descriptor,
												  (ProtobufCMessage ***) &u->dimensions);
			if (col_timestamp(tup, desc, 9, &ts))
				PB_SET(u, timestamp, ts);
			rows[i].msg = &u->base;
		}
		else
		{
			Stigg__Sidecar__V1__Event *e = palloc(sizeof(*e));
			Google__Protobuf__Timestamp *ts;

			stigg__sidecar__v1__event__init(e);
			e->customer_id = col_utf8(tup, desc, 3);
			e->event_name = col_utf8(tup, desc, 4);
			e->idempotency_key = col_utf8(tup, desc, 5);
			resource = col_utf8(tup, desc, 6);
			if (resource)
				PB_SET(e, resource_id, resource);
			e->n_dimensions = StiggDimensionsToPb(col_jsonb(tup, desc, 7), "dimensions",
												  &stigg__sidecar__v1__event__dimensions_entry__descriptor,
												  (ProtobufCMessage ***) &e->dimensions);
			if (col_timestamp(tup, desc, 8, &ts))
				PB_SET(e, timestamp, ts);
			rows[i].msg = &e->base;
		}
	}
	MemoryContextSwitchTo(old);
	return rows;
}

static const char *const claim_usage_sql =
"WITH claimed AS ("
"  UPDATE stigg.usage_queue SET state = 'in_flight', attempts = attempts + 1,"
"         lease_until = clock_timestamp() + make_interval(secs => $2)"
"   WHERE id IN (SELECT id FROM stigg.usage_queue"
"                 WHERE state <> 'delivered' AND state = 'pending'"
"                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
"  RETURNING id, attempts, customer_id, feature_id, resource_id, value,"
"            update_behavior, dimensions, usage_timestamp)"
"SELECT * FROM claimed ORDER BY id";

static const char *const claim_event_sql =
"WITH claimed AS ("
"  UPDATE stigg.event_queue SET state = 'in_flight', attempts = attempts + 1,"
"         lease_until = clock_timestamp() + make_interval(secs => $2)"
"   WHERE id IN (SELECT id FROM stigg.event_queue"
"                 WHERE state <> 'delivered' AND state = 'pending'"
"                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
"  RETURNING id, attempts, customer_id, event_name, idempotency_key,"
"            resource_id, dimensions, event_timestamp)"
"SELECT * FROM claimed ORDER BY id";

static QueuedRow *
claim(bool usage, int *n)
{
	Oid			types[2] = {INT4OID, FLOAT8OID};
	Datum		values[2];
	QueuedRow  *rows;

	values[0] = Int32GetDatum(stigg_batch_size);
	values[1] = Float8GetDatum(2.0 * stigg_timeout_ms / 1000.0 + 60);
	begin_tx(usage ? "claiming usage" : "claiming events");
	exec_or_fail(usage ? claim_usage_sql : claim_event_sql, 2, types, values, NULL, SPI_OK_SELECT);
	rows = rows_from_spi(usage, n);
	end_tx();
	return rows;
}

static void
release(bool usage, QueuedRow *rows, int from, int n)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];
	int64	   *ids = palloc(sizeof(int64) * Max(n - from, 1));

	for (int i = from; i < n; i++)
		ids[i - from] = rows[i].id;
	values[0] = int8_array(ids, n - from);
	begin_tx("releasing rows after a failed send");
	exec_or_fail(usage ?
				 "UPDATE stigg.usage_queue SET state = 'pending', lease_until = NULL WHERE id = ANY ($1)" :
				 "UPDATE stigg.event_queue SET state = 'pending', lease_until = NULL WHERE id = ANY ($1)",
				 1, types, values, NULL, SPI_OK_UPDATE);
	end_tx();
}

/* Marks rows delivered; for usage, with the sidecar's acknowledgement. */
static void
settle(bool usage, QueuedRow *rows, int n,
	   Stigg__Sidecar__V1__ReportUsageResponse **acks, size_t n_acks)
{
	int64	   *ids = palloc(sizeof(int64) * Max(n, 1));
	TimestampTz delivered_at = GetCurrentTimestamp();

	for (int i = 0; i < n; i++)
		ids[i] = rows[i].id;
	begin_tx(usage ? "settling delivered usage" : "settling delivered events");
	if (usage)
	{
		Oid			types[4] = {INT8ARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID, TIMESTAMPTZOID};
		Datum		values[4];
		Datum	   *mids = palloc(sizeof(Datum) * Max(n, 1));
		Datum	   *usages = palloc(sizeof(Datum) * Max(n, 1));
		bool	   *mid_nulls = palloc0(sizeof(bool) * Max(n, 1));
		bool	   *usage_nulls = palloc0(sizeof(bool) * Max(n, 1));
		int			dims[1] = {n};
		int			lbs[1] = {1};

		for (int i = 0; i < n; i++)
		{
			const Stigg__Sidecar__V1__ReportUsageResponse *a = (size_t) i < n_acks ? acks[i] : NULL;

			mid_nulls[i] = a == NULL || a->measurement_id[0] == '\0';
			mids[i] = mid_nulls[i] ? (Datum) 0 : CStringGetTextDatum(a->measurement_id);
			usage_nulls[i] = a == NULL || !PB_HAS(a, current_usage);
			usages[i] = usage_nulls[i] ? (Datum) 0 : Float8GetDatum(a->current_usage);
		}
		/*
		 * The acknowledged usage includes these rows: it is as of their
		 * delivered_at (see access.c).
		 */
		for (int i = 0; i < n && (size_t) i < n_acks; i++)
		{
			Stigg__Sidecar__V1__ReportUsageRequest *u =
				(Stigg__Sidecar__V1__ReportUsageRequest *) rows[i].msg;
			char		key[STIGG_CACHE_KEY_LEN];

			if (acks[i] == NULL || !PB_HAS(acks[i], current_usage))
				continue;
			StiggMakeCacheKey(key, u->customer_id, PB_HAS(u, resource_id) ? u->resource_id : NULL,
							  u->feature_id);
			StiggCacheSetUsage(key, acks[i]->current_usage, delivered_at);
		}
		values[0] = int8_array(ids, n);
		values[1] = PointerGetDatum(construct_md_array(mids, mid_nulls, 1, dims, lbs,
													   TEXTOID, -1, false, TYPALIGN_INT));
		values[2] = PointerGetDatum(construct_md_array(usages, usage_nulls, 1, dims, lbs,
													   FLOAT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		values[3] = TimestampTzGetDatum(delivered_at);
		exec_or_fail("UPDATE stigg.usage_queue q SET state = 'delivered', delivered_at = $4,"
					 " lease_until = NULL, measurement_id = a.measurement_id, current_usage = a.current_usage"
					 " FROM unnest($1, $2, $3) AS a(id, measurement_id, current_usage)"
					 " WHERE q.id = a.id", 4, types, values, NULL, SPI_OK_UPDATE);
	}
	else
	{
		Oid			types[1] = {INT8ARRAYOID};
		Datum		values[1];

		values[0] = int8_array(ids, n);
		exec_or_fail("UPDATE stigg.event_queue SET state = 'delivered', delivered_at = clock_timestamp(),"
					 " lease_until = NULL WHERE id = ANY ($1)", 1, types, values, NULL, SPI_OK_UPDATE);
	}
	end_tx();
	count_success(n);
}

static void
dead_letter(bool usage, QueuedRow *row, const char *error)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		values[2];

	values[0] = Int64GetDatum(row->id);
	values[1] = CStringGetTextDatum(error);
	begin_tx("dead-lettering a refused row");
	exec_or_fail(usage ?
				 "WITH moved AS (DELETE FROM stigg.usage_queue WHERE id = $1 RETURNING *)"
				 " INSERT INTO stigg.dead_letters (kind, queue_id, payload, error, attempts, enqueued_at)"
				 " SELECT 'usage', id, to_jsonb(moved), $2, attempts, enqueued_at FROM moved" :
				 "WITH moved AS (DELETE FROM stigg.event_queue WHERE id = $1 RETURNING *)"
				 " INSERT INTO stigg.dead_letters (kind, queue_id, payload, error, attempts, enqueued_at)"
				 " SELECT 'event', id, to_jsonb(moved), $2, attempts, enqueued_at FROM moved",
				 2, types, values, NULL, SPI_OK_INSERT);
	end_tx();
	ereport(WARNING,
			(errmsg("stigg worker: the sidecar refused %s row %lld; it is in stigg.dead_letters",
					usage ? "usage" : "event", (long long) row->id),
			 errdetail("%s", error)));
	SpinLockAcquire(&shared->mutex);
	shared->dead_lettered++;
	SpinLockRelease(&shared->mutex);
}

/* ---- delivery through the Stigg API, exactly once ---- */

/*
 * A row's idempotency key: the same on every retry and after any crash, and
 * different in every cluster and database.
 */
static void
append_usage_key(StringInfo buf, int64 id)
{
	char		key[96];

	snprintf(key, sizeof(key), "pg:" UINT64_FORMAT ":%u:" INT64_FORMAT,
			 GetSystemIdentifier(), MyDatabaseId, id);
	escape_json(buf, key);
}

static void
append_dimensions(StringInfo buf, size_t n, ProtobufCMessage **entries)
{
	appendStringInfoChar(buf, '{');
	for (size_t i = 0; i < n; i++)
	{
		/* both DimensionsEntry messages: base, key, value */
		struct
		{
			ProtobufCMessage base;
			char	   *key;
			Stigg__Sidecar__V1__EventDimensionValue *value;
		}		   *e = (void *) entries[i];

		if (i > 0)
			appendStringInfoString(buf, ", ");
		escape_json(buf, e->key);
		appendStringInfoString(buf, ": ");
		if (e->value->value_case == STIGG__SIDECAR__V1__EVENT_DIMENSION_VALUE__VALUE_STRING_VALUE)
			escape_json(buf, e->value->string_value);
		else if (e->value->value_case == STIGG__SIDECAR__V1__EVENT_DIMENSION_VALUE__VALUE_NUMBER_VALUE)
			appendStringInfo(buf, "%.17g", e->value->number_value);
		else
			appendStringInfoString(buf, e->value->boolean_value ? "true" : "false");
	}
	appendStringInfoChar(buf, '}');
}

/* RFC 3339 in UTC, as the API's DateTime */
static void
append_time(StringInfo buf, const Google__Protobuf__Timestamp *ts)
{
	time_t		secs = (time_t) ts->seconds;
	struct tm	tm;
	char		text[64];

	gmtime_r(&secs, &tm);
	strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm);
	appendStringInfo(buf, "%s.%06dZ", text, ts->nanos / 1000);
}

/* ReportUsageBulkResponse from reportUsageBulk's answer (id, currentUsage). */
static ProtobufCMessage *
usage_response_from(Jsonb *data, StiggCallResult *res)
{
	Stigg__Sidecar__V1__ReportUsageBulkResponse *resp = palloc(sizeof(*resp));
	JsonbValue	k;
	JsonbValue *list;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	size_t		cap = 16;

	stigg__sidecar__v1__report_usage_bulk_response__init(resp);
	resp->usages = palloc(sizeof(void *) * cap);
	k.type = jbvString;
	k.val.string.val = "reportUsageBulk";
	k.val.string.len = strlen(k.val.string.val);
	list = findJsonbValueFromContainer(&data->root, JB_FOBJECT, &k);
	if (list == NULL || list->type != jbvBinary)
	{
		res->status = STIGG_CALL_PROTOCOL;
		strlcpy(res->message, "reportUsageBulk answered no list", sizeof(res->message));
		return NULL;
	}
	it = JsonbIteratorInit(list->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		Stigg__Sidecar__V1__ReportUsageResponse *u;
		JsonbValue *f;

		if (tok != WJB_ELEM || v.type != jbvBinary)
			continue;
		u = palloc(sizeof(*u));
		stigg__sidecar__v1__report_usage_response__init(u);
		k.val.string.val = "id";
		k.val.string.len = 2;
		f = findJsonbValueFromContainer(v.val.binary.data, JB_FOBJECT, &k);
		u->measurement_id = (f && f->type == jbvString) ? pnstrdup(f->val.string.val, f->val.string.len) : "";
		k.val.string.val = "currentUsage";
		k.val.string.len = 12;
		f = findJsonbValueFromContainer(v.val.binary.data, JB_FOBJECT, &k);
		if (f && f->type == jbvNumeric)
			PB_SET(u, current_usage, DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
																	   NumericGetDatum(f->val.numeric))));
		if (resp->n_usages == cap)
		{
			cap *= 2;
			resp->usages = repalloc(resp->usages, sizeof(void *) * cap);
		}
		resp->usages[resp->n_usages++] = u;
	}
	return &resp->base;
}

static ProtobufCMessage *
send_rows_api(bool usage, QueuedRow *rows, int from, int n, StiggCallResult *res)
{
	StringInfoData vars;
	Jsonb	   *data;

	initStringInfo(&vars);
	if (usage)
	{
		appendStringInfoString(&vars, "{\"input\": {\"usages\": [");
		for (int i = 0; i < n; i++)
		{
			Stigg__Sidecar__V1__ReportUsageRequest *u =
				(Stigg__Sidecar__V1__ReportUsageRequest *) rows[from + i].msg;

			appendStringInfoString(&vars, i > 0 ? ", {\"customerId\": " : "{\"customerId\": ");
			escape_json(&vars, u->customer_id);
			appendStringInfoString(&vars, ", \"featureId\": ");
			escape_json(&vars, u->feature_id);
			appendStringInfo(&vars, ", \"value\": %.17g, \"updateBehavior\": \"%s\", \"idempotencyKey\": ",
							 u->value,
							 u->update_behavior == STIGG__SIDECAR__V1__USAGE_UPDATE_BEHAVIOR__USAGE_UPDATE_BEHAVIOR_SET ? "SET" : "DELTA");
			append_usage_key(&vars, rows[from + i].id);
			if (PB_HAS(u, resource_id))
			{
				appendStringInfoString(&vars, ", \"resourceId\": ");
				escape_json(&vars, u->resource_id);
			}
			if (u->n_dimensions > 0)
			{
				appendStringInfoString(&vars, ", \"dimensions\": ");
				append_dimensions(&vars, u->n_dimensions, (ProtobufCMessage **) u->dimensions);
			}
			if (PB_HAS(u, timestamp))
			{
				appendStringInfoString(&vars, ", \"createdAt\": \"");
				append_time(&vars, u->timestamp);
				appendStringInfoChar(&vars, '"');
			}
			appendStringInfoChar(&vars, '}');
		}
		appendStringInfoString(&vars, "]}}");
		data = StiggApiTry("mutation ReportUsageBulk($input: ReportUsageBulkInput!) {"
						   " reportUsageBulk(input: $input) { id featureId customerId currentUsage } }",
						   vars.data, res);
		return data ? usage_response_from(data, res) : NULL;
	}

	appendStringInfoString(&vars, "{\"events\": {\"usageEvents\": [");
	for (int i = 0; i < n; i++)
	{
		Stigg__Sidecar__V1__Event *e = (Stigg__Sidecar__V1__Event *) rows[from + i].msg;

		appendStringInfoString(&vars, i > 0 ? ", {\"customerId\": " : "{\"customerId\": ");
		escape_json(&vars, e->customer_id);
		appendStringInfoString(&vars, ", \"eventName\": ");
		escape_json(&vars, e->event_name);
		appendStringInfoString(&vars, ", \"idempotencyKey\": ");
		escape_json(&vars, e->idempotency_key);
		appendStringInfoString(&vars, ", \"dimensions\": ");
		append_dimensions(&vars, e->n_dimensions, (ProtobufCMessage **) e->dimensions);
		if (PB_HAS(e, resource_id))
		{
			appendStringInfoString(&vars, ", \"resourceId\": ");
			escape_json(&vars, e->resource_id);
		}
		if (PB_HAS(e, timestamp))
		{
			appendStringInfoString(&vars, ", \"timestamp\": \"");
			append_time(&vars, e->timestamp);
			appendStringInfoChar(&vars, '"');
		}
		appendStringInfoChar(&vars, '}');
	}
	appendStringInfoString(&vars, "]}}");
	data = StiggApiTry("mutation ReportEvent($events: UsageEventsReportInput!) { reportEvent(events: $events) }",
					   vars.data, res);
	if (data == NULL)
		return NULL;
	return (ProtobufCMessage *) palloc(sizeof(Google__Protobuf__Empty));
}

/* Sends rows[from .. from+n); returns the response or NULL (res filled). */
static ProtobufCMessage *
send_rows(bool usage, QueuedRow *rows, int from, int n, StiggCallResult *res)
{
	ProtobufCMessage *resp;

	in_send = true;
	if (stigg_usage_delivery == STIGG_DELIVERY_API)
	{
		resp = send_rows_api(usage, rows, from, n, res);
		in_send = false;
		return resp;
	}
	if (usage)
	{
		Stigg__Sidecar__V1__ReportUsageBulkRequest req = STIGG__SIDECAR__V1__REPORT_USAGE_BULK_REQUEST__INIT;

		req.n_usages = n;
		req.usages = palloc(sizeof(void *) * Max(n, 1));
		for (int i = 0; i < n; i++)
			req.usages[i] = (Stigg__Sidecar__V1__ReportUsageRequest *) rows[from + i].msg;
		resp = StiggSidecarInvoke("ReportUsageBulk", &req.base,
								  &stigg__sidecar__v1__report_usage_bulk_response__descriptor,
								  false, res);
	}
	else
	{
		Stigg__Sidecar__V1__ReportEventsRequest req = STIGG__SIDECAR__V1__REPORT_EVENTS_REQUEST__INIT;

		req.n_events = n;
		req.events = palloc(sizeof(void *) * Max(n, 1));
		for (int i = 0; i < n; i++)
			req.events[i] = (Stigg__Sidecar__V1__Event *) rows[from + i].msg;
		resp = StiggSidecarInvoke("ReportEvents", &req.base,
								  &google__protobuf__empty__descriptor, false, res);
	}
	in_send = false;
	return resp;
}

/* Whether a failed send may have been applied by the sidecar all the same. */
static bool
outcome_in_doubt(const StiggCallResult *res)
{
	return res->status == STIGG_CALL_TIMEOUT || res->status == STIGG_CALL_IO_FAILED ||
		res->status == STIGG_CALL_INTERRUPTED || res->status == STIGG_CALL_PROTOCOL;
}

static void
retry_later(bool usage, QueuedRow *rows, int from, int n, const char *method,
			const StiggCallResult *res)
{
	release(usage, rows, from, n);
	record_error(StiggDescribeCall(method, res));
	if (outcome_in_doubt(res))
	{
		SpinLockAcquire(&shared->mutex);
		shared->resent += n - from;
		SpinLockRelease(&shared->mutex);
	}
}

static void
settle_one(bool usage, QueuedRow *row, ProtobufCMessage *resp)
{
	Stigg__Sidecar__V1__ReportUsageBulkResponse *bulk =
		(Stigg__Sidecar__V1__ReportUsageBulkResponse *) resp;

	settle(usage, row, 1, usage ? bulk->usages : NULL, usage ? bulk->n_usages : 0);
}

/*
 * Delivers one batch. Returns the number of rows settled (delivered or
 * dead-lettered), 0 when the queue is empty, -1 to back off.
 */
static int
deliver_batch(bool usage)
{
	const char *method = usage ? "ReportUsageBulk" : "ReportEvents";
	StiggCallResult res;
	ProtobufCMessage *resp;
	QueuedRow  *rows;
	int			n;

	rows = claim(usage, &n);
	if (n == 0)
		return 0;

	set_state(usage ? "sending usage" : "sending events");
	resp = send_rows(usage, rows, 0, n, &res);
	if (resp != NULL)
	{
		if (usage)
		{
			Stigg__Sidecar__V1__ReportUsageBulkResponse *bulk =
				(Stigg__Sidecar__V1__ReportUsageBulkResponse *) resp;

			settle(true, rows, n, bulk->usages, bulk->n_usages);
		}
		else
			settle(false, rows, n, NULL, 0);
		return n;
	}
	if (StiggCallIsRetryable(&res))
	{
		retry_later(usage, rows, 0, n, method, &res);
		return -1;
	}

	/* refused: find the rows the sidecar will not take, one at a time */
	set_state(usage ? "isolating refused usage" : "isolating refused events");
	for (int i = 0; i < n; i++)
	{
		resp = send_rows(usage, rows, i, 1, &res);
		if (resp != NULL)
			settle_one(usage, &rows[i], resp);
		else if (StiggCallIsRetryable(&res))
		{
			retry_later(usage, rows, i, n, method, &res);
			return -1;
		}
		else
			dead_letter(usage, &rows[i], StiggDescribeCall(method, &res));
	}
	return n;
}

/*
 * Runs the oldest queued provisioning (stigg_provision_*_after_commit) and
 * records its outcome. Returns 1 when it settled one, 0 when none waits, -1
 * when the API failed in a way worth retrying. A crash between the API's
 * answer and the record runs it again; provisioning the same customer or
 * subscription twice leaves Stigg as once.
 */
static int
deliver_provisioning(void)
{
	StiggCallResult res;
	Jsonb	   *data;
	char	   *query;
	char	   *variables;
	char	   *customer;
	int64		id;
	Oid			types[3] = {INT8OID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	begin_tx("claiming provisioning");
	exec_or_fail("UPDATE stigg.provisioning SET attempts = attempts + 1"
				 " WHERE id = (SELECT id FROM stigg.provisioning WHERE state = 'pending'"
				 "             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
				 " RETURNING id, query, variables::text, customer_id",
				 0, NULL, NULL, NULL, SPI_OK_UPDATE_RETURNING);
	if (SPI_processed == 0)
	{
		end_tx();
		return 0;
	}
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext old = MemoryContextSwitchTo(batch_ctx);

		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		query = SPI_getvalue(tup, desc, 2);
		variables = SPI_getvalue(tup, desc, 3);
		customer = SPI_getvalue(tup, desc, 4);
		MemoryContextSwitchTo(old);
	}
	end_tx();

	set_state("provisioning");
	in_send = true;
	data = StiggApiTry(query, variables, &res);
	in_send = false;
	if (data == NULL && StiggCallIsRetryable(&res))
	{
		record_error(StiggDescribeCall("provisioning", &res));
		return -1;
	}
	values[0] = Int64GetDatum(id);
	if (data != NULL)
	{
		values[1] = CStringGetTextDatum(JsonbToCString(NULL, &data->root, VARSIZE(data)));
		nulls[2] = 'n';
		values[2] = (Datum) 0;
	}
	else
	{
		nulls[1] = 'n';
		values[1] = (Datum) 0;
		values[2] = CStringGetTextDatum(StiggDescribeCall("provisioning", &res));
	}
	begin_tx("recording provisioning");
	exec_or_fail("UPDATE stigg.provisioning SET state = CASE WHEN $2 IS NULL THEN 'failed' ELSE 'done' END,"
				 " result = $2::jsonb, error = $3, done_at = clock_timestamp() WHERE id = $1",
				 3, types, values, nulls, SPI_OK_UPDATE);
	end_tx();
	/* what the customer is entitled to may have changed */
	StiggCacheInvalidate(customer);
	return 1;
}

static RunOutcome
deliver_all(void)
{
	static TimestampTz provisioning_retry_at = 0;

	for (;;)
	{
		int			nu;
		int			ne;
		int			np = 0;

		MemoryContext old;

		MemoryContextReset(batch_ctx);
		old = MemoryContextSwitchTo(batch_ctx);
		nu = deliver_batch(true);
		ne = nu < 0 ? 0 : deliver_batch(false);
		MemoryContextSwitchTo(old);
		if (nu < 0 || ne < 0)
			return RUN_BACKOFF;
		if (nu == 0 && ne == 0 && !got_sigterm && GetCurrentTimestamp() >= provisioning_retry_at)
		{
			/* its failures (no API key, say) never hold up usage */
			old = MemoryContextSwitchTo(batch_ctx);
			np = deliver_provisioning();
			MemoryContextSwitchTo(old);
			if (np < 0)
				provisioning_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																	stigg_retry_max_delay_ms);
		}
		if ((nu == 0 && ne == 0 && np <= 0) || got_sigterm)
			return RUN_DONE;
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		CHECK_FOR_INTERRUPTS();
	}
}

/* Deletes delivered rows older than stigg.delivered_retention, in batches. */
static void
purge_delivered(void)
{
	Oid			types[2] = {FLOAT8OID, INT4OID};
	Datum		values[2];

	values[0] = Float8GetDatum((double) stigg_delivered_retention_s);
	values[1] = Int32GetDatum(PURGE_BATCH);
	begin_tx("purging delivered rows");
	exec_or_fail("DELETE FROM stigg.usage_queue WHERE id IN (SELECT id FROM stigg.usage_queue"
				 " WHERE state = 'delivered' AND delivered_at < clock_timestamp() - make_interval(secs => $1)"
				 " ORDER BY delivered_at LIMIT $2)", 2, types, values, NULL, SPI_OK_DELETE);
	exec_or_fail("DELETE FROM stigg.event_queue WHERE id IN (SELECT id FROM stigg.event_queue"
				 " WHERE state = 'delivered' AND delivered_at < clock_timestamp() - make_interval(secs => $1)"
				 " ORDER BY delivered_at LIMIT $2)", 2, types, values, NULL, SPI_OK_DELETE);
	end_tx();
}

/* One round of work; an error is logged and turns into a back-off. */
static RunOutcome
run_once(MemoryContext loop_ctx)
{
	volatile RunOutcome outcome = RUN_DONE;

	PG_TRY();
	{
		if (!ready)
			ready = prepare_queue();
		if (!ready)
			outcome = RUN_NOT_READY;
		else
		{
			outcome = deliver_all();
			if (outcome == RUN_DONE)
				purge_delivered();
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(loop_ctx);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		in_send = false;
		record_error(edata->message);
		ereport(LOG,
				(errmsg("stigg worker: %s", edata->message),
				 edata->detail ? errdetail("%s", edata->detail) : 0));
		FreeErrorData(edata);
		ready = false;
		outcome = RUN_BACKOFF;
	}
	PG_END_TRY();
	return outcome;
}

static int
next_backoff_ms(void)
{
	double		r;

	backoff_ms = backoff_ms == 0 ? MIN_BACKOFF_MS : backoff_ms * 2;
	backoff_ms = Min(backoff_ms, stigg_retry_max_delay_ms);
#if PG_VERSION_NUM >= 150000
	r = pg_prng_double(&pg_global_prng_state);
#else
	r = (double) random() / ((double) MAX_RANDOM_VALUE + 1);
#endif
	/* "equal jitter": half fixed, half random */
	return backoff_ms / 2 + (int) (r * (backoff_ms / 2 + 1));
}

/*
 * SIGTERM: exit at the next safe point. While a send is in progress it may
 * finish and be settled first; otherwise exit as die() would.
 */
static void
worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	got_sigterm = true;
	if (!in_send)
	{
		InterruptPending = true;
		ProcDiePending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

static void
worker_exit(int code, Datum arg)
{
	SpinLockAcquire(&shared->mutex);
	shared->pid = 0;
	shared->latch = NULL;
	strlcpy(shared->state, "stopped", sizeof(shared->state));
	SpinLockRelease(&shared->mutex);
}

void
StiggWorkerMain(Datum main_arg)
{
	MemoryContext loop_ctx;
	TimestampTz next_retry_at = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, worker_sigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(stigg_database, NULL, 0);
	pgstat_report_appname("stigg usage worker");
#if PG_VERSION_NUM >= 170000
	wait_event_main = WaitEventExtensionNew("StiggWorkerMain");
#endif

	SpinLockAcquire(&shared->mutex);
	shared->pid = MyProcPid;
	shared->latch = MyLatch;
	shared->next_retry_at = 0;
	SpinLockRelease(&shared->mutex);
	on_shmem_exit(worker_exit, (Datum) 0);
	set_state("starting");

	loop_ctx = AllocSetContextCreate(TopMemoryContext, "stigg worker loop", ALLOCSET_DEFAULT_SIZES);
	batch_ctx = AllocSetContextCreate(loop_ctx, "stigg worker batch", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		long		wait_ms = stigg_worker_naptime_ms;
		TimestampTz now;

		/* a cancel only interrupts the call it hit */
		QueryCancelPending = false;
		CHECK_FOR_INTERRUPTS();
		if (got_sigterm)
			proc_exit(1);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		now = GetCurrentTimestamp();
		if (next_retry_at > now)
			wait_ms = Max(1, (long) ((next_retry_at - now) / 1000));
		else
		{
			RunOutcome outcome;
			MemoryContext old = MemoryContextSwitchTo(loop_ctx);

			MemoryContextReset(batch_ctx);
			outcome = run_once(loop_ctx);
			MemoryContextSwitchTo(old);
			MemoryContextReset(loop_ctx);
			batch_ctx = AllocSetContextCreate(loop_ctx, "stigg worker batch", ALLOCSET_DEFAULT_SIZES);

			if (outcome == RUN_BACKOFF)
			{
				wait_ms = next_backoff_ms();
				next_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), wait_ms);
				set_state("backing off after a failure");
			}
			else
			{
				backoff_ms = 0;
				next_retry_at = 0;
				if (outcome == RUN_DONE)
					set_state("idle");
			}
			SpinLockAcquire(&shared->mutex);
			shared->next_retry_at = next_retry_at;
			SpinLockRelease(&shared->mutex);
		}
		if (got_sigterm)
			proc_exit(1);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, wait_event_main);
		ResetLatch(MyLatch);
	}
}

/* ---- SQL: status and control ---- */

Datum
stigg_worker_info(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[9];
	bool		nulls[9] = {0};
	StiggWorkerShared copy;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (shared == NULL)
	{
		for (int i = 0; i < 9; i++)
			nulls[i] = true;
		nulls[1] = false;
		values[1] = CStringGetTextDatum("not loaded: add stigg to shared_preload_libraries");
		PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
	}
	SpinLockAcquire(&shared->mutex);
	memcpy(&copy, shared, sizeof(copy));
	SpinLockRelease(&shared->mutex);

	values[0] = Int32GetDatum(copy.pid);
	nulls[0] = copy.pid == 0;
	values[1] = CStringGetTextDatum(copy.state);
	values[2] = TimestampTzGetDatum(copy.last_success);
	nulls[2] = copy.last_success == 0;
	values[3] = CStringGetTextDatum(copy.last_error);
	nulls[3] = copy.last_error[0] == '\0';
	values[4] = TimestampTzGetDatum(copy.last_error_at);
	nulls[4] = copy.last_error_at == 0;
	values[5] = TimestampTzGetDatum(copy.next_retry_at);
	nulls[5] = copy.next_retry_at == 0;
	values[6] = Int64GetDatum((int64) copy.delivered);
	values[7] = Int64GetDatum((int64) copy.dead_lettered);
	values[8] = Int64GetDatum((int64) copy.resent);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

Datum
stigg_worker_is_running(PG_FUNCTION_ARGS)
{
	int			pid = StiggWorkerPid();

	PG_RETURN_BOOL(pid != 0 && kill(pid, 0) == 0);
}

/* Stops the worker; the postmaster starts a new one within a second. */
Datum
stigg_restart_worker(PG_FUNCTION_ARGS)
{
	int			pid = StiggWorkerPid();

	if (shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the stigg worker is not registered"),
				 errhint("Add stigg to shared_preload_libraries and restart the server.")));
	if (pid == 0)
		PG_RETURN_BOOL(false);
	if (kill(pid, SIGTERM) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not signal the stigg worker (pid %d): %m", pid)));
	PG_RETURN_BOOL(true);
}
