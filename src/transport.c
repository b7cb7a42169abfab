/*-------------------------------------------------------------------------
 * transport.c
 *	  Unary gRPC calls to the Stigg sidecar: HTTP/2 through libcurl.
 *
 * This is the only file that knows about libcurl, HTTP/2 or gRPC framing.
 *
 * Invariants:
 *	- Nothing in this file calls palloc, ereport or elog. libcurl's callbacks
 *	  write into malloc'd buffers, and the outcome is returned as a
 *	  StiggCallResult for the caller to raise. No longjmp ever crosses
 *	  libcurl's frames.
 *	- The process stays single-threaded: CURLOPT_NOSIGNAL is set, and host
 *	  names are resolved here (getaddrinfo) and handed to libcurl through
 *	  CURLOPT_RESOLVE, so its threaded resolver never starts.
 *	- Handles are created on a process's first call, never in the postmaster,
 *	  so no connection is shared across fork.
 *	- Every wait is cut into short slices with interrupts checked after each
 *	  (curlio.c); the caller then runs CHECK_FOR_INTERRUPTS().
 *
 * Connection reuse. libcurl 7.88 (Debian 12) breaks on a reused cleartext
 * HTTP/2 connection opened in prior-knowledge mode (curl issue 10634, fixed
 * in 8.0). So a new connection is opened with prior knowledge and
 * CURLOPT_FRESH_CONNECT, and while it is alive calls ask for
 * CURL_HTTP_VERSION_2_0, which reuses it. After any failure other than a
 * gRPC status, the handles are dropped and the next call starts afresh.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <errno.h>
#include <sys/socket.h>

#include <curl/curl.h>

#include "miscadmin.h"
#include "utils/timestamp.h"

#include "curlio.h"
#include "transport.h"

#define GRPC_FRAME_HEADER 5
#define SERVICE_PATH "/stigg.sidecar.v1.SidecarService/"

/* A growable byte buffer; malloc'd, since libcurl's callbacks fill it. */
typedef struct ByteBuf
{
	uint8_t    *data;
	size_t		len;
	size_t		cap;
} ByteBuf;

/* What the header callback saw: headers and trailers alike. */
typedef struct ResponseMeta
{
	int			grpc_status;	/* -1 when absent */
	char		grpc_message[400];
	char		content_type[64];
	char		grpc_encoding[32];
	bool		too_large;
} ResponseMeta;

static CURLM *multi = NULL;
static CURL *easy = NULL;
static char curl_errbuf[CURL_ERROR_SIZE];

/* The cached connection: which endpoint, whether it is alive, its socket. */
static char conn_endpoint[512];
static bool conn_alive = false;
static curl_socket_t conn_socket = CURL_SOCKET_BAD;

/* Name resolution, kept until the endpoint changes or a connect fails. */
static struct curl_slist *resolve_list = NULL;
static char resolved_endpoint[512];

static ByteBuf request_buf;
static ByteBuf response_buf;
static ResponseMeta meta;

static bool
bytebuf_reserve(ByteBuf *buf, size_t need)
{
	uint8_t    *data;
	size_t		cap;

	if (need <= buf->cap)
		return true;
	cap = buf->cap ? buf->cap : 1024;
	while (cap < need)
		cap *= 2;
	data = realloc(buf->data, cap);
	if (data == NULL)
		return false;
	buf->data = data;
	buf->cap = cap;
	return true;
}

#define interrupt_pending() StiggInterruptPending()

static void
set_message(StiggCallResult *result, const char *fmt,...)
pg_attribute_printf(2, 3);

static void
set_message(StiggCallResult *result, const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	vsnprintf(result->message, sizeof(result->message), fmt, args);
	va_end(args);
}

/* grpc-message is percent-encoded (gRPC over HTTP/2, "Responses"). */
static void
percent_decode(char *s)
{
	char	   *out = s;

	for (; *s; s++)
	{
		if (s[0] == '%' && isxdigit((unsigned char) s[1]) &&
			isxdigit((unsigned char) s[2]))
		{
			char		hex[3] = {s[1], s[2], '\0'};

			*out++ = (char) strtol(hex, NULL, 16);
			s += 2;
		}
		else
			*out++ = *s;
	}
	*out = '\0';
}

