/*-------------------------------------------------------------------------
 * entitlements.c
 *	  SQL-callable entitlement checks: stigg_has_access, stigg_get_*,
 *	  stigg_entitlements and stigg_reload_entitlements.
 *
 * Arguments are checked (args.c) before anything is sent.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/tuplestore.h"

#include "access.h"
#include "args.h"
#include "cache.h"
#include "fallback.h"
#include "pbjson.h"
#include "sidecar.h"
#include "stats.h"

/* More requested enum values than any enum feature has. */
#define STIGG_MAX_REQUESTED_VALUES 1000

PG_FUNCTION_INFO_V1(stigg_has_access);
PG_FUNCTION_INFO_V1(stigg_get_entitlement);
PG_FUNCTION_INFO_V1(stigg_get_boolean_entitlement);
PG_FUNCTION_INFO_V1(stigg_get_numeric_entitlement);
PG_FUNCTION_INFO_V1(stigg_get_metered_entitlement);
PG_FUNCTION_INFO_V1(stigg_get_enum_entitlement);
PG_FUNCTION_INFO_V1(stigg_get_entitlements);
PG_FUNCTION_INFO_V1(stigg_entitlements);
PG_FUNCTION_INFO_V1(stigg_reload_entitlements);
PG_FUNCTION_INFO_V1(stigg_cache_invalidate);

/* ---- arguments ---- */

/* An id argument in UTF-8, or NULL; see StiggIdArg. */
static char *
id_arg(FunctionCallInfo fcinfo, int argno, const char *name, bool required)
{
	return StiggUtf8(StiggIdArg(fcinfo, argno, name, required));
}

/* requested_usage: absent when NULL; finite and not negative otherwise. */
static bool
requested_usage_arg(FunctionCallInfo fcinfo, int argno, double *value)
{
	double		v;

	if (PG_ARGISNULL(argno))
		return false;
	v = PG_GETARG_FLOAT8(argno);
	if (isnan(v) || isinf(v))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("requested_usage must be a finite number"),
				 errdetail("The value given is %s.", isnan(v) ? "NaN" : "infinite")));
	if (v < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("requested_usage must not be negative"),
				 errdetail("The value given is %g.", v)));
	*value = v;
	return true;
}

/* requested_values: a text array without NULL elements, in UTF-8. */
static char **
requested_values_arg(FunctionCallInfo fcinfo, int argno, size_t *n)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	char	  **values;

	*n = 0;
	if (PG_ARGISNULL(argno))
		return NULL;
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
	if (nelems > STIGG_MAX_REQUESTED_VALUES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("requested_values has too many elements"),
				 errdetail("It has %d; at most %d are accepted.",
						   nelems, STIGG_MAX_REQUESTED_VALUES)));
	values = palloc(sizeof(char *) * Max(nelems, 1));
	for (int i = 0; i < nelems; i++)
	{
		char	   *s;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("requested_values must not contain null elements"),
					 errdetail("Element %d is null.", i + 1)));
		s = TextDatumGetCString(elems[i]);
		values[i] = pg_server_to_any(s, strlen(s), PG_UTF8);
	}
	*n = nelems;
	return values;
}

/*
 * A typed call, or NULL with *fb filled when stigg.on_sidecar_error =
 * fallback answers instead; any other failure is raised.
 */
static ProtobufCMessage *
call_or_fallback(const char *method, const ProtobufCMessage *req,
				 const ProtobufCMessageDescriptor *desc, const char *feature,
				 StiggFallback *fb)
{
	StiggCallResult res;
	ProtobufCMessage *resp = StiggSidecarInvoke(method, req, desc, true, &res);

	if (resp == NULL && !StiggUseFallback(method, feature, &res, fb))
		StiggRaiseCallError(method, &res);
	return resp;
}

/* The header of a fallback answer: the row's access, or the SDK default. */
#define FALLBACK_HEADER(r, fb) \
	do { \
		(r)->has_access = (fb)->found && (fb)->has_access; \
		(r)->is_fallback = true; \
		if (!(fb)->found) \
			PB_SET((r), access_denied_reason, \
				   STIGG__SIDECAR__V1__ACCESS_DENIED_REASON__ACCESS_DENIED_REASON_UNKNOWN); \
	} while (0)

