/*-------------------------------------------------------------------------
 * access.c
 *	  Access decisions that know about usage not yet acknowledged by Stigg.
 *
 * Stigg's rule for a metered feature: access if unlimited or soft-limited,
 * otherwise current + requested <= limit. Here "current" is the sidecar's
 * usage (cached, kept fresh by the worker's acknowledgements) with the
 * key's queued rows applied on top in queue order: a delta adds, a set
 * replaces. A customer at 5 of 6 who inserts one template is at 6 of 6 for
 * the next check, before Stigg has heard of it.
 *
 * Which rows: every one not yet delivered, and every one delivered after the
 * moment the usage value is as of (a fetch: just before its request; an
 * acknowledgement: the delivered_at the worker gave its batch). Whatever
 * the interleaving of fetches, deliveries and checks, a row is then counted
 * in Stigg's usage, in the queue, or (briefly) in both; never in neither.
 *
 * Every other feature type, and every denial that is not about usage, is the
 * sidecar's answer as it stands.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "access.h"
#include "fallback.h"
#include "pbjson.h"
#include "queue.h"
#include "sidecar.h"

static SPIPlanPtr pending_plan = NULL;

static void
fetch_entitlement(const char *customer, const char *feature, const char *resource,
				  StiggEntitlement *e)
{
	Stigg__Sidecar__V1__GetEntitlementRequest req = STIGG__SIDECAR__V1__GET_ENTITLEMENT_REQUEST__INIT;
	Stigg__Sidecar__V1__GetEntitlementResponse *resp;
	StiggCallResult res;

	/* the answer includes every row delivered before the request */
	e->fetched_at = e->usage_as_of = GetCurrentTimestamp();
	req.customer_id = (char *) customer;
	req.feature_id = (char *) feature;
	if (resource != NULL)
		PB_SET(&req, resource_id, (char *) resource);
	resp = (Stigg__Sidecar__V1__GetEntitlementResponse *)
		StiggSidecarInvoke("GetEntitlement", &req.base,
						   &stigg__sidecar__v1__get_entitlement_response__descriptor, true, &res);
	if (resp == NULL)
	{
		StiggFallback fb;

		if (!StiggUseFallback("GetEntitlement", feature, &res, &fb))
			StiggRaiseCallError("GetEntitlement", &res);
		e->is_fallback = true;
		e->has_access = fb.found && fb.has_access;
		e->denied_reason = fb.found ? 0 : STIGG__SIDECAR__V1__ACCESS_DENIED_REASON__ACCESS_DENIED_REASON_UNKNOWN;
		e->is_unlimited = fb.is_unlimited;
		e->has_limit = fb.has_limit;
		e->usage_limit = fb.usage_limit;
		e->kind = !fb.found ? STIGG_KIND_NONE :
			(fb.has_limit || fb.is_unlimited) ? STIGG_KIND_METERED :
			fb.has_value ? STIGG_KIND_NUMERIC :
			fb.n_enum_values > 0 ? STIGG_KIND_ENUM : STIGG_KIND_BOOLEAN;
		if (e->kind == STIGG_KIND_METERED && !e->has_access)
			e->denied_reason = STIGG__SIDECAR__V1__ACCESS_DENIED_REASON__ACCESS_DENIED_REASON_UNKNOWN;
		return;					/* Stigg's usage unknown: only the queue counts */
	}

	e->has_access = resp->has_access;
	e->denied_reason = PB_HAS(resp, access_denied_reason) ? resp->access_denied_reason : 0;
	switch (resp->entitlement_case)
	{
		case STIGG__SIDECAR__V1__GET_ENTITLEMENT_RESPONSE__ENTITLEMENT_BOOLEAN:
			e->kind = STIGG_KIND_BOOLEAN;
			break;
		case STIGG__SIDECAR__V1__GET_ENTITLEMENT_RESPONSE__ENTITLEMENT_NUMERIC:
			e->kind = STIGG_KIND_NUMERIC;
			e->is_unlimited = resp->numeric->is_unlimited;
			break;
		case STIGG__SIDECAR__V1__GET_ENTITLEMENT_RESPONSE__ENTITLEMENT_ENUM:
			e->kind = STIGG_KIND_ENUM;
			break;
		case STIGG__SIDECAR__V1__GET_ENTITLEMENT_RESPONSE__ENTITLEMENT_METERED:
			{
				Stigg__Sidecar__V1__MeteredEntitlement *m = resp->metered;

				e->kind = STIGG_KIND_METERED;
				e->is_unlimited = m->is_unlimited;
				e->has_soft_limit = PB_HAS(m, has_soft_limit) && m->has_soft_limit;
				e->has_limit = PB_HAS(m, usage_limit);
				e->usage_limit = e->has_limit ? m->usage_limit : 0;
				e->current_usage = m->current_usage;
				if (PB_HAS(m, usage_period_end))
					e->period_end = StiggTimestampFromPb(m->usage_period_end);
				else if (PB_HAS(m, next_reset_date))
					e->period_end = StiggTimestampFromPb(m->next_reset_date);
			}
			break;
		default:
			e->kind = STIGG_KIND_NONE;
			break;
	}
}

