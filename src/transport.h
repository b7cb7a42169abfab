/*-------------------------------------------------------------------------
 * transport.h
 *	  Unary gRPC calls to the Stigg sidecar.
 *
 * A plain-C API: nothing here raises a PostgreSQL error. The caller turns a
 * StiggCallResult into an ereport (see sidecar.c).
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_TRANSPORT_H
#define STIGG_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest response message accepted, as gRPC's default receive limit. */
#define STIGG_MAX_RESPONSE_BYTES (4 * 1024 * 1024)

typedef enum StiggCallStatus
{
	STIGG_CALL_OK = 0,
	STIGG_CALL_CONNECT_FAILED,	/* could not resolve the host or connect */
	STIGG_CALL_TLS_FAILED,		/* TLS handshake or certificate check failed */
	STIGG_CALL_TIMEOUT,			/* the call's deadline passed */
	STIGG_CALL_INTERRUPTED,		/* a cancel or terminate request is pending */
	STIGG_CALL_IO_FAILED,		/* the connection broke during the call */
	STIGG_CALL_PROTOCOL,		/* the peer did not answer as a gRPC server */
	STIGG_CALL_GRPC_ERROR,		/* the server answered with a gRPC status */
	STIGG_CALL_NO_MEMORY
} StiggCallStatus;

typedef struct StiggEndpoint
{
	const char *host;
	int			port;
	bool		tls;
	const char *ca_file;		/* NULL or "" for the system trust store */
	int			timeout_ms;
} StiggEndpoint;

typedef struct StiggCallResult
{
	StiggCallStatus status;
	int			grpc_code;		/* with STIGG_CALL_GRPC_ERROR */
	char		message[512];	/* grpc-message, or what went wrong */
	/* the response message without framing; valid until the next call */
	const uint8_t *body;
	size_t		body_len;
} StiggCallResult;

/*
 * Performs one unary call of /stigg.sidecar.v1.SidecarService/<method>.
 * An idempotent call is retried once when a reused connection turns out to
 * be dead; any other call is never sent twice.
 */
extern void StiggTransportCall(const StiggEndpoint *endpoint,
							   const char *method,
							   const uint8_t *request, size_t request_len,
							   bool idempotent,
							   StiggCallResult *result);

/* Closes the connection; the next call opens a new one. */
extern void StiggTransportReset(void);

extern const char *StiggGrpcCodeName(int code);

#endif							/* STIGG_TRANSPORT_H */
