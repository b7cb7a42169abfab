/*-------------------------------------------------------------------------
 * queue.h
 *	  The transactional usage and event queue: what backends write.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_QUEUE_H
#define STIGG_QUEUE_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

/* Installs the commit callback and the utility hook; from _PG_init. */
extern void StiggQueueInit(void);

/*
 * Takes the transaction-scoped lock that orders usage of one (customer,
 * feature, resource): shared for a DELTA (deltas commute), exclusive for a
 * SET. Ids drawn after it follow commit order across every SET.
 */
extern void StiggLockUsageKey(const char *customer_id, const char *feature_id,
							  const char *resource_id, bool exclusive);

/*
 * Queues one usage row in the current transaction (server-encoded ids;
 * resource may be NULL), taking the key's lock; returns its id. Callers
 * check their arguments first.
 */
extern int64 StiggEnqueueUsage(text *customer, text *feature, text *resource,
							   double value, bool is_set, Jsonb *dims,
							   bool has_ts, TimestampTz ts);

/*
 * Runs what follows as the extension's owner, who owns the queue tables
 * (PUBLIC has no rights on them), until StiggEndAsOwner. Not nested.
 */
extern void StiggBeginAsOwner(void);
extern void StiggEndAsOwner(void);

#endif							/* STIGG_QUEUE_H */