/* customer_id, feature_id and resource_id (arguments 0-2) into a request */
#define TARGET_FROM_ARGS(req) \
	do { \
		char	   *resource_; \
		(req).customer_id = id_arg(fcinfo, 0, "customer_id", true); \
		(req).feature_id = id_arg(fcinfo, 1, "feature_id", true); \
		resource_ = id_arg(fcinfo, 2, "resource_id", false); \
		if (resource_ != NULL) \
			PB_SET(&(req), resource_id, resource_); \
	} while (0)

/* customer_id and resource_id (arguments 0-1) into a request */
#define CUSTOMER_FROM_ARGS(req) \
	do { \
		char	   *resource_; \
		(req).customer_id = id_arg(fcinfo, 0, "customer_id", true); \
		resource_ = id_arg(fcinfo, 1, "resource_id", false); \
		if (resource_ != NULL) \
			PB_SET(&(req), resource_id, resource_); \
	} while (0)

static Datum
jsonb_from_text(StringInfo json)
{
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(json->data));
}

/* ---- the functions ---- */

/*
 * With requested_usage the check guards a write: it takes the key's lock
 * until the transaction ends, so that racing gate-and-report transactions
 * cannot both take the last unit (see access.c).
 */
static inline uint64
fnv1a(const unsigned char *p, int len, uint64 h)
{
	for (int i = 0; i < len; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

/*
 * The raw arguments of a check, hashed by two unrelated functions: the fast
 * memo's 128-bit key.
 */
static void
fast_key(FunctionCallInfo fcinfo, StiggFastKey *k)
{
	uint64		h1 = 0x5374696767ULL;
	uint64		h2 = 0x4b65794b6579ULL;

	for (int i = 0; i < 3; i++)
	{
		uint64		a = 0x9e3779b97f4a7c15ULL * (i + 1);
		uint64		b = 0xc2b2ae3d27d4eb4fULL * (i + 1);

		if (!PG_ARGISNULL(i))
		{
			text	   *t = PG_GETARG_TEXT_PP(i);

			a = hash_bytes_extended((unsigned char *) VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), i + 1);
			b = fnv1a((unsigned char *) VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), 0xcbf29ce484222325ULL + i);
		}
		h1 = hash_combine64(h1, a);
		h2 = hash_combine64(h2, b);
	}
	if (!PG_ARGISNULL(3))
	{
		double		r = PG_GETARG_FLOAT8(3);

		h1 = hash_combine64(h1, hash_bytes_extended((unsigned char *) &r, sizeof(r), 7));
		h2 = hash_combine64(h2, fnv1a((unsigned char *) &r, sizeof(r), 0xcbf29ce484222325ULL + 7));
	}
	k->h1 = h1;
	k->h2 = h2;
}

/*
 * With requested_usage the check guards a write: it takes the key's lock
 * until the transaction ends, so that racing gate-and-report transactions
 * cannot both take the last unit (see access.c). Without, repeated checks
 * in one statement are answered from the memo: a CHECK or an RLS policy
 * over a million rows asks once per key.
 */
Datum
stigg_has_access(PG_FUNCTION_ARGS)
{
	char	   *customer;
	char	   *feature;
	char	   *resource;
	double		requested = 0;
	bool		gate;
	bool		answer;
	StiggFastKey k;
	StiggAccess a;

	StiggStatCount(STIGG_STAT_HAS_ACCESS);
	gate = !PG_ARGISNULL(3) && PG_GETARG_FLOAT8(3) > 0 &&
		!RecoveryInProgress() && !XactReadOnly;
	/* only answers to valid arguments are stored, so a hit needs no checks */
	if (!gate && !PG_ARGISNULL(0) && !PG_ARGISNULL(1))
	{
		fast_key(fcinfo, &k);
		if (StiggFastMemoLookup(&k, &answer))
			PG_RETURN_BOOL(answer);
	}

	customer = id_arg(fcinfo, 0, "customer_id", true);
	feature = id_arg(fcinfo, 1, "feature_id", true);
	resource = id_arg(fcinfo, 2, "resource_id", false);
	(void) requested_usage_arg(fcinfo, 3, &requested);
	StiggCheckAccess(customer, feature, resource, requested, gate, &a);
	if (!gate)
		StiggFastMemoStore(&k, a.has_access);
	PG_RETURN_BOOL(a.has_access);
}

