/*-------------------------------------------------------------------------
 * curlio.c
 *	  libcurl plumbing shared by the sidecar transport and the API client.
 *
 * Invariants: nothing here calls palloc, ereport or elog; no thread is
 * started (names are resolved here with getaddrinfo, and callers set
 * CURLOPT_NOSIGNAL); every wait is at most WAIT_SLICE_MS long and a signal
 * ends it at once (poll returns EINTR), after which pending interrupts are
 * checked.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <netdb.h>
#include <sys/socket.h>
#include <arpa/inet.h>

#include "miscadmin.h"
#include "utils/timestamp.h"

#include "curlio.h"

#define WAIT_SLICE_MS 50

bool
StiggCurlInit(void)
{
	static bool done = false;

	if (!done && curl_global_init(CURL_GLOBAL_ALL) == CURLE_OK)
		done = true;
	return done;
}

bool
StiggInterruptPending(void)
{
	return InterruptPending && (QueryCancelPending || ProcDiePending);
}

struct curl_slist *
StiggCurlResolve(const char *host, int port, bool *ok, char *err, size_t errlen)
{
	struct addrinfo hints;
	struct addrinfo *res;
	struct addrinfo *ai;
	struct in6_addr scratch;
	struct curl_slist *list;
	char		entry[1024];
	size_t		used;
	int			rc;
	int			naddr = 0;

	*ok = true;
	if (inet_pton(AF_INET, host, &scratch) == 1 || inet_pton(AF_INET6, host, &scratch) == 1)
		return NULL;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(host, NULL, &hints, &res);
	if (rc != 0)
	{
		*ok = false;
		snprintf(err, errlen, "could not resolve host \"%s\": %s", host, gai_strerror(rc));
		return NULL;
	}
	used = snprintf(entry, sizeof(entry), "%s:%d:", host, port);
	for (ai = res; ai != NULL && used < sizeof(entry) - 64; ai = ai->ai_next)
	{
		char		addr[INET6_ADDRSTRLEN];
		const void *src;

		if (ai->ai_family == AF_INET)
			src = &((struct sockaddr_in *) ai->ai_addr)->sin_addr;
		else if (ai->ai_family == AF_INET6)
			src = &((struct sockaddr_in6 *) ai->ai_addr)->sin6_addr;
		else
			continue;
		if (inet_ntop(ai->ai_family, src, addr, sizeof(addr)) == NULL)
			continue;
		/* getaddrinfo repeats addresses once per protocol; skip repeats */
		if (strstr(entry + strlen(host), addr) != NULL)
			continue;
		used += snprintf(entry + used, sizeof(entry) - used,
						 ai->ai_family == AF_INET6 ? "%s[%s]" : "%s%s",
						 naddr > 0 ? "," : "", addr);
		naddr++;
	}
	freeaddrinfo(res);
	if (naddr == 0)
	{
		*ok = false;
		snprintf(err, errlen, "host \"%s\" has no IPv4 or IPv6 address", host);
		return NULL;
	}
	list = curl_slist_append(NULL, entry);
	if (list == NULL)
	{
		*ok = false;
		snprintf(err, errlen, "out of memory");
	}
	return list;
}

StiggWait
StiggCurlRun(CURLM *multi, CURL *easy, int timeout_ms, CURLcode *code)
{
	/* our own deadline as well as libcurl's, so that no wait outlives it */
	TimestampTz deadline = GetCurrentTimestamp() + (TimestampTz) timeout_ms * 1000;

	for (;;)
	{
		int			still_running = 0;
		int			msgs_left;
		CURLMsg    *msg;
		long		remaining_ms;

		if (curl_multi_perform(multi, &still_running) != CURLM_OK)
			return STIGG_WAIT_FAILED;
		while ((msg = curl_multi_info_read(multi, &msgs_left)) != NULL)
		{
			if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy)
			{
				*code = msg->data.result;
				return STIGG_WAIT_DONE;
			}
		}
		if (still_running == 0)
			return STIGG_WAIT_FAILED;
		if (StiggInterruptPending())
			return STIGG_WAIT_INTERRUPTED;
		remaining_ms = (long) ((deadline - GetCurrentTimestamp()) / 1000);
		if (remaining_ms <= 0)
			return STIGG_WAIT_TIMEOUT;
		curl_multi_poll(multi, NULL, 0, (int) Min(remaining_ms, WAIT_SLICE_MS), NULL);
	}
}