static void
copy_header_value(char *dst, size_t dstlen, const char *value, size_t len)
{
	while (len > 0 && (value[len - 1] == '\r' || value[len - 1] == '\n' ||
					   value[len - 1] == ' '))
		len--;
	while (len > 0 && *value == ' ')
		value++, len--;
	if (len >= dstlen)
		len = dstlen - 1;
	memcpy(dst, value, len);
	dst[len] = '\0';
}

/* libcurl passes each header and, for HTTP/2, each trailer here. */
static size_t
header_callback(char *buffer, size_t size, size_t nitems, void *userdata)
{
	size_t		len = size * nitems;
	const char *colon = memchr(buffer, ':', len);
	size_t		namelen;
	const char *value;
	size_t		valuelen;

	if (colon == NULL)
		return len;				/* status line or blank line */
	namelen = colon - buffer;
	value = colon + 1;
	valuelen = len - namelen - 1;

	if (namelen == 11 && pg_strncasecmp(buffer, "grpc-status", 11) == 0)
	{
		char		tmp[16];
		char	   *end;
		long		code;

		copy_header_value(tmp, sizeof(tmp), value, valuelen);
		code = strtol(tmp, &end, 10);
		meta.grpc_status = (end != tmp && *end == '\0' && code >= 0 && code < 1000) ? (int) code : 999;
	}
	else if (namelen == 12 && pg_strncasecmp(buffer, "grpc-message", 12) == 0)
	{
		copy_header_value(meta.grpc_message, sizeof(meta.grpc_message), value, valuelen);
		percent_decode(meta.grpc_message);
	}
	else if (namelen == 12 && pg_strncasecmp(buffer, "content-type", 12) == 0)
		copy_header_value(meta.content_type, sizeof(meta.content_type), value, valuelen);
	else if (namelen == 13 && pg_strncasecmp(buffer, "grpc-encoding", 13) == 0)
		copy_header_value(meta.grpc_encoding, sizeof(meta.grpc_encoding), value, valuelen);
	return len;
}

static size_t
write_callback(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	size_t		len = size * nmemb;

	if (response_buf.len + len > STIGG_MAX_RESPONSE_BYTES + GRPC_FRAME_HEADER)
	{
		meta.too_large = true;
		return 0;				/* makes libcurl fail with CURLE_WRITE_ERROR */
	}
	if (!bytebuf_reserve(&response_buf, response_buf.len + len))
		return 0;
	memcpy(response_buf.data + response_buf.len, ptr, len);
	response_buf.len += len;
	return len;
}

/* Lets libcurl notice an interrupt during its own internal waits too. */
static int
xferinfo_callback(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
				  curl_off_t ultotal, curl_off_t ulnow)
{
	return interrupt_pending() ? 1 : 0;
}

void
StiggTransportReset(void)
{
	if (multi != NULL && easy != NULL)
		curl_multi_remove_handle(multi, easy);
	if (easy != NULL)
		curl_easy_cleanup(easy);
	if (multi != NULL)
		curl_multi_cleanup(multi);
	easy = NULL;
	multi = NULL;
	conn_alive = false;
	conn_socket = CURL_SOCKET_BAD;
	conn_endpoint[0] = '\0';
}

static void
forget_resolution(void)
{
	curl_slist_free_all(resolve_list);
	resolve_list = NULL;
	resolved_endpoint[0] = '\0';
}

static bool
ensure_handles(StiggCallResult *result)
{
	if (!StiggCurlInit())
	{
		set_message(result, "could not initialize libcurl");
		return false;
	}
	if (multi == NULL)
		multi = curl_multi_init();
	if (easy == NULL)
		easy = curl_easy_init();
	if (multi == NULL || easy == NULL)
	{
		StiggTransportReset();
		set_message(result, "could not create a libcurl handle");
		return false;
	}
	return true;
}

/* Resolves the endpoint's host once per endpoint (see curlio.c). */
static bool
resolve_endpoint(const StiggEndpoint *ep, const char *key, StiggCallResult *result)
{
	bool		ok;

	if (strcmp(resolved_endpoint, key) == 0)
		return true;
	forget_resolution();
	resolve_list = StiggCurlResolve(ep->host, ep->port, &ok, result->message,
									sizeof(result->message));
	if (!ok)
		return false;
	strlcpy(resolved_endpoint, key, sizeof(resolved_endpoint));
	return true;
}

