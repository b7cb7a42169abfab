/*-------------------------------------------------------------------------
 * triggers.c
 *	  Generic trigger functions: stigg_enforce gates writes, stigg_track_usage
 *	  reports them.
 *
 *	  stigg_enforce(feature_id, customer_column [, resource_column [, quantity]])
 *	  stigg_track_usage(feature_id, customer_column [, resource_column [, quantity]])
 *
 * resource_column may be '' for none; quantity is a numeric column's name
 * or a number, 1 by default. Columns are looked up by name among the
 * table's attributes, once per statement, and, when a column was renamed
 * since, by the attribute number that an event trigger recorded in
 * stigg.trigger_columns at CREATE TRIGGER. No argument ever becomes SQL
 * text. Statement-level stigg_track_usage reads the transition tables
 * directly and queues one row per (customer, resource) and statement.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/tuplestore.h"

#include "access.h"
#include "args.h"
#include "guc.h"
#include "queue.h"
#include "sidecar.pb-c.h"
#include "stats.h"

PG_FUNCTION_INFO_V1(stigg_enforce);
PG_FUNCTION_INFO_V1(stigg_track_usage);

/* The entitlement-denied SQLSTATE, class SG (Stigg). */
#define ERRCODE_STIGG_ENTITLEMENT_DENIED MAKE_SQLSTATE('S','G','0','0','1')

typedef struct TriggerSpec
{
	Oid			tgoid;
	char	   *feature;		/* UTF-8 */
	text	   *feature_text;
	AttrNumber	customer_att;
	AttrNumber	resource_att;	/* 0: none */
	AttrNumber	quantity_att;	/* 0: constant */
	double		quantity;
} TriggerSpec;

/* The attribute number recorded when the trigger was created, or 0. */
static AttrNumber
recorded_column(Oid tgoid, int arg)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[2] = {OIDOID, INT4OID};
	Datum		values[2];
	AttrNumber	attnum = InvalidAttrNumber;

	values[0] = ObjectIdGetDatum(tgoid);
	values[1] = Int32GetDatum(arg);
	StiggBeginAsOwner();
	SPI_connect();
	if (plan == NULL)
	{
		plan = SPI_prepare("SELECT attnum FROM stigg.trigger_columns"
						   " WHERE trigger_oid OPERATOR(pg_catalog.=) $1 AND arg OPERATOR(pg_catalog.=) $2",
						   2, types);
		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the trigger column query");
	}
	if (SPI_execute_plan(plan, values, NULL, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;

		attnum = DatumGetInt16(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	StiggEndAsOwner();
	return attnum;
}

/*
 * A column named by argument arg (1-based), looked up by name; if the name
 * is gone, by the attribute number recorded when the trigger was created,
 * so that renaming a column does not break its triggers.
 */
static AttrNumber
find_column(Relation rel, Oid tgoid, int arg, const char *fn, const char *role,
			const char *name)
{
	TupleDesc	desc = RelationGetDescr(rel);
	AttrNumber	recorded;

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	recorded = recorded_column(tgoid, arg);
	if (recorded > 0 && recorded <= desc->natts &&
		!TupleDescAttr(desc, recorded - 1)->attisdropped)
		return recorded;
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("%s: %s column \"%s\" does not exist in table \"%s\"",
					fn, role, name, RelationGetRelationName(rel)),
			 errhint("Trigger arguments after the feature name are columns of the table.")));
	return InvalidAttrNumber;
}

static bool
numeric_type(Oid t)
{
	return t == INT2OID || t == INT4OID || t == INT8OID || t == FLOAT4OID ||
		t == FLOAT8OID || t == NUMERICOID;
}

