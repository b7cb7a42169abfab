/*-------------------------------------------------------------------------
 * cache.c
 *	  The entitlement cache and the per-statement memo.
 *
 * Cache: (customer, resource, feature) -> what the sidecar answered, for
 * stigg.cache_ttl. With the library preloaded it lives in shared memory and
 * every backend (and the worker, which writes acknowledged usage into it)
 * shares it; otherwise each backend keeps its own. It holds at most
 * stigg.cache_size entries; a full cache drops expired entries, and then
 * the oldest one.
 *
 * Locking protocol (shared cache): cache_lock, one LWLock, guards the hash
 * table and every entry in it. Lookups copy an entry out under LW_SHARED;
 * stores, usage updates, invalidation and eviction take LW_EXCLUSIVE. No
 * other lock is taken while it is held, and nothing that can raise an error
 * runs under it.
 *
 * Memo: per backend, per statement, (key, requested usage) -> the answer
 * of a check that took no lock, so that a CHECK or an RLS policy over a
 * million rows asks the sidecar at most once per key, cache or no cache.
 * It is emptied when the statement (or transaction) changes and whenever
 * this backend reports usage.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "cache.h"
#include "guc.h"
#include "stats.h"

#define LOCAL_CACHE_SIZE 1000

static HTAB *shared_cache = NULL;
static LWLock *cache_lock = NULL;
static HTAB *local_cache = NULL;
#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

typedef struct MemoKey
{
	char		key[STIGG_CACHE_KEY_LEN];
	double		requested;
} MemoKey;

typedef struct MemoEntry
{
	MemoKey		k;
	bool		answer;
} MemoEntry;

static HTAB *memo = NULL;
static TimestampTz memo_statement = 0;
static LocalTransactionId memo_lxid = InvalidLocalTransactionId;

#define FAST_SETS 1024
#define FAST_WAYS 4
typedef struct FastSlot
{
	StiggFastKey k;
	uint64		epoch;
	bool		answer;
} FastSlot;
static FastSlot *fast_slots = NULL;	/* FAST_SETS x FAST_WAYS */
static uint64 fast_epoch = 1;	/* slots of other epochs are empty */
static uint32 fast_victim = 0;

/* ---- set-up ---- */

static Size
cache_size(void)
{
	return hash_estimate_size(stigg_cache_size, sizeof(StiggEntitlement));
}

#if PG_VERSION_NUM >= 150000
static void
cache_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(cache_size());
	RequestNamedLWLockTranche("stigg_cache", 1);
}
#endif

static void
cache_shmem_startup(void)
{
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	memset(&info, 0, sizeof(info));
	info.keysize = STIGG_CACHE_KEY_LEN;
	info.entrysize = sizeof(StiggEntitlement);
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared_cache = ShmemInitHash("stigg entitlement cache", stigg_cache_size, stigg_cache_size,
								 &info, HASH_ELEM | HASH_STRINGS | HASH_FIXED_SIZE);
	cache_lock = &(GetNamedLWLockTranche("stigg_cache"))->lock;
	LWLockRelease(AddinShmemInitLock);
}

void
StiggCacheInit(void)
{
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = cache_shmem_request;
#else
	RequestAddinShmemSpace(cache_size());
	RequestNamedLWLockTranche("stigg_cache", 1);
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = cache_shmem_startup;
}