/*
 * Whether the connection left by the previous call still looks usable: the
 * server has not closed it. Pending bytes (a PING, a WINDOW_UPDATE) are left
 * for libcurl to read.
 */
static bool
connection_looks_alive(void)
{
	char		c;
	ssize_t		n;

	if (!conn_alive || conn_socket == CURL_SOCKET_BAD)
		return false;
	n = recv(conn_socket, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	if (n > 0)
		return true;
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return true;
	return false;				/* EOF or a socket error */
}

static void
classify_curl_error(CURLcode code, StiggCallResult *result)
{
	const char *what = curl_errbuf[0] ? curl_errbuf : curl_easy_strerror(code);

	switch (code)
	{
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_CONNECT:
			result->status = STIGG_CALL_CONNECT_FAILED;
			break;
		case CURLE_OPERATION_TIMEDOUT:
			result->status = STIGG_CALL_TIMEOUT;
			break;
		case CURLE_ABORTED_BY_CALLBACK:
			result->status = STIGG_CALL_INTERRUPTED;
			break;
		case CURLE_SSL_CONNECT_ERROR:
		case CURLE_PEER_FAILED_VERIFICATION:
		case CURLE_SSL_CACERT_BADFILE:
		case CURLE_SSL_CERTPROBLEM:
		case CURLE_SSL_CIPHER:
		case CURLE_SSL_ISSUER_ERROR:
		case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
		case CURLE_SSL_INVALIDCERTSTATUS:
		case CURLE_SSL_ENGINE_INITFAILED:
			result->status = STIGG_CALL_TLS_FAILED;
			break;
		case CURLE_OUT_OF_MEMORY:
			result->status = STIGG_CALL_NO_MEMORY;
			break;
		case CURLE_WRITE_ERROR:
			if (meta.too_large)
			{
				result->status = STIGG_CALL_PROTOCOL;
				set_message(result, "the response is larger than %d bytes",
							STIGG_MAX_RESPONSE_BYTES);
				return;
			}
			result->status = STIGG_CALL_NO_MEMORY;
			break;
		case CURLE_HTTP2:
		case CURLE_HTTP2_STREAM:
		case CURLE_WEIRD_SERVER_REPLY:
		case CURLE_UNSUPPORTED_PROTOCOL:
		case CURLE_BAD_CONTENT_ENCODING:
			result->status = STIGG_CALL_PROTOCOL;
			break;
		default:
			result->status = STIGG_CALL_IO_FAILED;
			break;
	}
	set_message(result, "%s", what);
}

/* Checks the HTTP and gRPC envelope of a completed exchange. */
static void
check_response(StiggCallResult *result)
{
	long		http_code = 0;
	uint32_t	msglen;

	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &http_code);
	if (http_code != 200)
	{
		result->status = STIGG_CALL_PROTOCOL;
		set_message(result, "the server answered HTTP status %ld", http_code);
		return;
	}
	if (pg_strncasecmp(meta.content_type, "application/grpc", 16) != 0)
	{
		result->status = STIGG_CALL_PROTOCOL;
		set_message(result, "the server answered with content type \"%s\", not application/grpc",
					meta.content_type);
		return;
	}
	if (meta.grpc_status < 0)
	{
		result->status = STIGG_CALL_PROTOCOL;
		set_message(result, "the response carries no grpc-status");
		return;
	}
	if (meta.grpc_status != 0)
	{
		result->status = STIGG_CALL_GRPC_ERROR;
		result->grpc_code = meta.grpc_status;
		set_message(result, "%s", meta.grpc_message);
		return;
	}

	/* A unary response is exactly one length-prefixed message. */
	if (response_buf.len < GRPC_FRAME_HEADER)
	{
		result->status = STIGG_CALL_PROTOCOL;
		set_message(result, response_buf.len == 0 ?
					"the response carries no message" :
					"the response ends inside a frame header");
		return;
	}
	if (response_buf.data[0] != 0)
	{
		result->status = STIGG_CALL_PROTOCOL;
		set_message(result, response_buf.data[0] == 1 ?
					"the response message is compressed (grpc-encoding \"%s\"), which is not supported" :
					"the response frame has an unknown flag byte",
					meta.grpc_encoding);
		return;
	}
	msglen = ((uint32_t) response_buf.data[1] << 24) |
		((uint32_t) response_buf.data[2] << 16) |
		((uint32_t) response_buf.data[3] << 8) |
		(uint32_t) response_buf.data[4];
	if (msglen > STIGG_MAX_RESPONSE_BYTES)
	{
		result->status = STIGG_CALL_PROTOCOL;
		set_message(result, "the response is larger than %d bytes", STIGG_MAX_RESPONSE_BYTES);
		return;
	}
	if ((size_t) msglen + GRPC_FRAME_HEADER != response_buf.len)
	{
		result->status = STIGG_CALL_PROTOCOL;
		set_message(result, (size_t) msglen + GRPC_FRAME_HEADER > response_buf.len ?
					"the response message is truncated" :
					"the response holds more than one message");
		return;
	}
	result->status = STIGG_CALL_OK;
	result->body = response_buf.data + GRPC_FRAME_HEADER;
	result->body_len = msglen;
}