Datum
stigg_get_entitlement(PG_FUNCTION_ARGS)
{
	Stigg__Sidecar__V1__GetEntitlementRequest req = STIGG__SIDECAR__V1__GET_ENTITLEMENT_REQUEST__INIT;
	Stigg__Sidecar__V1__GetEntitlementOptions opts = STIGG__SIDECAR__V1__GET_ENTITLEMENT_OPTIONS__INIT;
	Stigg__Sidecar__V1__GetEntitlementResponse *resp;
	StringInfoData json;
	double		requested;
	bool		any_option = false;

	TARGET_FROM_ARGS(req);
	if (requested_usage_arg(fcinfo, 3, &requested))
	{
		PB_SET(&opts, requested_usage, requested);
		any_option = true;
	}
	opts.requested_values = requested_values_arg(fcinfo, 4, &opts.n_requested_values);
	if (opts.n_requested_values > 0)
		any_option = true;
	if (any_option)
		PB_SET(&req, options, &opts);

	StiggStatCount(STIGG_STAT_GET_ENTITLEMENT);
	resp = (Stigg__Sidecar__V1__GetEntitlementResponse *)
		StiggSidecarCall("GetEntitlement", &req.base,
						 &stigg__sidecar__v1__get_entitlement_response__descriptor, true);
	initStringInfo(&json);
	StiggJsonEntitlementResponse(&json, resp);
	PG_RETURN_DATUM(jsonb_from_text(&json));
}

Datum
stigg_get_boolean_entitlement(PG_FUNCTION_ARGS)
{
	Stigg__Sidecar__V1__GetBooleanEntitlementRequest req = STIGG__SIDECAR__V1__GET_BOOLEAN_ENTITLEMENT_REQUEST__INIT;
	Stigg__Sidecar__V1__GetBooleanEntitlementResponse *resp;
	Stigg__Sidecar__V1__GetBooleanEntitlementResponse fallback = STIGG__SIDECAR__V1__GET_BOOLEAN_ENTITLEMENT_RESPONSE__INIT;
	Stigg__Sidecar__V1__BooleanEntitlement fallback_entitlement = STIGG__SIDECAR__V1__BOOLEAN_ENTITLEMENT__INIT;
	StiggFallback fb;
	StringInfoData json;

	TARGET_FROM_ARGS(req);

	StiggStatCount(STIGG_STAT_GET_ENTITLEMENT);
	resp = (Stigg__Sidecar__V1__GetBooleanEntitlementResponse *)
		call_or_fallback("GetBooleanEntitlement", &req.base,
						 &stigg__sidecar__v1__get_boolean_entitlement_response__descriptor,
						 req.feature_id, &fb);
	if (resp == NULL)
	{
		resp = &fallback;
		FALLBACK_HEADER(resp, &fb);
		resp->entitlement = &fallback_entitlement;
	}
	initStringInfo(&json);
	StiggJsonBooleanResponse(&json, resp);
	PG_RETURN_DATUM(jsonb_from_text(&json));
}