static HTAB *
the_cache(void)
{
	if (shared_cache != NULL)
		return shared_cache;
	if (local_cache == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = STIGG_CACHE_KEY_LEN;
		info.entrysize = sizeof(StiggEntitlement);
		info.hcxt = TopMemoryContext;
		local_cache = hash_create("stigg entitlement cache", LOCAL_CACHE_SIZE, &info,
								  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	}
	return local_cache;
}

static int
max_entries(void)
{
	return shared_cache != NULL ? stigg_cache_size : LOCAL_CACHE_SIZE;
}

static inline void
lock_cache(LWLockMode mode)
{
	if (shared_cache != NULL)
		LWLockAcquire(cache_lock, mode);
}

static inline void
unlock_cache(void)
{
	if (shared_cache != NULL)
		LWLockRelease(cache_lock);
}

void
StiggMakeCacheKey(char *key, const char *customer, const char *resource, const char *feature)
{
	snprintf(key, STIGG_CACHE_KEY_LEN, "%s\x1f%s\x1f%s", customer, resource ? resource : "", feature);
}

/* ---- the cache ---- */

static bool
fresh(const StiggEntitlement *e, TimestampTz now)
{
	if (stigg_cache_ttl_ms <= 0)
		return false;
	if (TimestampDifferenceExceeds(e->fetched_at, now, stigg_cache_ttl_ms))
		return false;
	/* usage resets at the end of its period: the cached usage is stale then */
	if (e->period_end != 0 && now >= e->period_end)
		return false;
	return true;
}

bool
StiggCacheLookup(const char *key, StiggEntitlement *out)
{
	StiggEntitlement *e;
	bool		found = false;
	TimestampTz now;

	if (stigg_cache_ttl_ms <= 0)
		return false;
	now = GetCurrentTimestamp();
	lock_cache(LW_SHARED);
	e = hash_search(the_cache(), key, HASH_FIND, NULL);
	if (e != NULL && fresh(e, now))
	{
		memcpy(out, e, sizeof(*out));
		found = true;
	}
	unlock_cache();
	StiggStatCount(found ? STIGG_STAT_CACHE_HITS : STIGG_STAT_CACHE_MISSES);
	return found;
}

/* Makes room for one entry: expired ones go first, then the oldest. */
static void
evict(HTAB *h, TimestampTz now)
{
	HASH_SEQ_STATUS seq;
	StiggEntitlement *e;
	StiggEntitlement *oldest = NULL;
	char		victim[STIGG_CACHE_KEY_LEN];
	int			removed = 0;

	hash_seq_init(&seq, h);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (!fresh(e, now))
		{
			hash_search(h, e->key, HASH_REMOVE, NULL);
			removed++;
		}
		else if (oldest == NULL || e->fetched_at < oldest->fetched_at)
			oldest = e;
	}
	if (removed == 0 && oldest != NULL)
	{
		strlcpy(victim, oldest->key, sizeof(victim));
		hash_search(h, victim, HASH_REMOVE, NULL);
	}
}

void
StiggCacheStore(const StiggEntitlement *src)
{
	HTAB	   *h;
	StiggEntitlement *e;
	bool		found;

	if (stigg_cache_ttl_ms <= 0 || src->is_fallback)
		return;
	h = the_cache();
	lock_cache(LW_EXCLUSIVE);
	if (hash_get_num_entries(h) >= max_entries() &&
		hash_search(h, src->key, HASH_FIND, NULL) == NULL)
		evict(h, GetCurrentTimestamp());
	e = hash_search(h, src->key, HASH_ENTER_NULL, &found);
	if (e != NULL)
	{
		double		usage = e->current_usage;
		TimestampTz as_of = e->usage_as_of;

		/* a slow fetch must not replace a newer acknowledgement's usage */
		memcpy(e, src, sizeof(*e));
		if (found && as_of > src->usage_as_of && e->kind == STIGG_KIND_METERED)
		{
			e->current_usage = usage;
			e->usage_as_of = as_of;
		}
	}
	unlock_cache();
}

void
StiggCacheSetUsage(const char *key, double current_usage, TimestampTz as_of)
{
	StiggEntitlement *e;

	if (shared_cache == NULL && local_cache == NULL)
		return;
	lock_cache(LW_EXCLUSIVE);
	e = hash_search(the_cache(), key, HASH_FIND, NULL);
	if (e != NULL && e->kind == STIGG_KIND_METERED && as_of >= e->usage_as_of)
	{
		e->current_usage = current_usage;
		e->usage_as_of = as_of;
	}
	unlock_cache();
}