/*
 * One attempt. Returns whether a failure may be retried on a new connection:
 * the call meant to reuse a connection and either that connection was dead
 * (a connect or I/O failure) or libcurl, finding it dead, opened a new one in
 * its HTTP/1.1-upgrade mode, which a gRPC server refuses before any handler
 * runs. A protocol error on a connection that was really reused is the
 * server's answer and is never retried.
 */
static bool
call_once(const StiggEndpoint *ep, const char *key, const char *method,
		  StiggCallResult *result)
{
	char		url[1024];
	char		timeout_header[64];
	struct curl_slist *headers = NULL;
	bool		reuse;
	CURLcode	code = CURLE_OK;
	bool		done = false;
	bool		retryable = false;

	memset(&meta, 0, sizeof(meta));
	meta.grpc_status = -1;
	response_buf.len = 0;
	curl_errbuf[0] = '\0';

	if (strcmp(conn_endpoint, key) != 0 || !connection_looks_alive())
	{
		/* settings changed, or the server went away: start afresh */
		StiggTransportReset();
	}
	if (!ensure_handles(result))
	{
		result->status = STIGG_CALL_NO_MEMORY;
		return false;
	}
	reuse = conn_alive;

	snprintf(url, sizeof(url), "%s://%s%s%s:%d" SERVICE_PATH "%s",
			 ep->tls ? "https" : "http",
			 strchr(ep->host, ':') ? "[" : "", ep->host,
			 strchr(ep->host, ':') ? "]" : "", ep->port, method);
	snprintf(timeout_header, sizeof(timeout_header), "grpc-timeout: %dm", ep->timeout_ms);

	headers = curl_slist_append(headers, "content-type: application/grpc");
	headers = curl_slist_append(headers, "te: trailers");
	headers = curl_slist_append(headers, "grpc-accept-encoding: identity");
	headers = curl_slist_append(headers, timeout_header);
	headers = curl_slist_append(headers, "user-agent: stigg-postgres");
	headers = curl_slist_append(headers, "expect:");
	if (headers == NULL)
	{
		result->status = STIGG_CALL_NO_MEMORY;
		set_message(result, "out of memory");
		return false;
	}

	curl_easy_reset(easy);
	curl_easy_setopt(easy, CURLOPT_URL, url);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_PROXY, "");
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, curl_errbuf);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(easy, CURLOPT_POST, 1L);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDS, request_buf.data);
	curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) request_buf.len);
	curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, header_callback);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_callback);
	curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, xferinfo_callback);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) ep->timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) ep->timeout_ms);
	curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
	if (resolve_list != NULL)
		curl_easy_setopt(easy, CURLOPT_RESOLVE, resolve_list);
	if (ep->tls)
	{
		curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
		curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
		curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
		if (ep->ca_file != NULL && ep->ca_file[0] != '\0')
			curl_easy_setopt(easy, CURLOPT_CAINFO, ep->ca_file);
	}
	else if (reuse)
		curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2_0);
	else
	{
		curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
						 (long) CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
		curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
	}

	if (curl_multi_add_handle(multi, easy) != CURLM_OK)
	{
		curl_slist_free_all(headers);
		StiggTransportReset();
		result->status = STIGG_CALL_NO_MEMORY;
		set_message(result, "could not start the transfer");
		return false;
	}

	switch (StiggCurlRun(multi, easy, ep->timeout_ms, &code))
	{
		case STIGG_WAIT_DONE:
			done = true;
			break;
		case STIGG_WAIT_INTERRUPTED:
			result->status = STIGG_CALL_INTERRUPTED;
			set_message(result, "interrupted");
			break;
		case STIGG_WAIT_TIMEOUT:
			result->status = STIGG_CALL_TIMEOUT;
			set_message(result, "no answer within %d ms", ep->timeout_ms);
			break;
		case STIGG_WAIT_FAILED:
			result->status = STIGG_CALL_IO_FAILED;
			set_message(result, "the transfer failed in libcurl's multi interface");
			break;
	}

	if (done)
	{
		if (code == CURLE_OK)
			check_response(result);
		else
			classify_curl_error(code, result);
		if (result->status == STIGG_CALL_TIMEOUT)
			set_message(result, "no answer within %d ms", ep->timeout_ms);
	}
	else if (result->status == STIGG_CALL_OK)
	{
		result->status = STIGG_CALL_IO_FAILED;
		set_message(result, "the transfer ended without a result");
	}

	if (reuse && done)
	{
		long		new_connections = 0;

		curl_easy_getinfo(easy, CURLINFO_NUM_CONNECTS, &new_connections);
		retryable = result->status == STIGG_CALL_CONNECT_FAILED ||
			result->status == STIGG_CALL_IO_FAILED ||
			(result->status == STIGG_CALL_PROTOCOL && new_connections > 0);
	}

	if (result->status == STIGG_CALL_OK || result->status == STIGG_CALL_GRPC_ERROR)
	{
		/* the connection is healthy: keep it for the next call */
		curl_socket_t sock = CURL_SOCKET_BAD;

		curl_easy_getinfo(easy, CURLINFO_ACTIVESOCKET, &sock);
		curl_multi_remove_handle(multi, easy);
		conn_socket = sock;
		conn_alive = (sock != CURL_SOCKET_BAD);
		strlcpy(conn_endpoint, key, sizeof(conn_endpoint));
	}
	else
	{
		StiggTransportReset();
		if (result->status == STIGG_CALL_CONNECT_FAILED)
			forget_resolution();
	}
	curl_slist_free_all(headers);
	return retryable;
}