Datum
stigg_get_numeric_entitlement(PG_FUNCTION_ARGS)
{
	Stigg__Sidecar__V1__GetNumericEntitlementRequest req = STIGG__SIDECAR__V1__GET_NUMERIC_ENTITLEMENT_REQUEST__INIT;
	Stigg__Sidecar__V1__GetNumericEntitlementResponse *resp;
	Stigg__Sidecar__V1__GetNumericEntitlementResponse fallback = STIGG__SIDECAR__V1__GET_NUMERIC_ENTITLEMENT_RESPONSE__INIT;
	Stigg__Sidecar__V1__NumericEntitlement fallback_entitlement = STIGG__SIDECAR__V1__NUMERIC_ENTITLEMENT__INIT;
	StiggFallback fb;
	StringInfoData json;

	TARGET_FROM_ARGS(req);

	StiggStatCount(STIGG_STAT_GET_ENTITLEMENT);
	resp = (Stigg__Sidecar__V1__GetNumericEntitlementResponse *)
		call_or_fallback("GetNumericEntitlement", &req.base,
						 &stigg__sidecar__v1__get_numeric_entitlement_response__descriptor,
						 req.feature_id, &fb);
	if (resp == NULL)
	{
		resp = &fallback;
		FALLBACK_HEADER(resp, &fb);
		if (fb.has_value)
			PB_SET(&fallback_entitlement, value, fb.value);
		fallback_entitlement.is_unlimited = fb.is_unlimited;
		resp->entitlement = &fallback_entitlement;
	}
	initStringInfo(&json);
	StiggJsonNumericResponse(&json, resp);
	PG_RETURN_DATUM(jsonb_from_text(&json));
}

Datum
stigg_get_metered_entitlement(PG_FUNCTION_ARGS)
{
	Stigg__Sidecar__V1__GetMeteredEntitlementRequest req = STIGG__SIDECAR__V1__GET_METERED_ENTITLEMENT_REQUEST__INIT;
	Stigg__Sidecar__V1__MeteredEntitlementOptions opts = STIGG__SIDECAR__V1__METERED_ENTITLEMENT_OPTIONS__INIT;
	Stigg__Sidecar__V1__GetMeteredEntitlementResponse *resp;
	Stigg__Sidecar__V1__GetMeteredEntitlementResponse fallback = STIGG__SIDECAR__V1__GET_METERED_ENTITLEMENT_RESPONSE__INIT;
	Stigg__Sidecar__V1__MeteredEntitlement fallback_entitlement = STIGG__SIDECAR__V1__METERED_ENTITLEMENT__INIT;
	StiggFallback fb;
	StringInfoData json;
	double		requested;

	TARGET_FROM_ARGS(req);
	if (requested_usage_arg(fcinfo, 3, &requested))
	{
		PB_SET(&opts, requested_usage, requested);
		PB_SET(&req, options, &opts);
	}

	StiggStatCount(STIGG_STAT_GET_ENTITLEMENT);
	resp = (Stigg__Sidecar__V1__GetMeteredEntitlementResponse *)
		call_or_fallback("GetMeteredEntitlement", &req.base,
						 &stigg__sidecar__v1__get_metered_entitlement_response__descriptor,
						 req.feature_id, &fb);
	if (resp == NULL)
	{
		resp = &fallback;
		FALLBACK_HEADER(resp, &fb);
		if (fb.has_limit)
			PB_SET(&fallback_entitlement, usage_limit, fb.usage_limit);
		fallback_entitlement.is_unlimited = fb.is_unlimited;
		PB_SET(&fallback_entitlement, reset_period,
			   STIGG__SIDECAR__V1__ENTITLEMENT_RESET_PERIOD__ENTITLEMENT_RESET_PERIOD_UNSPECIFIED);
		resp->requested_usage = PB_HAS(&opts, requested_usage) ? opts.requested_usage : 0;
		resp->entitlement = &fallback_entitlement;
	}
	initStringInfo(&json);
	StiggJsonMeteredResponse(&json, resp);
	PG_RETURN_DATUM(jsonb_from_text(&json));
}

