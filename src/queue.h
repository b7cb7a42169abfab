/*-------------------------------------------------------------------------
 * queue.h
 *	  The transactional usage and event queue: what backends write.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_QUEUE_H
#define STIGG_QUEUE_H

/* Installs the commit callback and the utility hook; from _PG_init. */
extern void StiggQueueInit(void);

/*
 * Takes the transaction-scoped lock that orders usage of one (customer,
 * feature, resource): shared for a DELTA (deltas commute), exclusive for a
 * SET. Ids drawn after it follow commit order across every SET.
 */
extern void StiggLockUsageKey(const char *customer_id, const char *feature_id,
							  const char *resource_id, bool exclusive);

#endif							/* STIGG_QUEUE_H */
