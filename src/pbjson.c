/*-------------------------------------------------------------------------
 * pbjson.c
 *	  Sidecar messages as JSON text and SQL values.
 *
 * Two renderings, both taken from Stigg's Sidecar SDK guide:
 *	- "full", for one feature's answer: every key of the guide's block is
 *	  present, null where the field is absent, defaults written out;
 *	- "sparse", for all of a customer's entitlements: proto3's canonical
 *	  JSON, where fields at their default and absent optionals are left out.
 * Keys are the proto fields in lowerCamelCase, enums their proto names,
 * timestamps RFC 3339 in UTC. A metered entitlement shows the keys the guide
 * shows (no usage period or soft-limit keys); a missing next_reset_date is
 * taken from usage_period_end, which upstream is replacing it with.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <time.h>

#include "common/shortest_dec.h"
#include "datatype/timestamp.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/fmgrprotos.h"
#include "utils/numeric.h"

#include "pbjson.h"

#define MAX_DEPTH 16

/* A small JSON writer that keeps track of commas. */
typedef struct JsonWriter
{
	StringInfo	buf;
	int			depth;
	bool		need_comma[MAX_DEPTH];
} JsonWriter;

static void
jw_key(JsonWriter *w, const char *key)
{
	if (w->need_comma[w->depth])
		appendStringInfoString(w->buf, ", ");
	w->need_comma[w->depth] = true;
	if (key != NULL)
	{
		escape_json(w->buf, key);
		appendStringInfoString(w->buf, ": ");
	}
}

static void
jw_open(JsonWriter *w, const char *key, char bracket)
{
	jw_key(w, key);
	appendStringInfoChar(w->buf, bracket);
	if (w->depth + 1 >= MAX_DEPTH)
		elog(ERROR, "JSON nesting too deep");
	w->depth++;
	w->need_comma[w->depth] = false;
}

static void
jw_close(JsonWriter *w, char bracket)
{
	w->depth--;
	appendStringInfoChar(w->buf, bracket);
}

static void
jw_null(JsonWriter *w, const char *key)
{
	jw_key(w, key);
	appendStringInfoString(w->buf, "null");
}

static void
jw_bool(JsonWriter *w, const char *key, bool value)
{
	jw_key(w, key);
	appendStringInfoString(w->buf, value ? "true" : "false");
}

static void
jw_int(JsonWriter *w, const char *key, int64 value)
{
	jw_key(w, key);
	appendStringInfo(w->buf, INT64_FORMAT, value);
}

/* Whole numbers keep a ".0", as the guide prints them (6.0, not 6). */
static void
jw_double(JsonWriter *w, const char *key, double value)
{
	char		digits[DOUBLE_SHORTEST_DECIMAL_LEN];

	jw_key(w, key);
	if (isnan(value))
		appendStringInfoString(w->buf, "\"NaN\"");
	else if (isinf(value))
		appendStringInfoString(w->buf, value > 0 ? "\"Infinity\"" : "\"-Infinity\"");
	else if (value == floor(value) && fabs(value) < 1e15)
		appendStringInfo(w->buf, "%.1f", value);
	else
	{
		double_to_shortest_decimal_buf(value, digits);
		appendStringInfoString(w->buf, digits);
	}
}

static void
jw_string(JsonWriter *w, const char *key, const char *utf8)
{
	jw_key(w, key);
	if (utf8 == NULL)
		appendStringInfoString(w->buf, "null");
	else
		escape_json(w->buf, StiggTextFromSidecar(utf8));
}

static void
jw_enum(JsonWriter *w, const char *key, const ProtobufCEnumDescriptor *desc, int value)
{
	const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(desc, value);

	jw_key(w, key);
	if (v != NULL)
		escape_json(w->buf, v->name);
	else
		appendStringInfo(w->buf, "%d", value);	/* a value newer than us */
}