Datum
stigg_get_enum_entitlement(PG_FUNCTION_ARGS)
{
	Stigg__Sidecar__V1__GetEnumEntitlementRequest req = STIGG__SIDECAR__V1__GET_ENUM_ENTITLEMENT_REQUEST__INIT;
	Stigg__Sidecar__V1__EnumEntitlementOptions opts = STIGG__SIDECAR__V1__ENUM_ENTITLEMENT_OPTIONS__INIT;
	Stigg__Sidecar__V1__GetEnumEntitlementResponse *resp;
	Stigg__Sidecar__V1__GetEnumEntitlementResponse fallback = STIGG__SIDECAR__V1__GET_ENUM_ENTITLEMENT_RESPONSE__INIT;
	Stigg__Sidecar__V1__EnumEntitlement fallback_entitlement = STIGG__SIDECAR__V1__ENUM_ENTITLEMENT__INIT;
	StiggFallback fb;
	StringInfoData json;

	TARGET_FROM_ARGS(req);
	opts.requested_values = requested_values_arg(fcinfo, 3, &opts.n_requested_values);
	if (opts.n_requested_values > 0)
		PB_SET(&req, options, &opts);

	StiggStatCount(STIGG_STAT_GET_ENTITLEMENT);
	resp = (Stigg__Sidecar__V1__GetEnumEntitlementResponse *)
		call_or_fallback("GetEnumEntitlement", &req.base,
						 &stigg__sidecar__v1__get_enum_entitlement_response__descriptor,
						 req.feature_id, &fb);
	if (resp == NULL)
	{
		resp = &fallback;
		FALLBACK_HEADER(resp, &fb);
		fallback_entitlement.n_enum_values = fb.n_enum_values;
		fallback_entitlement.enum_values = fb.enum_values;
		resp->n_requested_values = opts.n_requested_values;
		resp->requested_values = opts.requested_values;
		/* requested values outside the fallback's values are denied */
		for (size_t i = 0; i < opts.n_requested_values && fb.n_enum_values > 0; i++)
		{
			bool		ok = false;

			for (int j = 0; j < fb.n_enum_values; j++)
				ok |= strcmp(opts.requested_values[i], fb.enum_values[j]) == 0;
			if (!ok)
				resp->has_access = false;
		}
		resp->entitlement = &fallback_entitlement;
	}
	initStringInfo(&json);
	StiggJsonEnumResponse(&json, resp);
	PG_RETURN_DATUM(jsonb_from_text(&json));
}

Datum
stigg_get_entitlements(PG_FUNCTION_ARGS)
{
	Stigg__Sidecar__V1__GetEntitlementsRequest req = STIGG__SIDECAR__V1__GET_ENTITLEMENTS_REQUEST__INIT;
	Stigg__Sidecar__V1__GetEntitlementsResponse *resp;
	StringInfoData json;

	CUSTOMER_FROM_ARGS(req);

	StiggStatCount(STIGG_STAT_GET_ENTITLEMENT);
	resp = (Stigg__Sidecar__V1__GetEntitlementsResponse *)
		StiggSidecarCall("GetEntitlements", &req.base,
						 &stigg__sidecar__v1__get_entitlements_response__descriptor, true);
	initStringInfo(&json);
	StiggJsonEntitlementsResponse(&json, resp);
	PG_RETURN_DATUM(jsonb_from_text(&json));
}

/* ---- stigg_entitlements: one row per entitlement ---- */

enum
{
	COL_FEATURE_ID,
	COL_FEATURE_TYPE,
	COL_METER_TYPE,
	COL_HAS_ACCESS,
	COL_IS_UNLIMITED,
	COL_VALUE,
	COL_USAGE_LIMIT,
	COL_CURRENT_USAGE,
	COL_ENUM_VALUES,
	COL_UNITS,
	COL_UNITS_PLURAL,
	COL_RESET_PERIOD,
	COL_NEXT_RESET_DATE,
	NUM_COLS
};

static Datum
text_datum(const char *utf8)
{
	return CStringGetTextDatum(StiggTextFromSidecar(utf8));
}

static void
fill_feature(const Stigg__Sidecar__V1__EntitlementFeature *f, Datum *values, bool *nulls)
{
	if (f == NULL)
		return;
	values[COL_FEATURE_ID] = text_datum(f->id);
	nulls[COL_FEATURE_ID] = false;
	values[COL_FEATURE_TYPE] = CStringGetTextDatum(
		StiggEnumName(&stigg__sidecar__v1__feature_type__descriptor, f->feature_type));
	nulls[COL_FEATURE_TYPE] = false;
	values[COL_METER_TYPE] = CStringGetTextDatum(
		StiggEnumName(&stigg__sidecar__v1__meter_type__descriptor, f->meter_type));
	nulls[COL_METER_TYPE] = false;
	if (PB_HAS(f, units))
	{
		values[COL_UNITS] = text_datum(f->units);
		nulls[COL_UNITS] = false;
	}
	if (PB_HAS(f, units_plural))
	{
		values[COL_UNITS_PLURAL] = text_datum(f->units_plural);
		nulls[COL_UNITS_PLURAL] = false;
	}
}

