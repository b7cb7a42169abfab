/*-------------------------------------------------------------------------
 * sidecar.c
 *	  Calls of the Stigg sidecar's methods from SQL, and the one place where
 *	  a call's outcome becomes an SQLSTATE.
 *
 * Messages are encoded and decoded with protobuf-c. Decoding allocates in
 * the caller's memory context, through an allocator that returns NULL
 * instead of raising an error, so that no longjmp crosses protobuf-c.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "sidecar.h"
#include "stats.h"
static void *
pb_alloc(void *allocator_data, size_t size)
{
	if (size == 0)
		size = 1;
	if (!AllocSizeIsValid(size))
		return NULL;
	return MemoryContextAllocExtended((MemoryContext) allocator_data, size,
									  MCXT_ALLOC_NO_OOM);
}

static void
pb_free(void *allocator_data, void *pointer)
{
	if (pointer != NULL)
		pfree(pointer);
}

static void
endpoint_from_settings(StiggEndpoint *ep)
{
	ep->host = stigg_sidecar_host;
	ep->port = stigg_sidecar_port;
	ep->tls = stigg_sidecar_tls;
	ep->ca_file = stigg_sidecar_ca_file;
	ep->timeout_ms = stigg_timeout_ms;
}

/*
 * gRPC status to SQLSTATE. Documented in the README's error table; keep the
 * two in step.
 */
static int
grpc_code_to_sqlstate(int code)
{
	switch (code)
	{
		case 1:					/* CANCELLED */
		case 4:					/* DEADLINE_EXCEEDED */
			return ERRCODE_QUERY_CANCELED;
		case 3:					/* INVALID_ARGUMENT */
		case 11:				/* OUT_OF_RANGE */
			return ERRCODE_INVALID_PARAMETER_VALUE;
		case 5:					/* NOT_FOUND */
			return ERRCODE_UNDEFINED_OBJECT;
		case 6:					/* ALREADY_EXISTS */
			return ERRCODE_DUPLICATE_OBJECT;
		case 7:					/* PERMISSION_DENIED */
			return ERRCODE_INSUFFICIENT_PRIVILEGE;
		case 16:				/* UNAUTHENTICATED */
			return ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
		case 8:					/* RESOURCE_EXHAUSTED */
			return ERRCODE_INSUFFICIENT_RESOURCES;
		case 9:					/* FAILED_PRECONDITION */
			return ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
		case 10:				/* ABORTED */
			return ERRCODE_T_R_SERIALIZATION_FAILURE;
		case 12:				/* UNIMPLEMENTED */
			return ERRCODE_FEATURE_NOT_SUPPORTED;
		case 14:				/* UNAVAILABLE */
			return ERRCODE_CONNECTION_FAILURE;
		default:				/* UNKNOWN, INTERNAL, DATA_LOSS, others */
			return ERRCODE_SYSTEM_ERROR;
	}
}

/* The only function that turns a transport outcome into an SQL error. */
static void
raise_call_error(const char *method, const StiggEndpoint *ep,
				 const StiggCallResult *res)
{
	if (res->status == STIGG_CALL_OK)
		elog(ERROR, "no error to raise for %s", method);
	switch (res->status)
	{
		case STIGG_CALL_OK:
			break;

		case STIGG_CALL_INTERRUPTED:
			/* a cancel or terminate arrived: let PostgreSQL report it */
			CHECK_FOR_INTERRUPTS();
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("canceling call of stigg sidecar method %s", method)));
			break;

		case STIGG_CALL_CONNECT_FAILED:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not connect to the stigg sidecar at %s:%d",
							ep->host, ep->port),
					 errdetail("%s", res->message),
					 errhint("Check that the sidecar is running and that stigg.sidecar_host and stigg.sidecar_port point at it.")));
			break;

		case STIGG_CALL_TLS_FAILED:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not establish a TLS connection to the stigg sidecar at %s:%d",
							ep->host, ep->port),
					 errdetail("%s", res->message),
					 errhint("Check that stigg.sidecar_ca_file names the CA that signed the sidecar's certificate, and that the certificate names host \"%s\".",
							 ep->host)));
			break;

		case STIGG_CALL_TIMEOUT:
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("stigg sidecar method %s timed out after %d ms",
							method, ep->timeout_ms),
					 errdetail("The sidecar at %s:%d did not answer in time.",
							   ep->host, ep->port),
					 errhint("Raise stigg.timeout, or check the sidecar's health.")));
			break;

		case STIGG_CALL_IO_FAILED:
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("connection to the stigg sidecar at %s:%d failed during method %s",
							ep->host, ep->port, method),
					 errdetail("%s", res->message)));
			break;

		case STIGG_CALL_PROTOCOL:
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("invalid response from the stigg sidecar at %s:%d to method %s",
							ep->host, ep->port, method),
					 errdetail("%s.", res->message),
					 errhint("Check that stigg.sidecar_host and stigg.sidecar_port point at a Stigg sidecar, and whether stigg.sidecar_tls should be on.")));
			break;

		case STIGG_CALL_GRPC_ERROR:
			ereport(ERROR,
					(errcode(grpc_code_to_sqlstate(res->grpc_code)),
					 errmsg("stigg sidecar method %s failed with status %s",
							method, StiggGrpcCodeName(res->grpc_code)),
					 res->message[0] ? errdetail("%s", res->message) : 0));
			break;

		case STIGG_CALL_NO_MEMORY:
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory during stigg sidecar method %s", method),
					 errdetail("%s", res->message)));
			break;
	}
}

