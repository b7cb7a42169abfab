/*-------------------------------------------------------------------------
 * stats.h
 *	  Counters and call latencies for the stigg.stats views.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_STATS_H
#define STIGG_STATS_H

#include "transport.h"

typedef enum StiggStat
{
	STIGG_STAT_HAS_ACCESS,
	STIGG_STAT_GET_ENTITLEMENT,	/* the jsonb stigg_get_*entitlement* functions */
	STIGG_STAT_ENTITLEMENTS,
	STIGG_STAT_RELOAD,
	STIGG_STAT_REPORT_USAGE,
	STIGG_STAT_REPORT_EVENT,
	STIGG_STAT_ENFORCE,
	STIGG_STAT_TRACK_USAGE,
	STIGG_STAT_MEMO_HITS,
	STIGG_STAT_CACHE_HITS,
	STIGG_STAT_CACHE_MISSES,
	STIGG_STAT_ROUND_TRIPS,
	STIGG_STAT_FALLBACKS,
	STIGG_STAT_DENIED,			/* stigg_enforce refusals */
	/* failed round trips, by kind: StiggCallStatus order from CONNECT_FAILED */
	STIGG_STAT_ERR_FIRST,
	STIGG_N_STATS = STIGG_STAT_ERR_FIRST + STIGG_CALL_NO_MEMORY
} StiggStat;

extern void StiggStatsInit(void);	/* from _PG_init when preloaded */
extern void StiggStatCount(StiggStat stat);
extern void StiggStatsFlush(void);	/* at transaction end, and before reading */
extern void StiggStatCall(const StiggCallResult *res, int64 elapsed_us);

#endif							/* STIGG_STATS_H */