#define FEATURE_OF(e) (PB_HAS(e, feature) ? (e)->feature : NULL)

static void
fill_row(const Stigg__Sidecar__V1__EntitlementV2 *e, Datum *values, bool *nulls)
{
	for (int i = 0; i < NUM_COLS; i++)
		nulls[i] = true;
	values[COL_HAS_ACCESS] = BoolGetDatum(e->has_access);
	nulls[COL_HAS_ACCESS] = false;

	switch (e->entitlement_case)
	{
		case STIGG__SIDECAR__V1__ENTITLEMENT_V2__ENTITLEMENT_BOOLEAN:
			fill_feature(FEATURE_OF(e->boolean), values, nulls);
			break;
		case STIGG__SIDECAR__V1__ENTITLEMENT_V2__ENTITLEMENT_NUMERIC:
			fill_feature(FEATURE_OF(e->numeric), values, nulls);
			values[COL_IS_UNLIMITED] = BoolGetDatum(e->numeric->is_unlimited);
			nulls[COL_IS_UNLIMITED] = false;
			if (PB_HAS(e->numeric, value))
			{
				values[COL_VALUE] = Int32GetDatum(e->numeric->value);
				nulls[COL_VALUE] = false;
			}
			break;
		case STIGG__SIDECAR__V1__ENTITLEMENT_V2__ENTITLEMENT_METERED:
			{
				const Stigg__Sidecar__V1__MeteredEntitlement *m = e->metered;
				const Google__Protobuf__Timestamp *reset = NULL;

				fill_feature(FEATURE_OF(m), values, nulls);
				values[COL_IS_UNLIMITED] = BoolGetDatum(m->is_unlimited);
				nulls[COL_IS_UNLIMITED] = false;
				if (PB_HAS(m, usage_limit))
				{
					values[COL_USAGE_LIMIT] = Float8GetDatum(m->usage_limit);
					nulls[COL_USAGE_LIMIT] = false;
				}
				values[COL_CURRENT_USAGE] = Float8GetDatum(m->current_usage);
				nulls[COL_CURRENT_USAGE] = false;
				if (PB_HAS(m, reset_period))
				{
					values[COL_RESET_PERIOD] = CStringGetTextDatum(
						StiggEnumName(&stigg__sidecar__v1__entitlement_reset_period__descriptor,
									  m->reset_period));
					nulls[COL_RESET_PERIOD] = false;
				}
				if (PB_HAS(m, next_reset_date))
					reset = m->next_reset_date;
				else if (PB_HAS(m, usage_period_end))
					reset = m->usage_period_end;
				if (reset != NULL)
				{
					values[COL_NEXT_RESET_DATE] = TimestampTzGetDatum(StiggTimestampFromPb(reset));
					nulls[COL_NEXT_RESET_DATE] = false;
				}
			}
			break;
		case STIGG__SIDECAR__V1__ENTITLEMENT_V2__ENTITLEMENT_ENUM:
			{
				const Stigg__Sidecar__V1__EnumEntitlement *en = e->enum_;
				Datum	   *elems = palloc(sizeof(Datum) * Max(en->n_enum_values, 1));

				fill_feature(FEATURE_OF(en), values, nulls);
				for (size_t i = 0; i < en->n_enum_values; i++)
					elems[i] = text_datum(en->enum_values[i]);
				values[COL_ENUM_VALUES] = PointerGetDatum(
					construct_array(elems, (int) en->n_enum_values, TEXTOID, -1, false, TYPALIGN_INT));
				nulls[COL_ENUM_VALUES] = false;
			}
			break;
		case STIGG__SIDECAR__V1__ENTITLEMENT_V2__ENTITLEMENT_CREDIT:
			{
				const Stigg__Sidecar__V1__CreditEntitlement *c = e->credit;

				if (c->currency != NULL)
				{
					values[COL_FEATURE_ID] = text_datum(c->currency->currency_id);
					nulls[COL_FEATURE_ID] = false;
				}
				values[COL_FEATURE_TYPE] = CStringGetTextDatum("CREDIT");
				nulls[COL_FEATURE_TYPE] = false;
				values[COL_USAGE_LIMIT] = Float8GetDatum(c->usage_limit);
				nulls[COL_USAGE_LIMIT] = false;
				values[COL_CURRENT_USAGE] = Float8GetDatum(c->current_usage);
				nulls[COL_CURRENT_USAGE] = false;
				if (PB_HAS(c, usage_period_end))
				{
					values[COL_NEXT_RESET_DATE] = TimestampTzGetDatum(StiggTimestampFromPb(c->usage_period_end));
					nulls[COL_NEXT_RESET_DATE] = false;
				}
			}
			break;
		default:
			break;
	}
}