static void
jw_timestamp(JsonWriter *w, const char *key, const Google__Protobuf__Timestamp *ts)
{
	time_t		secs = (time_t) ts->seconds;
	struct tm	tm;
	char		text[64];

	jw_key(w, key);
	if (gmtime_r(&secs, &tm) == NULL)
	{
		appendStringInfoString(w->buf, "null");
		return;
	}
	strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm);
	appendStringInfo(w->buf, "\"%s", text);
	if (ts->nanos % 1000000 == 0 && ts->nanos != 0)
		appendStringInfo(w->buf, ".%03d", ts->nanos / 1000000);
	else if (ts->nanos % 1000 == 0 && ts->nanos != 0)
		appendStringInfo(w->buf, ".%06d", ts->nanos / 1000);
	else if (ts->nanos != 0)
		appendStringInfo(w->buf, ".%09d", ts->nanos);
	appendStringInfoString(w->buf, "Z\"");
}

int
StiggPbFieldNumber(const ProtobufCMessage *msg, const char *field)
{
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, field);

	if (f == NULL)
		elog(ERROR, "message %s has no field %s", msg->descriptor->name, field);
	return (int) f->id;
}

char *
StiggTextFromSidecar(const char *utf8)
{
	if (utf8 == NULL)
		return NULL;
	/* validates the bytes too, even when no conversion is needed */
	return pg_any_to_server(utf8, strlen(utf8), PG_UTF8);
}

const char *
StiggEnumName(const ProtobufCEnumDescriptor *desc, int value)
{
	const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(desc, value);

	if (v != NULL)
		return v->name;
	return psprintf("%d", value);
}

TimestampTz
StiggTimestampFromPb(const Google__Protobuf__Timestamp *ts)
{
	int64		epoch_shift = (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
	TimestampTz result;

	if (ts->seconds < MIN_TIMESTAMP / USECS_PER_SEC + epoch_shift ||
		ts->seconds > END_TIMESTAMP / USECS_PER_SEC + epoch_shift)
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("timestamp from the stigg sidecar is out of range"),
				 errdetail("It is %lld seconds after 1970-01-01.", (long long) ts->seconds)));
	result = (ts->seconds - epoch_shift) * USECS_PER_SEC + ts->nanos / 1000;
	return result;
}

Google__Protobuf__Timestamp *
StiggTimestampToPb(TimestampTz t)
{
	Google__Protobuf__Timestamp *ts = palloc(sizeof(Google__Protobuf__Timestamp));
	int64		epoch_shift = (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
	int64		secs = t / USECS_PER_SEC;
	int64		usecs = t % USECS_PER_SEC;

	google__protobuf__timestamp__init(ts);
	if (usecs < 0)
	{
		secs -= 1;
		usecs += USECS_PER_SEC;
	}
	ts->seconds = secs + epoch_shift;
	ts->nanos = (int32) (usecs * 1000);
	return ts;
}

/* Both DimensionsEntry messages are laid out like this. */
typedef struct DimensionsEntry
{
	ProtobufCMessage base;
	char	   *key;
	Stigg__Sidecar__V1__EventDimensionValue *value;
} DimensionsEntry;

StaticAssertDecl(sizeof(DimensionsEntry) == sizeof(Stigg__Sidecar__V1__ReportUsageRequest__DimensionsEntry) &&
				 sizeof(DimensionsEntry) == sizeof(Stigg__Sidecar__V1__Event__DimensionsEntry),
				 "dimension entries differ in layout");

size_t
StiggDimensionsToPb(Jsonb *dims, const char *argname,
					const ProtobufCMessageDescriptor *entry_type,
					ProtobufCMessage ***entries)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	size_t		n = 0;
	size_t		cap;
	char	   *key = NULL;

	*entries = NULL;
	if (dims == NULL)
		return 0;
	if (!JB_ROOT_IS_OBJECT(dims) || JB_ROOT_IS_SCALAR(dims))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a JSON object", argname),
				 errdetail("Dimensions map names to strings, numbers or booleans, as in {\"plan\": \"pro\", \"seats\": 3}.")));
	cap = Max(JB_ROOT_COUNT(dims), 1);
	*entries = palloc(sizeof(ProtobufCMessage *) * cap);

	it = JsonbIteratorInit(&dims->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		DimensionsEntry *e;
		Stigg__Sidecar__V1__EventDimensionValue *dv;

		if (tok == WJB_KEY)
		{
			if (v.val.string.len == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("%s must not have an empty key", argname)));
			key = pg_server_to_any(pnstrdup(v.val.string.val, v.val.string.len),
								   v.val.string.len, PG_UTF8);
			continue;
		}
		if (tok != WJB_VALUE)
			continue;

		dv = palloc(sizeof(*dv));
		stigg__sidecar__v1__event_dimension_value__init(dv);
		switch (v.type)
		{
			case jbvString:
				dv->value_case = STIGG__SIDECAR__V1__EVENT_DIMENSION_VALUE__VALUE_STRING_VALUE;
				dv->string_value = pg_server_to_any(pnstrdup(v.val.string.val, v.val.string.len),
													v.val.string.len, PG_UTF8);
				break;
			case jbvNumeric:
				{
					double		d = DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
																	   NumericGetDatum(v.val.numeric)));

					if (isinf(d) || isnan(d))
						ereport(ERROR,
								(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
								 errmsg("%s value of \"%s\" is not a finite number", argname, key)));
					dv->value_case = STIGG__SIDECAR__V1__EVENT_DIMENSION_VALUE__VALUE_NUMBER_VALUE;
					dv->number_value = d;
				}
				break;
			case jbvBool:
				dv->value_case = STIGG__SIDECAR__V1__EVENT_DIMENSION_VALUE__VALUE_BOOLEAN_VALUE;
				dv->boolean_value = v.val.boolean;
				break;
			default:
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("%s value of \"%s\" must be a string, a number or a boolean", argname, key),
						 errdetail("Dimensions are flat: no null, array or object values.")));
		}
		e = palloc(entry_type->sizeof_message);
		protobuf_c_message_init(entry_type, e);
		e->key = key;
		e->value = dv;
		(*entries)[n++] = (ProtobufCMessage *) e;
	}
	return n;
}