/* Parses and resolves the trigger's arguments, once per statement. */
static TriggerSpec *
trigger_spec(FunctionCallInfo fcinfo, const char *fn)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Trigger    *tg = td->tg_trigger;
	TriggerSpec *spec = (TriggerSpec *) fcinfo->flinfo->fn_extra;
	MemoryContext old;
	char	   *end;

	if (spec != NULL && spec->tgoid == tg->tgoid)
		return spec;

	if (tg->tgnargs < 2 || tg->tgnargs > 4)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s takes 2 to 4 arguments: feature_id, customer_column [, resource_column [, quantity]]", fn),
				 errdetail("Trigger \"%s\" has %d.", tg->tgname, tg->tgnargs)));
	if (tg->tgargs[0][0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: feature_id must not be empty", fn)));

	old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
	spec = palloc0(sizeof(TriggerSpec));
	spec->tgoid = tg->tgoid;
	spec->feature_text = cstring_to_text(tg->tgargs[0]);
	spec->feature = StiggCStringToUtf8(tg->tgargs[0]);
	spec->customer_att = find_column(td->tg_relation, tg->tgoid, 2, fn, "customer", tg->tgargs[1]);
	if (tg->tgnargs >= 3 && tg->tgargs[2][0] != '\0')
		spec->resource_att = find_column(td->tg_relation, tg->tgoid, 3, fn, "resource", tg->tgargs[2]);
	spec->quantity = 1;
	if (tg->tgnargs == 4)
	{
		spec->quantity = strtod(tg->tgargs[3], &end);
		if (end == tg->tgargs[3] || *end != '\0')
		{
			Oid			t;

			spec->quantity_att = find_column(td->tg_relation, tg->tgoid, 4, fn, "quantity", tg->tgargs[3]);
			t = TupleDescAttr(RelationGetDescr(td->tg_relation), spec->quantity_att - 1)->atttypid;
			if (!numeric_type(t))
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("%s: quantity column \"%s\" must be numeric, not %s",
								fn, tg->tgargs[3], format_type_be(t))));
		}
		else if (isnan(spec->quantity) || isinf(spec->quantity))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s: quantity must be a finite number", fn)));
	}
	MemoryContextSwitchTo(old);
	fcinfo->flinfo->fn_extra = spec;
	return spec;
}

/* A column's value as text in the database encoding, or NULL. */
static text *
datum_text(Datum d, bool isnull, Oid t)
{
	Oid			typoutput;
	bool		varlena;

	if (isnull)
		return NULL;
	if (t == TEXTOID || t == VARCHAROID)
		return DatumGetTextPP(d);
	getTypeOutputInfo(t, &typoutput, &varlena);
	return cstring_to_text(OidOutputFunctionCall(typoutput, d));
}

static text *
column_text(HeapTuple tup, TupleDesc desc, AttrNumber att)
{
	bool		isnull;
	Datum		d;

	if (att == InvalidAttrNumber)
		return NULL;
	d = heap_getattr(tup, att, desc, &isnull);
	return datum_text(d, isnull, TupleDescAttr(desc, att - 1)->atttypid);
}

static double
datum_quantity(TriggerSpec *spec, Datum d, bool isnull, TupleDesc desc)
{
	double		q;

	if (spec->quantity_att == InvalidAttrNumber)
		return spec->quantity;
	if (isnull)
		return 0;
	switch (TupleDescAttr(desc, spec->quantity_att - 1)->atttypid)
	{
		case INT2OID:
			q = DatumGetInt16(d);
			break;
		case INT4OID:
			q = DatumGetInt32(d);
			break;
		case INT8OID:
			q = (double) DatumGetInt64(d);
			break;
		case FLOAT4OID:
			q = DatumGetFloat4(d);
			break;
		case FLOAT8OID:
			q = DatumGetFloat8(d);
			break;
		default:
			q = DatumGetFloat8(DirectFunctionCall1(numeric_float8, d));
			break;
	}
	if (isnan(q) || isinf(q))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("quantity must be a finite number")));
	return q;
}

static double
quantity_of(TriggerSpec *spec, HeapTuple tup, TupleDesc desc)
{
	bool		isnull = true;
	Datum		d = (Datum) 0;

	if (spec->quantity_att != InvalidAttrNumber)
		d = heap_getattr(tup, spec->quantity_att, desc, &isnull);
	return datum_quantity(spec, d, isnull, desc);
}