ProtobufCMessage *
StiggSidecarInvoke(const char *method, const ProtobufCMessage *request,
				   const ProtobufCMessageDescriptor *response_type,
				   bool idempotent, StiggCallResult *res)
{
	StiggEndpoint ep;
	ProtobufCAllocator allocator;
	ProtobufCMessage *response;
	size_t		len;
	uint8_t    *buf;
	TimestampTz start;

	len = protobuf_c_message_get_packed_size(request);
	buf = palloc(len > 0 ? len : 1);
	protobuf_c_message_pack(request, buf);

	endpoint_from_settings(&ep);
	start = GetCurrentTimestamp();
	StiggTransportCall(&ep, method, buf, len, idempotent, res);
	StiggStatCall(res, (int64) (GetCurrentTimestamp() - start));
	pfree(buf);
	if (res->status != STIGG_CALL_OK)
		return NULL;

	allocator.alloc = pb_alloc;
	allocator.free = pb_free;
	allocator.allocator_data = CurrentMemoryContext;
	response = protobuf_c_message_unpack(response_type, &allocator,
										 res->body_len, res->body);
	if (response == NULL)
	{
		res->status = STIGG_CALL_PROTOCOL;
		snprintf(res->message, sizeof(res->message),
				 "the %zu-byte message is not a valid %s",
				 res->body_len, response_type->name);
	}
	return response;
}

ProtobufCMessage *
StiggSidecarCall(const char *method, const ProtobufCMessage *request,
				 const ProtobufCMessageDescriptor *response_type,
				 bool idempotent)
{
	StiggCallResult res;
	ProtobufCMessage *response;

	response = StiggSidecarInvoke(method, request, response_type, idempotent, &res);
	if (response == NULL)
		StiggRaiseCallError(method, &res);
	return response;
}

void
StiggRaiseCallError(const char *method, const StiggCallResult *res)
{
	StiggEndpoint ep;

	endpoint_from_settings(&ep);
	raise_call_error(method, &ep, res);
	pg_unreachable();			/* every case of raise_call_error raises */
}

bool
StiggCallIsRetryable(const StiggCallResult *res)
{
	switch (res->status)
	{
		case STIGG_CALL_OK:
			return false;
		case STIGG_CALL_GRPC_ERROR:
			switch (res->grpc_code)
			{
				case 1:			/* CANCELLED */
				case 4:			/* DEADLINE_EXCEEDED */
				case 7:			/* PERMISSION_DENIED: a key problem, not the row's */
				case 8:			/* RESOURCE_EXHAUSTED */
				case 10:		/* ABORTED */
				case 12:		/* UNIMPLEMENTED: an old sidecar, not the row's */
				case 14:		/* UNAVAILABLE */
				case 16:		/* UNAUTHENTICATED */
					return true;
				default:
					return false;
			}
		default:
			/* down, slow, TLS, garbage: the sidecar's state, not the row's */
			return true;
	}
}

char *
StiggDescribeCall(const char *method, const StiggCallResult *res)
{
	StiggEndpoint ep;

	endpoint_from_settings(&ep);
	switch (res->status)
	{
		case STIGG_CALL_OK:
			return psprintf("%s: ok", method);
		case STIGG_CALL_GRPC_ERROR:
			return psprintf("%s: gRPC status %s: %s", method,
							StiggGrpcCodeName(res->grpc_code), res->message);
		case STIGG_CALL_CONNECT_FAILED:
			return psprintf("%s: could not connect to %s:%d: %s", method, ep.host, ep.port, res->message);
		case STIGG_CALL_TLS_FAILED:
			return psprintf("%s: TLS with %s:%d failed: %s", method, ep.host, ep.port, res->message);
		case STIGG_CALL_TIMEOUT:
			return psprintf("%s: no answer from %s:%d within %d ms", method, ep.host, ep.port, ep.timeout_ms);
		case STIGG_CALL_INTERRUPTED:
			return psprintf("%s: interrupted", method);
		case STIGG_CALL_IO_FAILED:
			return psprintf("%s: connection to %s:%d failed: %s", method, ep.host, ep.port, res->message);
		case STIGG_CALL_PROTOCOL:
			return psprintf("%s: invalid response from %s:%d: %s", method, ep.host, ep.port, res->message);
		case STIGG_CALL_NO_MEMORY:
			return psprintf("%s: out of memory: %s", method, res->message);
	}
	return psprintf("%s: unknown outcome", method);
}