/* ---- messages ---- */

static void
write_feature(JsonWriter *w, const Stigg__Sidecar__V1__EntitlementFeature *f, bool sparse)
{
	jw_open(w, "feature", '{');
	if (!sparse || f->id[0] != '\0')
		jw_string(w, "id", f->id);
	if (!sparse || f->feature_type != 0)
		jw_enum(w, "featureType", &stigg__sidecar__v1__feature_type__descriptor, f->feature_type);
	if (PB_HAS(f, units))
		jw_string(w, "units", f->units);
	else if (!sparse)
		jw_null(w, "units");
	if (PB_HAS(f, units_plural))
		jw_string(w, "unitsPlural", f->units_plural);
	else if (!sparse)
		jw_null(w, "unitsPlural");
	if (!sparse || f->meter_type != 0)
		jw_enum(w, "meterType", &stigg__sidecar__v1__meter_type__descriptor, f->meter_type);
	if (!sparse || f->is_metered)
		jw_bool(w, "isMetered", f->is_metered);
	jw_close(w, '}');
}

/* The feature of a typed entitlement: an object, or null when absent. */
#define WRITE_FEATURE_OF(w, e, sparse) \
	do { \
		if (PB_HAS(e, feature) && (e)->feature != NULL) \
			write_feature((w), (e)->feature, (sparse)); \
		else if (!(sparse)) \
			jw_null((w), "feature"); \
	} while (0)

static void
write_boolean(JsonWriter *w, const char *key,
			  const Stigg__Sidecar__V1__BooleanEntitlement *e, bool sparse)
{
	static const Stigg__Sidecar__V1__BooleanEntitlement empty =
		STIGG__SIDECAR__V1__BOOLEAN_ENTITLEMENT__INIT;

	if (e == NULL)
		e = &empty;
	jw_open(w, key, '{');
	WRITE_FEATURE_OF(w, e, sparse);
	jw_close(w, '}');
}