static text *
required_customer(HeapTuple tup, TupleDesc desc, TriggerSpec *spec, const char *fn)
{
	text	   *c = column_text(tup, desc, spec->customer_att);

	if (c == NULL || VARSIZE_ANY_EXHDR(c) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s: the customer column \"%s\" is %s", fn,
						NameStr(TupleDescAttr(desc, spec->customer_att - 1)->attname),
						c == NULL ? "null" : "empty")));
	return c;
}

static char *
utf8_or_null(text *t)
{
	return t ? StiggUtf8(t) : NULL;
}

static bool
same_text(text *a, text *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

/* ---- stigg_enforce ---- */

static void
deny(TriggerSpec *spec, const char *customer, const char *resource, StiggAccess *a)
{
	const ProtobufCEnumValue *reason;

	StiggStatCount(STIGG_STAT_DENIED);
	reason = a->ent.denied_reason ?
		protobuf_c_enum_descriptor_get_value(&stigg__sidecar__v1__access_denied_reason__descriptor,
											 a->ent.denied_reason) : NULL;

	if (a->ent.kind == STIGG_KIND_METERED && a->ent.has_limit &&
		(a->ent.denied_reason == 0 ||
		 a->ent.denied_reason == STIGG__SIDECAR__V1__ACCESS_DENIED_REASON__ACCESS_DENIED_REASON_REQUESTED_USAGE_EXCEEDING_LIMIT))
		ereport(ERROR,
				(errcode(ERRCODE_STIGG_ENTITLEMENT_DENIED),
				 errmsg("customer \"%s\" has reached the limit of feature \"%s\"%s%s",
						customer, spec->feature, resource ? " for resource " : "",
						resource ? resource : ""),
				 errdetail("Usage would be %g of %g: %g in use (including reports not yet acknowledged by Stigg) and %g requested.",
						   a->effective_usage + a->requested, a->ent.usage_limit,
						   a->effective_usage, a->requested),
				 errhint("Free up usage or move the customer to a plan with a higher limit.")));
	ereport(ERROR,
			(errcode(ERRCODE_STIGG_ENTITLEMENT_DENIED),
			 errmsg("customer \"%s\" is not entitled to feature \"%s\"%s%s",
					customer, spec->feature, resource ? " for resource " : "",
					resource ? resource : ""),
			 reason ? errdetail("Stigg's reason: %s.", reason->name) : errdetail("Stigg denies access."),
			 errhint("Check the customer's subscription in Stigg.")));
}

static void
enforce_row(TriggerSpec *spec, text *customer, text *resource, double requested)
{
	StiggAccess a;
	char	   *c = StiggUtf8(customer);
	char	   *r = utf8_or_null(resource);

	StiggCheckAccess(c, spec->feature, r, requested, requested > 0, &a);
	if (!a.has_access)
		deny(spec, text_to_cstring(customer), resource ? text_to_cstring(resource) : NULL, &a);
}

Datum
stigg_enforce(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TriggerSpec *spec;
	TupleDesc	desc;
	HeapTuple	newtup;
	text	   *customer;
	text	   *resource;
	double		qty;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		TRIGGER_FIRED_BY_DELETE(td->tg_event) || TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("stigg_enforce must be a BEFORE INSERT or UPDATE trigger FOR EACH ROW")));
	StiggStatCount(STIGG_STAT_ENFORCE);
	newtup = TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : td->tg_trigtuple;
	spec = trigger_spec(fcinfo, "stigg_enforce");
	if (!stigg_enforce_enabled)
		return PointerGetDatum(newtup);

	desc = RelationGetDescr(td->tg_relation);
	customer = required_customer(newtup, desc, spec, "stigg_enforce");
	resource = column_text(newtup, desc, spec->resource_att);
	qty = quantity_of(spec, newtup, desc);

	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		HeapTuple	oldtup = td->tg_trigtuple;
		text	   *old_customer = column_text(oldtup, desc, spec->customer_att);
		text	   *old_resource = column_text(oldtup, desc, spec->resource_att);

		/* within the same key only an increase needs room */
		if (same_text(customer, old_customer) && same_text(resource, old_resource))
		{
			qty -= quantity_of(spec, oldtup, desc);
			if (qty <= 0)
				return PointerGetDatum(newtup);
		}
	}
	enforce_row(spec, customer, resource, Max(qty, 0));
	return PointerGetDatum(newtup);
}