void
StiggTransportCall(const StiggEndpoint *ep, const char *method,
				   const uint8_t *request, size_t request_len,
				   bool idempotent, StiggCallResult *result)
{
	char		key[512];
	bool		retryable;

	memset(result, 0, sizeof(*result));

	if (request_len > STIGG_MAX_RESPONSE_BYTES ||
		!bytebuf_reserve(&request_buf, request_len + GRPC_FRAME_HEADER))
	{
		result->status = STIGG_CALL_NO_MEMORY;
		set_message(result, "request of %zu bytes is too large", request_len);
		return;
	}
	request_buf.data[0] = 0;	/* not compressed */
	request_buf.data[1] = (uint8_t) (request_len >> 24);
	request_buf.data[2] = (uint8_t) (request_len >> 16);
	request_buf.data[3] = (uint8_t) (request_len >> 8);
	request_buf.data[4] = (uint8_t) request_len;
	if (request_len > 0)
		memcpy(request_buf.data + GRPC_FRAME_HEADER, request, request_len);
	request_buf.len = request_len + GRPC_FRAME_HEADER;

	snprintf(key, sizeof(key), "%s|%d|%d|%s", ep->host, ep->port, (int) ep->tls,
			 ep->ca_file ? ep->ca_file : "");
	if (!resolve_endpoint(ep, key, result))
	{
		result->status = STIGG_CALL_CONNECT_FAILED;
		return;
	}

	retryable = call_once(ep, key, method, result);

	/*
	 * A reused connection may have died between our liveness check and the
	 * request. A read can safely go again on a new connection; a write
	 * cannot, since it may have reached the server.
	 */
	if (retryable && idempotent && !interrupt_pending())
	{
		memset(result, 0, sizeof(*result));
		call_once(ep, key, method, result);
	}
}

const char *
StiggGrpcCodeName(int code)
{
	static const char *const names[] = {
		"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
		"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
		"RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
		"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
		"UNAUTHENTICATED"
	};

	if (code >= 0 && code < (int) lengthof(names))
		return names[code];
	return "UNKNOWN_STATUS";
}
