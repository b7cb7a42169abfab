/*-------------------------------------------------------------------------
 * cache.h
 *	  The entitlement cache (shared when preloaded, per backend otherwise)
 *	  and the per-statement memo of access answers.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_CACHE_H
#define STIGG_CACHE_H

#include "datatype/timestamp.h"

/* "customer \x1f resource \x1f feature", UTF-8 ids of at most 255 bytes */
#define STIGG_CACHE_KEY_LEN 800

typedef enum StiggFeatureKind
{
	STIGG_KIND_NONE = 0,		/* no entitlement (denied before one is found) */
	STIGG_KIND_BOOLEAN,
	STIGG_KIND_NUMERIC,
	STIGG_KIND_METERED,
	STIGG_KIND_ENUM
} StiggFeatureKind;

/* What the sidecar said about one (customer, resource, feature). */
typedef struct StiggEntitlement
{
	char		key[STIGG_CACHE_KEY_LEN];
	TimestampTz fetched_at;
	bool		has_access;		/* the sidecar's answer, nothing requested */
	int			denied_reason;	/* AccessDeniedReason, 0 when none */
	StiggFeatureKind kind;
	bool		is_unlimited;
	bool		has_soft_limit;
	bool		has_limit;
	double		usage_limit;
	double		current_usage;	/* includes every row delivered up to usage_as_of */
	TimestampTz usage_as_of;
	TimestampTz period_end;		/* 0 when usage never resets */
	bool		is_fallback;	/* from stigg.fallback_entitlements: never cached */
} StiggEntitlement;

extern void StiggCacheInit(void);	/* from _PG_init when preloaded */
extern void StiggMakeCacheKey(char *key, const char *customer, const char *resource,
							  const char *feature);

extern bool StiggCacheLookup(const char *key, StiggEntitlement *out);
extern void StiggCacheStore(const StiggEntitlement *e);
extern int64 StiggCacheInvalidate(const char *customer);
/*
 * An acknowledged report: the sidecar's current usage for the key, which
 * includes every row delivered up to as_of (the worker's delivered_at).
 */
extern void StiggCacheSetUsage(const char *key, double current_usage, TimestampTz as_of);

/*
 * The fast memo: a direct-mapped table of answers keyed by a 128-bit hash
 * of a call's raw arguments, valid for the current statement. A miss (or a
 * collision of slots) just falls through to the exact memo below.
 */
typedef struct StiggFastKey
{
	uint64		h1;
	uint64		h2;
} StiggFastKey;
extern bool StiggFastMemoLookup(const StiggFastKey *k, bool *answer);
extern void StiggFastMemoStore(const StiggFastKey *k, bool answer);

/* Per statement: answers of checks that did not lock (see access.c). */
extern bool StiggMemoLookup(const char *key, double requested, bool *answer);
extern void StiggMemoStore(const char *key, double requested, bool answer);
extern void StiggMemoReset(void);

#endif							/* STIGG_CACHE_H */