/* ---- stigg_track_usage ---- */

/* Sums per (customer, resource), keyed by a 128-bit hash of their bytes. */
typedef struct UsageSum
{
	uint64		key[2];
	text	   *customer;
	text	   *resource;
	double		sum;
	int			order;
} UsageSum;

static void
add_to(HTAB *sums, int *next, text *customer, text *resource, double v)
{
	uint64		key[2];
	UsageSum   *u;
	bool		found;
	int			lc = VARSIZE_ANY_EXHDR(customer);

	key[0] = hash_bytes_extended((unsigned char *) VARDATA_ANY(customer), lc, 1);
	key[1] = hash_bytes_extended((unsigned char *) VARDATA_ANY(customer), lc, 2);
	if (resource != NULL)
	{
		int			lr = VARSIZE_ANY_EXHDR(resource);

		key[0] = hash_combine64(key[0], hash_bytes_extended((unsigned char *) VARDATA_ANY(resource), lr, 3));
		key[1] = hash_combine64(key[1], hash_bytes_extended((unsigned char *) VARDATA_ANY(resource), lr, 4));
	}
	u = hash_search(sums, key, HASH_ENTER, &found);
	if (!found)
	{
		/* the transition table's slot is reused: keep copies */
		u->customer = DatumGetTextPCopy(PointerGetDatum(customer));
		u->resource = resource ? DatumGetTextPCopy(PointerGetDatum(resource)) : NULL;
		u->sum = 0;
		u->order = (*next)++;
	}
	u->sum += v;
}

static void
sum_transition(HTAB *sums, int *next, Tuplestorestate *ts, Relation rel,
			   TriggerSpec *spec, double sign)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	Oid			ctype = TupleDescAttr(desc, spec->customer_att - 1)->atttypid;
	Oid			rtype = spec->resource_att ? TupleDescAttr(desc, spec->resource_att - 1)->atttypid : InvalidOid;
	MemoryContext row_ctx = AllocSetContextCreate(CurrentMemoryContext, "stigg row",
												  ALLOCSET_SMALL_SIZES);

	tuplestore_rescan(ts);
	while (tuplestore_gettupleslot(ts, true, false, slot))
	{
		bool		isnull = true;
		Datum		d = (Datum) 0;
		double		q;
		text	   *customer;
		text	   *resource = NULL;
		MemoryContext old;

		if (spec->quantity_att != InvalidAttrNumber)
			d = slot_getattr(slot, spec->quantity_att, &isnull);
		q = datum_quantity(spec, d, isnull, desc);
		if (q == 0)
			continue;
		old = MemoryContextSwitchTo(row_ctx);
		d = slot_getattr(slot, spec->customer_att, &isnull);
		customer = datum_text(d, isnull, ctype);
		if (customer == NULL || VARSIZE_ANY_EXHDR(customer) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("stigg_track_usage: the customer column \"%s\" is %s",
							NameStr(TupleDescAttr(desc, spec->customer_att - 1)->attname),
							customer == NULL ? "null" : "empty")));
		if (spec->resource_att)
		{
			d = slot_getattr(slot, spec->resource_att, &isnull);
			resource = datum_text(d, isnull, rtype);
		}
		MemoryContextSwitchTo(old);
		add_to(sums, next, customer, resource, sign * q);
		MemoryContextReset(row_ctx);
	}
	ExecDropSingleTupleTableSlot(slot);
	MemoryContextDelete(row_ctx);
}

