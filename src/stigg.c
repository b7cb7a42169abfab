/*-------------------------------------------------------------------------
 * stigg.c
 *	  Entry point of the stigg extension: Stigg's entitlement checks and
 *	  usage metering from SQL.
 *
 * _PG_init only wires things up. Where each concern lives:
 *	guc.c			settings (stigg.*)
 *	transport.c		gRPC over HTTP/2 through libcurl; nothing else knows
 *	sidecar.c		method calls, and the mapping of outcomes to SQLSTATEs
 *	pbjson.c		sidecar messages as JSON and SQL values
 *	args.c			checks of SQL arguments
 *	cache.c			the entitlement cache and the per-statement memo
 *	access.c		access decisions that count usage not yet acknowledged
 *	triggers.c		stigg_enforce and stigg_track_usage
 *	fallback.c		answers from stigg.fallback_entitlements
 *	stats.c			counters and latencies for stigg.stats
 *	entitlements.c	the SQL-callable entitlement checks
 *	queue.c			stigg_report_usage / _event / stigg_flush: the queue
 *	worker.c		the background worker that delivers the queue
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"

#include "cache.h"
#include "guc.h"
#include "queue.h"
#include "stats.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	StiggDefineGucs();
	StiggQueueInit();
	if (process_shared_preload_libraries_in_progress)
	{
		StiggCacheInit();
		StiggStatsInit();
		StiggWorkerInit();
	}
}