static void
write_numeric(JsonWriter *w, const char *key,
			  const Stigg__Sidecar__V1__NumericEntitlement *e, bool sparse)
{
	static const Stigg__Sidecar__V1__NumericEntitlement empty =
		STIGG__SIDECAR__V1__NUMERIC_ENTITLEMENT__INIT;

	if (e == NULL)
		e = &empty;
	jw_open(w, key, '{');
	WRITE_FEATURE_OF(w, e, sparse);
	if (PB_HAS(e, value))
		jw_int(w, "value", e->value);
	else if (!sparse)
		jw_null(w, "value");
	if (!sparse || e->is_unlimited)
		jw_bool(w, "isUnlimited", e->is_unlimited);
	jw_close(w, '}');
}

static void
write_metered(JsonWriter *w, const char *key,
			  const Stigg__Sidecar__V1__MeteredEntitlement *e, bool sparse)
{
	static const Stigg__Sidecar__V1__MeteredEntitlement empty =
		STIGG__SIDECAR__V1__METERED_ENTITLEMENT__INIT;

	if (e == NULL)
		e = &empty;
	jw_open(w, key, '{');
	WRITE_FEATURE_OF(w, e, sparse);
	if (PB_HAS(e, usage_limit))
		jw_double(w, "usageLimit", e->usage_limit);
	else if (!sparse)
		jw_null(w, "usageLimit");
	if (!sparse || e->is_unlimited)
		jw_bool(w, "isUnlimited", e->is_unlimited);
	if (!sparse || e->current_usage != 0)
		jw_double(w, "currentUsage", e->current_usage);
	if (PB_HAS(e, reset_period) || !sparse)
		jw_enum(w, "resetPeriod", &stigg__sidecar__v1__entitlement_reset_period__descriptor,
				PB_HAS(e, reset_period) ? e->reset_period : 0);
	if (PB_HAS(e, next_reset_date) && e->next_reset_date != NULL)
		jw_timestamp(w, "nextResetDate", e->next_reset_date);
	else if (PB_HAS(e, usage_period_end) && e->usage_period_end != NULL)
		jw_timestamp(w, "nextResetDate", e->usage_period_end);
	else if (!sparse)
		jw_null(w, "nextResetDate");
	jw_close(w, '}');
}

static void
write_string_array(JsonWriter *w, const char *key, size_t n, char **values)
{
	jw_open(w, key, '[');
	for (size_t i = 0; i < n; i++)
		jw_string(w, NULL, values[i]);
	jw_close(w, ']');
}

static void
write_enum(JsonWriter *w, const char *key,
		   const Stigg__Sidecar__V1__EnumEntitlement *e, bool sparse)
{
	static const Stigg__Sidecar__V1__EnumEntitlement empty =
		STIGG__SIDECAR__V1__ENUM_ENTITLEMENT__INIT;

	if (e == NULL)
		e = &empty;
	jw_open(w, key, '{');
	WRITE_FEATURE_OF(w, e, sparse);
	if (!sparse || e->n_enum_values > 0)
		write_string_array(w, "enumValues", e->n_enum_values, e->enum_values);
	jw_close(w, '}');
}

/* hasAccess, isFallback and accessDeniedReason open every typed answer. */
#define WRITE_ACCESS_HEADER(w, r) \
	do { \
		jw_bool((w), "hasAccess", (r)->has_access); \
		jw_bool((w), "isFallback", (r)->is_fallback); \
		if (PB_HAS(r, access_denied_reason)) \
			jw_enum((w), "accessDeniedReason", \
					&stigg__sidecar__v1__access_denied_reason__descriptor, \
					(r)->access_denied_reason); \
		else \
			jw_null((w), "accessDeniedReason"); \
	} while (0)

static void
writer_init(JsonWriter *w, StringInfo out)
{
	memset(w, 0, sizeof(*w));
	w->buf = out;
}

void
StiggJsonBooleanResponse(StringInfo out,
						 const Stigg__Sidecar__V1__GetBooleanEntitlementResponse *r)
{
	JsonWriter	w;

	writer_init(&w, out);
	jw_open(&w, NULL, '{');
	WRITE_ACCESS_HEADER(&w, r);
	write_boolean(&w, "entitlement", r->entitlement, false);
	jw_close(&w, '}');
}

