/*-------------------------------------------------------------------------
 * access.c
 *	  Access decisions that know about usage not yet acknowledged by Stigg.
 *
 * Stigg's rule for a metered feature: access if unlimited or soft-limited,
 * otherwise current + requested <= limit. Here "current" is the sidecar's
 * usage (cached, kept fresh by the worker's acknowledgements) with every
 * undelivered row of the key applied on top in queue order: a delta adds, a
 * set replaces. A customer at 5 of 6 who inserts one template is at 6 of 6
 * for the next check, before Stigg has heard of it.
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

	req.customer_id = (char *) customer;
	req.feature_id = (char *) feature;
	if (resource != NULL)
		PB_SET(&req, resource_id, (char *) resource);
	resp = (Stigg__Sidecar__V1__GetEntitlementResponse *)
		StiggSidecarCall("GetEntitlement", &req.base,
						 &stigg__sidecar__v1__get_entitlement_response__descriptor, true);

	e->fetched_at = GetCurrentTimestamp();
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
 * Usage of the key with its undelivered rows applied, read as the
 * extension's owner (the queue is closed to PUBLIC).
 */
static double
apply_pending(const char *customer, const char *feature, const char *resource,
			  double usage, bool latest)
{
	Oid			types[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	int			rc;

	values[0] = CStringGetTextDatum(customer);
	values[1] = CStringGetTextDatum(feature);
	values[2] = resource ? CStringGetTextDatum(resource) : (Datum) 0;
	nulls[2] = resource ? ' ' : 'n';

	StiggBeginAsOwner();
	SPI_connect();
	if (pending_plan == NULL)
	{
		/* operators spelt out: the plan is cached across callers' search_paths */
		pending_plan = SPI_prepare(
			"SELECT update_behavior OPERATOR(pg_catalog.=) 'SET', value"
			"  FROM stigg.usage_queue"
			" WHERE state OPERATOR(pg_catalog.<>) 'delivered'"
			"   AND customer_id OPERATOR(pg_catalog.=) $1"
			"   AND feature_id OPERATOR(pg_catalog.=) $2"
			"   AND (resource_id OPERATOR(pg_catalog.=) $3 OR (resource_id IS NULL AND $3 IS NULL))"
			" ORDER BY id", 3, types);
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
		double		v = DatumGetFloat8(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));

		usage = is_set ? v : usage + v;
	}
	SPI_finish();
	StiggEndAsOwner();
	return usage;
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
	if (!StiggCacheLookup(e->key, e))
	{
		fetch_entitlement(customer, feature, resource, e);
		StiggCacheStore(e);
	}

	if (e->kind != STIGG_KIND_METERED ||
		(e->denied_reason != 0 &&
		 e->denied_reason != STIGG__SIDECAR__V1__ACCESS_DENIED_REASON__ACCESS_DENIED_REASON_REQUESTED_USAGE_EXCEEDING_LIMIT))
		out->has_access = e->has_access;
	else if (e->is_unlimited || e->has_soft_limit)
		out->has_access = true;
	else
	{
		if (gate)
			StiggLockUsageKey(customer, feature, resource, true);
		out->effective_usage = apply_pending(customer, feature, resource,
											 e->current_usage, gate);
		out->has_access = e->has_limit &&
			out->effective_usage + requested <= e->usage_limit;
	}
	if (!gate)
		StiggMemoStore(e->key, requested, out->has_access);
}
