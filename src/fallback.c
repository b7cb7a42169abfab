/*-------------------------------------------------------------------------
 * fallback.c
 *	  Answers from stigg.fallback_entitlements when the sidecar cannot.
 *
 * Like the SDKs' entitlementsFallback: with stigg.on_sidecar_error =
 * fallback, a read that fails to reach the sidecar answers from the row of
 * its feature, laid over the type default (no access, reason UNKNOWN), and
 * says so (isFallback). Writes never fall back: reports are queued anyway.
 * Fallback answers are never cached, so the sidecar is asked again at once.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "args.h"
#include "fallback.h"
#include "guc.h"
#include "queue.h"
#include "sidecar.h"
#include "stats.h"

#define WARNING_INTERVAL_MS 10000

static SPIPlanPtr fallback_plan = NULL;
static TimestampTz last_warning = 0;

bool
StiggUseFallback(const char *method, const char *feature,
				 const StiggCallResult *res, StiggFallback *fb)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	int			rc;
	TimestampTz now;

	if (stigg_on_sidecar_error != STIGG_ON_ERROR_FALLBACK || res->status == STIGG_CALL_INTERRUPTED)
		return false;

	memset(fb, 0, sizeof(*fb));
	values[0] = CStringGetTextDatum(pg_any_to_server(feature, strlen(feature), PG_UTF8));
	StiggBeginAsOwner();
	SPI_connect();
	if (fallback_plan == NULL)
	{
		fallback_plan = SPI_prepare("SELECT has_access, value, usage_limit, is_unlimited, enum_values"
									"  FROM stigg.fallback_entitlements"
									" WHERE feature_id OPERATOR(pg_catalog.=) $1", 1, types);
		if (fallback_plan == NULL || SPI_keepplan(fallback_plan) != 0)
			elog(ERROR, "could not prepare the fallback query");
	}
	rc = SPI_execute_plan(fallback_plan, values, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "fallback query failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		d;

		fb->found = true;
		fb->has_access = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));
		d = SPI_getbinval(tup, desc, 2, &isnull);
		fb->has_value = !isnull;
		fb->value = isnull ? 0 : DatumGetInt32(d);
		d = SPI_getbinval(tup, desc, 3, &isnull);
		fb->has_limit = !isnull;
		fb->usage_limit = isnull ? 0 : DatumGetFloat8(d);
		fb->is_unlimited = DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull));
		d = SPI_getbinval(tup, desc, 5, &isnull);
		if (!isnull)
		{
			Datum	   *elems;
			bool	   *nulls;
			int			n;

			/* copied out with SPI_palloc: the caller's context outlives SPI's */
			deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, &nulls, &n);
			fb->enum_values = SPI_palloc(sizeof(char *) * Max(n, 1));
			for (int i = 0; i < n; i++)
			{
				char	   *s = nulls[i] ? "" : StiggCStringToUtf8(TextDatumGetCString(elems[i]));

				fb->enum_values[i] = SPI_palloc(strlen(s) + 1);
				strcpy(fb->enum_values[i], s);
			}
			fb->n_enum_values = n;
		}
	}
	SPI_finish();
	StiggEndAsOwner();

	StiggStatCount(STIGG_STAT_FALLBACKS);
	now = GetCurrentTimestamp();
	if (TimestampDifferenceExceeds(last_warning, now, WARNING_INTERVAL_MS))
	{
		last_warning = now;
		ereport(WARNING,
				(errmsg("stigg sidecar call failed; answering from stigg.fallback_entitlements"),
				 errdetail("%s", StiggDescribeCall(method, res)),
				 errhint("Answers carry isFallback; this warning repeats at most every %d seconds.",
						 WARNING_INTERVAL_MS / 1000)));
	}
	return true;
}