void
StiggJsonNumericResponse(StringInfo out,
						 const Stigg__Sidecar__V1__GetNumericEntitlementResponse *r)
{
	JsonWriter	w;

	writer_init(&w, out);
	jw_open(&w, NULL, '{');
	WRITE_ACCESS_HEADER(&w, r);
	write_numeric(&w, "entitlement", r->entitlement, false);
	jw_close(&w, '}');
}

void
StiggJsonMeteredResponse(StringInfo out,
						 const Stigg__Sidecar__V1__GetMeteredEntitlementResponse *r)
{
	JsonWriter	w;

	writer_init(&w, out);
	jw_open(&w, NULL, '{');
	WRITE_ACCESS_HEADER(&w, r);
	jw_double(&w, "requestedUsage", r->requested_usage);
	write_metered(&w, "entitlement", r->entitlement, false);
	jw_close(&w, '}');
}

void
StiggJsonEnumResponse(StringInfo out,
					  const Stigg__Sidecar__V1__GetEnumEntitlementResponse *r)
{
	JsonWriter	w;

	writer_init(&w, out);
	jw_open(&w, NULL, '{');
	WRITE_ACCESS_HEADER(&w, r);
	write_string_array(&w, "requestedValues", r->n_requested_values, r->requested_values);
	write_enum(&w, "entitlement", r->entitlement, false);
	jw_close(&w, '}');
}

void
StiggJsonEntitlementResponse(StringInfo out,
							 const Stigg__Sidecar__V1__GetEntitlementResponse *r)
{
	JsonWriter	w;

	writer_init(&w, out);
	jw_open(&w, NULL, '{');
	WRITE_ACCESS_HEADER(&w, r);
	switch (r->entitlement_case)
	{
		case STIGG__SIDECAR__V1__GET_ENTITLEMENT_RESPONSE__ENTITLEMENT_BOOLEAN:
			write_boolean(&w, "boolean", r->boolean, false);
			break;
		case STIGG__SIDECAR__V1__GET_ENTITLEMENT_RESPONSE__ENTITLEMENT_NUMERIC:
			write_numeric(&w, "numeric", r->numeric, false);
			break;
		case STIGG__SIDECAR__V1__GET_ENTITLEMENT_RESPONSE__ENTITLEMENT_METERED:
			write_metered(&w, "metered", r->metered, false);
			break;
		case STIGG__SIDECAR__V1__GET_ENTITLEMENT_RESPONSE__ENTITLEMENT_ENUM:
			write_enum(&w, "enum", r->enum_, false);
			break;
		default:
			break;
	}
	jw_close(&w, '}');
}

void
StiggJsonEntitlementsResponse(StringInfo out,
							  const Stigg__Sidecar__V1__GetEntitlementsResponse *r)
{
	JsonWriter	w;

	writer_init(&w, out);
	jw_open(&w, NULL, '{');
	jw_open(&w, "entitlements", '[');
	for (size_t i = 0; i < r->n_entitlements; i++)
	{
		const Stigg__Sidecar__V1__Entitlement *e = r->entitlements[i];

		jw_open(&w, NULL, '{');
		switch (e->entitlement_case)
		{
			case STIGG__SIDECAR__V1__ENTITLEMENT__ENTITLEMENT_BOOLEAN:
				write_boolean(&w, "boolean", e->boolean, true);
				break;
			case STIGG__SIDECAR__V1__ENTITLEMENT__ENTITLEMENT_NUMERIC:
				write_numeric(&w, "numeric", e->numeric, true);
				break;
			case STIGG__SIDECAR__V1__ENTITLEMENT__ENTITLEMENT_METERED:
				write_metered(&w, "metered", e->metered, true);
				break;
			case STIGG__SIDECAR__V1__ENTITLEMENT__ENTITLEMENT_ENUM:
				write_enum(&w, "enum", e->enum_, true);
				break;
			default:
				break;
		}
		jw_close(&w, '}');
	}
	jw_close(&w, ']');
	if (PB_HAS(r, access_denied_reason))
		jw_enum(&w, "accessDeniedReason",
				&stigg__sidecar__v1__access_denied_reason__descriptor,
				r->access_denied_reason);
	jw_close(&w, '}');
}
