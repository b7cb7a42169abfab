/*-------------------------------------------------------------------------
 * pbjson.h
 *	  Sidecar messages as JSON text and SQL values.
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_PBJSON_H
#define STIGG_PBJSON_H

#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "sidecar.pb-c.h"

/* Presence of an optional field, spelled as a one-member oneof "_<field>". */
#define PB_HAS(msg, field) ((msg)->_##field##_case != 0)
#define PB_SET(msg, field, value) \
	do { \
		(msg)->field = (value); \
		(msg)->_##field##_case = StiggPbFieldNumber(&(msg)->base, #field); \
	} while (0)

extern int	StiggPbFieldNumber(const ProtobufCMessage *msg, const char *field);

/* A string from the sidecar (UTF-8) in the database encoding, or NULL. */
extern char *StiggTextFromSidecar(const char *utf8);
extern const char *StiggEnumName(const ProtobufCEnumDescriptor *desc, int value);
extern TimestampTz StiggTimestampFromPb(const Google__Protobuf__Timestamp *ts);
extern Google__Protobuf__Timestamp *StiggTimestampToPb(TimestampTz t);

/*
 * A flat jsonb object of strings, numbers and booleans as the map entries
 * of a "dimensions" field (entry_type: ReportUsageRequest or Event's
 * DimensionsEntry). Returns the number of entries. Raises on anything
 * else, naming argname, so that bad input is refused when it is queued.
 */
extern size_t StiggDimensionsToPb(Jsonb *dims, const char *argname,
								  const ProtobufCMessageDescriptor *entry_type,
								  ProtobufCMessage ***entries);

/*
 * The typed answers, in the shape of the Sidecar SDK guide's "Result"
 * blocks: every field present, null where absent.
 */
extern void StiggJsonBooleanResponse(StringInfo out,
									 const Stigg__Sidecar__V1__GetBooleanEntitlementResponse *r);
extern void StiggJsonNumericResponse(StringInfo out,
									 const Stigg__Sidecar__V1__GetNumericEntitlementResponse *r);
extern void StiggJsonMeteredResponse(StringInfo out,
									 const Stigg__Sidecar__V1__GetMeteredEntitlementResponse *r);
extern void StiggJsonEnumResponse(StringInfo out,
								  const Stigg__Sidecar__V1__GetEnumEntitlementResponse *r);
extern void StiggJsonEntitlementResponse(StringInfo out,
										 const Stigg__Sidecar__V1__GetEntitlementResponse *r);

/* All entitlements, as the guide's GetEntitlements block: defaults omitted. */
extern void StiggJsonEntitlementsResponse(StringInfo out,
										  const Stigg__Sidecar__V1__GetEntitlementsResponse *r);

#endif							/* STIGG_PBJSON_H */