/*
 * The undelivered rows of the key, folded: sets *has_set and returns the
 * value of the last SET plus the deltas after it, or, with no SET, the sum
 * of the deltas. Read as the extension's owner (the queue is closed to
 * PUBLIC).
 */
static double
pending_usage(const char *customer, const char *feature, const char *resource,
			  TimestampTz as_of, bool latest, bool *has_set)
{
	Oid			types[4] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	int			rc;
	double		v = 0;

	values[0] = CStringGetTextDatum(customer);
	values[1] = CStringGetTextDatum(feature);
	values[2] = resource ? CStringGetTextDatum(resource) : (Datum) 0;
	nulls[2] = resource ? ' ' : 'n';
	values[3] = TimestampTzGetDatum(as_of);
	*has_set = false;

	StiggBeginAsOwner();
	SPI_connect();
	if (pending_plan == NULL)
	{
		/* operators spelt out: the plan is cached across callers' search_paths */
		pending_plan = SPI_prepare(
			"SELECT is_set, value FROM ("
			" SELECT id, update_behavior OPERATOR(pg_catalog.=) 'SET' AS is_set, value"
			"   FROM stigg.usage_queue"
			"  WHERE state OPERATOR(pg_catalog.<>) 'delivered'"
			"    AND customer_id OPERATOR(pg_catalog.=) $1"
			"    AND feature_id OPERATOR(pg_catalog.=) $2"
			"    AND (resource_id OPERATOR(pg_catalog.=) $3 OR (resource_id IS NULL AND $3 IS NULL))"
			" UNION ALL"
			" SELECT id, update_behavior OPERATOR(pg_catalog.=) 'SET', value"
			"   FROM stigg.usage_queue"
			"  WHERE state OPERATOR(pg_catalog.=) 'delivered'"
			"    AND delivered_at OPERATOR(pg_catalog.>) $4"
			"    AND customer_id OPERATOR(pg_catalog.=) $1"
			"    AND feature_id OPERATOR(pg_catalog.=) $2"
			"    AND (resource_id OPERATOR(pg_catalog.=) $3 OR (resource_id IS NULL AND $3 IS NULL))"
			") q ORDER BY id", 4, types);
		if (pending_plan == NULL || SPI_keepplan(pending_plan) != 0)
			elog(ERROR, "could not prepare the pending-usage query");
	}
	if (latest)
		rc = SPI_execute_snapshot(pending_plan, values, nulls, GetLatestSnapshot(),
								  InvalidSnapshot, true, false, 0);
	else
		rc = SPI_execute_plan(pending_plan, values, nulls, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "pending-usage query failed: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		bool		is_set = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		double		row = DatumGetFloat8(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		if (is_set)
		{
			*has_set = true;
			v = row;
		}
		else
			v += row;
	}
	SPI_finish();
	StiggEndAsOwner();
	return v;
}

/* From the cache, or from the sidecar into the cache. */
static void
get_entitlement(const char *customer, const char *feature, const char *resource,
				StiggEntitlement *e)
{
	if (!StiggCacheLookup(e->key, e))
	{
		fetch_entitlement(customer, feature, resource, e);
		StiggCacheStore(e);
	}
}

void
StiggCheckAccess(const char *customer, const char *feature, const char *resource,
				 double requested, bool gate, StiggAccess *out)
{
	StiggEntitlement *e = &out->ent;
	bool		memo_answer;

	memset(out, 0, sizeof(*out));
	out->requested = requested;
	StiggMakeCacheKey(e->key, customer, resource, feature);

	if (!gate && StiggMemoLookup(e->key, requested, &memo_answer))
	{
		out->has_access = memo_answer;
		return;
	}
	get_entitlement(customer, feature, resource, e);

	if (e->kind != STIGG_KIND_METERED ||
		(e->denied_reason != 0 &&
		 e->denied_reason != STIGG__SIDECAR__V1__ACCESS_DENIED_REASON__ACCESS_DENIED_REASON_REQUESTED_USAGE_EXCEEDING_LIMIT))
		out->has_access = e->has_access;
	else if (e->is_unlimited || e->has_soft_limit)
		out->has_access = true;
	else
	{
		bool		has_set;
		double		pending;

		if (gate)
			StiggLockUsageKey(customer, feature, resource, true);

		/* Stigg's usage as of some moment, then every row not in it */
		get_entitlement(customer, feature, resource, e);
		pending = pending_usage(customer, feature, resource, e->usage_as_of, gate, &has_set);
		out->effective_usage = has_set ? pending : e->current_usage + pending;
		out->has_access = e->has_limit &&
			out->effective_usage + requested <= e->usage_limit;
	}
	if (!gate)
		StiggMemoStore(e->key, requested, out->has_access);
}
