/*-------------------------------------------------------------------------
 * stats.c
 *	  Counters and call latencies behind stigg.stats and stigg.stats_latency.
 *
 * Preloaded, they live in shared memory and cover every process since the
 * last stigg_stats_reset(); otherwise they cover this backend only.
 * Latencies of sidecar round trips go into a histogram of 4 buckets per
 * power of two microseconds, so a percentile is exact to within 19 %.
 *
 * Locking protocol: none. Every field is a pg_atomic_uint64, updated with
 * fetch-add; a reset zeroes them one by one, so a reader racing a reset may
 * see a mix, which is acceptable for statistics. Counters are gathered per
 * backend and added to shared memory every FLUSH_EVERY events and at the
 * end of each transaction: an atomic per call cost a cached check 18 %.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "stats.h"

#define SUB_BUCKETS 4
#define N_BUCKETS (32 * SUB_BUCKETS)

typedef struct StiggStats
{
	pg_atomic_uint64 counters[STIGG_N_STATS];
	pg_atomic_uint64 latency[N_BUCKETS];
	pg_atomic_uint64 reset_at;	/* a TimestampTz */
} StiggStats;

static const char *const stat_names[STIGG_N_STATS] = {
	"calls: stigg_has_access",
	"calls: stigg_get_*entitlement*",
	"calls: stigg_entitlements",
	"calls: stigg_reload_entitlements",
	"calls: stigg_report_usage",
	"calls: stigg_report_event",
	"calls: stigg_enforce",
	"calls: stigg_track_usage",
	"statement memo hits",
	"cache hits",
	"cache misses",
	"sidecar round trips",
	"fallbacks served",
	"stigg_enforce refusals",
	"errors: could not connect",
	"errors: TLS",
	"errors: timeout",
	"errors: interrupted",
	"errors: connection broke",
	"errors: protocol",
	"errors: gRPC status",
	"errors: out of memory",
};

#define FLUSH_EVERY 256

static StiggStats *stats = NULL;
static uint64 pending[STIGG_N_STATS];
static int	pending_total = 0;
#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PG_FUNCTION_INFO_V1(stigg_stats_counters);
PG_FUNCTION_INFO_V1(stigg_stats_latency);
PG_FUNCTION_INFO_V1(stigg_stats_reset);

static void
stats_zero(StiggStats *s, bool init)
{
	for (int i = 0; i < STIGG_N_STATS; i++)
	{
		if (init)
			pg_atomic_init_u64(&s->counters[i], 0);
		else
			pg_atomic_write_u64(&s->counters[i], 0);
	}
	for (int i = 0; i < N_BUCKETS; i++)
	{
		if (init)
			pg_atomic_init_u64(&s->latency[i], 0);
		else
			pg_atomic_write_u64(&s->latency[i], 0);
	}
	if (init)
		pg_atomic_init_u64(&s->reset_at, (uint64) GetCurrentTimestamp());
	else
		pg_atomic_write_u64(&s->reset_at, (uint64) GetCurrentTimestamp());
}

#if PG_VERSION_NUM >= 150000
static void
stats_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(StiggStats)));
}
#endif

static void
stats_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	stats = ShmemInitStruct("stigg stats", sizeof(StiggStats), &found);
	if (!found)
		stats_zero(stats, true);
	LWLockRelease(AddinShmemInitLock);
}

void
StiggStatsInit(void)
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = stats_shmem_request;
#else
	RequestAddinShmemSpace(MAXALIGN(sizeof(StiggStats)));
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = stats_shmem_startup;
}

static StiggStats *
the_stats(void)
{
	if (stats == NULL)
	{
		stats = MemoryContextAlloc(TopMemoryContext, sizeof(StiggStats));
		stats_zero(stats, true);
	}
	return stats;
}

void
StiggStatsFlush(void)
{
	StiggStats *s;

	if (pending_total == 0)
		return;
	s = the_stats();
	for (int i = 0; i < STIGG_N_STATS; i++)
	{
		if (pending[i] != 0)
			pg_atomic_fetch_add_u64(&s->counters[i], pending[i]);
		pending[i] = 0;
	}
	pending_total = 0;
}

void
StiggStatCount(StiggStat stat)
{
	pending[stat]++;
	if (++pending_total >= FLUSH_EVERY)
		StiggStatsFlush();
}

static int
bucket_of(int64 us)
{
	double		l;
	int			b;

	if (us < 1)
		return 0;
	l = log2((double) us) * SUB_BUCKETS;
	b = (int) l;
	return Min(b, N_BUCKETS - 1);
}

static double
bucket_upper_us(int b)
{
	return pow(2.0, (double) (b + 1) / SUB_BUCKETS);
}

void
StiggStatCall(const StiggCallResult *res, int64 elapsed_us)
{
	StiggStats *s = the_stats();

	/* a round trip costs far more than an atomic: count it at once */
	pg_atomic_fetch_add_u64(&s->counters[STIGG_STAT_ROUND_TRIPS], 1);
	pg_atomic_fetch_add_u64(&s->latency[bucket_of(elapsed_us)], 1);
	if (res->status != STIGG_CALL_OK)
		pg_atomic_fetch_add_u64(&s->counters[STIGG_STAT_ERR_FIRST + res->status - 1], 1);
}

/* stigg.stats_counters(): (name, value) */
Datum
stigg_stats_counters(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	StiggStats *s = the_stats();
	TupleDesc	tupdesc;
	Tuplestorestate *store;
	MemoryContext old;

	StiggStatsFlush();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	store = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = store;
	rsinfo->setDesc = CreateTupleDescCopy(tupdesc);
	MemoryContextSwitchTo(old);
	for (int i = 0; i < STIGG_N_STATS; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(stat_names[i]);
		values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&s->counters[i]));
		values[2] = TimestampTzGetDatum((TimestampTz) pg_atomic_read_u64(&s->reset_at));
		tuplestore_putvalues(store, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* stigg.stats_latency(): round trips and their p50, p90, p99 in ms */
Datum
stigg_stats_latency(PG_FUNCTION_ARGS)
{
	StiggStats *s = the_stats();
	TupleDesc	tupdesc;
	uint64		counts[N_BUCKETS];
	uint64		total = 0;
	double		q[3] = {0.5, 0.9, 0.99};
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	for (int b = 0; b < N_BUCKETS; b++)
	{
		counts[b] = pg_atomic_read_u64(&s->latency[b]);
		total += counts[b];
	}
	values[0] = Int64GetDatum((int64) total);
	for (int i = 0; i < 3; i++)
	{
		uint64		need = (uint64) ceil(q[i] * total);
		uint64		seen = 0;

		nulls[i + 1] = total == 0;
		values[i + 1] = Float8GetDatum(0);
		for (int b = 0; b < N_BUCKETS && total > 0; b++)
		{
			seen += counts[b];
			if (seen >= need)
			{
				values[i + 1] = Float8GetDatum(bucket_upper_us(b) / 1000.0);
				break;
			}
		}
	}
	values[4] = TimestampTzGetDatum((TimestampTz) pg_atomic_read_u64(&s->reset_at));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

Datum
stigg_stats_reset(PG_FUNCTION_ARGS)
{
	memset(pending, 0, sizeof(pending));
	pending_total = 0;
	stats_zero(the_stats(), false);
	PG_RETURN_VOID();
}