static int
by_order(const void *a, const void *b)
{
	return (*(UsageSum * const *) a)->order - (*(UsageSum * const *) b)->order;
}

static void
report(TriggerSpec *spec, text *customer, text *resource, double v)
{
	if (v != 0)
		StiggEnqueueUsage(customer, spec->feature_text, resource, v, false, NULL, false, 0);
}

Datum
stigg_track_usage(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TriggerSpec *spec;
	TupleDesc	desc;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(td->tg_event) ||
		TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("stigg_track_usage must be an AFTER INSERT, UPDATE or DELETE trigger")));
	StiggStatCount(STIGG_STAT_TRACK_USAGE);
	spec = trigger_spec(fcinfo, "stigg_track_usage");
	desc = RelationGetDescr(td->tg_relation);

	if (TRIGGER_FIRED_FOR_ROW(td->tg_event))
	{
		HeapTuple	oldtup = TRIGGER_FIRED_BY_INSERT(td->tg_event) ? NULL : td->tg_trigtuple;
		HeapTuple	newtup = TRIGGER_FIRED_BY_INSERT(td->tg_event) ? td->tg_trigtuple :
			TRIGGER_FIRED_BY_UPDATE(td->tg_event) ? td->tg_newtuple : NULL;
		text	   *oc = NULL,
				   *orr = NULL,
				   *nc = NULL,
				   *nr = NULL;
		double		oq = 0,
					nq = 0;

		if (oldtup)
		{
			oq = quantity_of(spec, oldtup, desc);
			if (oq != 0)
				oc = required_customer(oldtup, desc, spec, "stigg_track_usage");
			orr = column_text(oldtup, desc, spec->resource_att);
		}
		if (newtup)
		{
			nq = quantity_of(spec, newtup, desc);
			if (nq != 0)
				nc = required_customer(newtup, desc, spec, "stigg_track_usage");
			nr = column_text(newtup, desc, spec->resource_att);
		}
		if (oc && nc && same_text(oc, nc) && same_text(orr, nr))
			report(spec, nc, nr, nq - oq);	/* same key: the difference */
		else
		{
			if (oc)
				report(spec, oc, orr, -oq);
			if (nc)
				report(spec, nc, nr, nq);
		}
		return PointerGetDatum(NULL);
	}
	else
	{
		HASHCTL		info;
		HTAB	   *sums;
		HASH_SEQ_STATUS seq;
		UsageSum   *u;
		UsageSum  **list;
		int			n = 0;
		int			next = 0;

		if (td->tg_newtable == NULL && td->tg_oldtable == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
					 errmsg("a statement-level stigg_track_usage trigger needs transition tables"),
					 errhint("Add REFERENCING NEW TABLE AS new_rows (INSERT, UPDATE) or OLD TABLE AS old_rows (DELETE, UPDATE).")));
		memset(&info, 0, sizeof(info));
		info.keysize = sizeof(((UsageSum *) 0)->key);
		info.entrysize = sizeof(UsageSum);
		info.hcxt = CurrentMemoryContext;
		sums = hash_create("stigg usage sums", 64, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		if (td->tg_oldtable)
			sum_transition(sums, &next, td->tg_oldtable, td->tg_relation, spec, -1);
		if (td->tg_newtable)
			sum_transition(sums, &next, td->tg_newtable, td->tg_relation, spec, 1);

		/* one queue row per (customer, resource), in first-seen order */
		list = palloc(sizeof(UsageSum *) * Max(hash_get_num_entries(sums), 1));
		hash_seq_init(&seq, sums);
		while ((u = hash_seq_search(&seq)) != NULL)
			list[n++] = u;
		qsort(list, n, sizeof(UsageSum *), by_order);
		for (int i = 0; i < n; i++)
			report(spec, list[i]->customer, list[i]->resource, list[i]->sum);
		hash_destroy(sums);
		return PointerGetDatum(NULL);
	}
}