/* Sets up a materialized set-returning call on every supported version. */
static void
materialize_srf(FunctionCallInfo fcinfo)
{
#if PG_VERSION_NUM >= 160000
	InitMaterializedSRF(fcinfo, 0);
#elif PG_VERSION_NUM >= 150000
	SetSingleFuncCall(fcinfo, 0);
#else
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext oldcontext;
	TupleDesc	tupdesc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	oldcontext = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->setDesc = CreateTupleDescCopy(tupdesc);
	MemoryContextSwitchTo(oldcontext);
#endif
}

Datum
stigg_entitlements(PG_FUNCTION_ARGS)
{
	Stigg__Sidecar__V1__GetEntitlementsStateV2Request req = STIGG__SIDECAR__V1__GET_ENTITLEMENTS_STATE_V2_REQUEST__INIT;
	Stigg__Sidecar__V1__GetEntitlementsStateV2Response *resp;
	ReturnSetInfo *rsinfo;

	CUSTOMER_FROM_ARGS(req);

	StiggStatCount(STIGG_STAT_ENTITLEMENTS);
	materialize_srf(fcinfo);
	rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	resp = (Stigg__Sidecar__V1__GetEntitlementsStateV2Response *)
		StiggSidecarCall("GetEntitlementsStateV2", &req.base,
						 &stigg__sidecar__v1__get_entitlements_state_v2_response__descriptor, true);

	/*
	 * A customer the sidecar does not know, or an archived one, has no
	 * entitlements: no rows, which is the truth, not an error.
	 */
	for (size_t i = 0; i < resp->n_entitlements; i++)
	{
		Datum		values[NUM_COLS];
		bool		nulls[NUM_COLS];

		fill_row(resp->entitlements[i], values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

Datum
stigg_reload_entitlements(PG_FUNCTION_ARGS)
{
	Stigg__Sidecar__V1__ReloadEntitlementsRequest req = STIGG__SIDECAR__V1__RELOAD_ENTITLEMENTS_REQUEST__INIT;
	Stigg__Sidecar__V1__ReloadEntitlementsResponse *resp;

	CUSTOMER_FROM_ARGS(req);

	StiggStatCount(STIGG_STAT_RELOAD);
	resp = (Stigg__Sidecar__V1__ReloadEntitlementsResponse *)
		StiggSidecarCall("ReloadEntitlements", &req.base,
						 &stigg__sidecar__v1__reload_entitlements_response__descriptor, true);
	(void) StiggCacheInvalidate(req.customer_id);
	PG_RETURN_BOOL(resp->entitled_entity_exists);
}

Datum
stigg_cache_invalidate(PG_FUNCTION_ARGS)
{
	char	   *customer = PG_ARGISNULL(0) ? NULL : id_arg(fcinfo, 0, "customer_id", false);

	PG_RETURN_INT64(StiggCacheInvalidate(customer));
}