int64
StiggCacheInvalidate(const char *customer)
{
	HTAB	   *h = the_cache();
	HASH_SEQ_STATUS seq;
	StiggEntitlement *e;
	size_t		prefix = customer ? strlen(customer) : 0;
	int64		removed = 0;

	lock_cache(LW_EXCLUSIVE);
	hash_seq_init(&seq, h);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (customer == NULL ||
			(strncmp(e->key, customer, prefix) == 0 && e->key[prefix] == '\x1f'))
		{
			hash_search(h, e->key, HASH_REMOVE, NULL);
			removed++;
		}
	}
	unlock_cache();
	StiggMemoReset();
	return removed;
}

/* ---- the memo ---- */

static inline void memo_check_epoch(void);

static HTAB *
the_memo(void)
{
	memo_check_epoch();
	if (memo == NULL)
	{
		HASHCTL		info;

		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(MemoKey);
		info.entrysize = sizeof(MemoEntry);
		info.hcxt = TopMemoryContext;
		memo = hash_create("stigg statement memo", 256, &info,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	return memo;
}

static void
memo_key(MemoKey *k, const char *key, double requested)
{
	memset(k, 0, sizeof(*k));
	strlcpy(k->key, key, sizeof(k->key));
	k->requested = requested;
}

bool
StiggMemoLookup(const char *key, double requested, bool *answer)
{
	MemoKey		k;
	MemoEntry  *e;

	memo_key(&k, key, requested);
	e = hash_search(the_memo(), &k, HASH_FIND, NULL);
	if (e == NULL)
		return false;
	*answer = e->answer;
	StiggStatCount(STIGG_STAT_MEMO_HITS);
	return true;
}

void
StiggMemoStore(const char *key, double requested, bool answer)
{
	MemoKey		k;
	MemoEntry  *e;

	memo_key(&k, key, requested);
	e = hash_search(the_memo(), &k, HASH_ENTER, NULL);
	e->answer = answer;
}

void
StiggMemoReset(void)
{
	if (memo != NULL)
		hash_destroy(memo);
	memo = NULL;
	fast_epoch++;
}

/* Starts a new memo when the statement or the transaction changed. */
static inline void
memo_check_epoch(void)
{
	if (GetCurrentStatementStartTimestamp() != memo_statement || MyProc->lxid != memo_lxid)
	{
		StiggMemoReset();
		memo_statement = GetCurrentStatementStartTimestamp();
		memo_lxid = MyProc->lxid;
	}
}

bool
StiggFastMemoLookup(const StiggFastKey *k, bool *answer)
{
	FastSlot   *s;

	memo_check_epoch();
	if (fast_slots == NULL)
		return false;
	s = &fast_slots[(k->h1 % FAST_SETS) * FAST_WAYS];
	for (int w = 0; w < FAST_WAYS; w++, s++)
	{
		if (s->epoch == fast_epoch && s->k.h1 == k->h1 && s->k.h2 == k->h2)
		{
			*answer = s->answer;
			StiggStatCount(STIGG_STAT_MEMO_HITS);
			return true;
		}
	}
	return false;
}

void
StiggFastMemoStore(const StiggFastKey *k, bool answer)
{
	FastSlot   *s;

	memo_check_epoch();
	if (fast_slots == NULL)
		fast_slots = MemoryContextAllocZero(TopMemoryContext, sizeof(FastSlot) * FAST_SETS * FAST_WAYS);
	s = &fast_slots[(k->h1 % FAST_SETS) * FAST_WAYS];
	/* an empty way of the set, or else one in turn */
	for (int w = 0; w < FAST_WAYS; w++)
	{
		if (s[w].epoch != fast_epoch)
		{
			s += w;
			goto store;
		}
	}
	s += fast_victim++ % FAST_WAYS;
store:
	s->k = *k;
	s->epoch = fast_epoch;
	s->answer = answer;
}
