/*-------------------------------------------------------------------------
 * access.h
 *	  Access decisions that know about usage not yet acknowledged by Stigg.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_ACCESS_H
#define STIGG_ACCESS_H

#include "cache.h"

typedef struct StiggAccess
{
	bool		has_access;
	StiggEntitlement ent;		/* what the sidecar said, from cache or not */
	double		effective_usage;	/* metered: acknowledged + pending */
	double		requested;
} StiggAccess;

/*
 * Whether the customer may use requested units of the feature (UTF-8 ids;
 * resource may be NULL). For a metered feature the usage counted is Stigg's
 * plus every report queued in this database and not yet acknowledged,
 * including the caller's own uncommitted ones, folded in queue order.
 *
 * gate: the check guards a write that will report usage. It first takes
 * the key's exclusive lock (see queue.c), so that concurrent gate-and-report
 * transactions of one key run one after another, and it reads the queue
 * with the latest snapshot, so it sees what committed while it waited.
 */
extern void StiggCheckAccess(const char *customer, const char *feature,
							 const char *resource, double requested, bool gate,
							 StiggAccess *out);

#endif							/* STIGG_ACCESS_H */
