/*-------------------------------------------------------------------------
 * api.c
 *	  The Stigg API (GraphQL over HTTPS) from SQL: stigg_api.
 *
 * This is the only file that speaks HTTP to the Stigg API. One libcurl
 * handle per process keeps its connection alive between calls (HTTP/2 over
 * TLS, keep-alive otherwise); the host is resolved here (no resolver
 * thread); waits are cut into slices and interrupts checked (curlio.c); the
 * answer is bounded and parsed by PostgreSQL's own jsonb input.
 *
 * The server key (stigg.api_key, or the first line of stigg.api_key_file)
 * goes into the X-API-KEY header and nowhere else: no message, detail or
 * log line ever contains it.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <stdio.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "api.h"
#include "curlio.h"
#include "guc.h"

#define MAX_RESPONSE_BYTES (16 * 1024 * 1024)
#define MAX_KEY_BYTES 1024

/* The GraphQL-errors SQLSTATE, class SG (Stigg). */
#define ERRCODE_STIGG_API_ERROR MAKE_SQLSTATE('S','G','0','0','2')

PG_FUNCTION_INFO_V1(stigg_api);

typedef struct ResponseBuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
	bool		too_large;
} ResponseBuf;

static CURLM *api_multi = NULL;
static CURL *api_easy = NULL;
static ResponseBuf body;
static char errbuf[CURL_ERROR_SIZE];

static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	size_t		len = size * nmemb;

	if (body.len + len + 1 > MAX_RESPONSE_BYTES)
	{
		body.too_large = true;
		return 0;
	}
	if (body.len + len + 1 > body.cap)
	{
		size_t		cap = body.cap ? body.cap : 8192;
		char	   *data;

		while (cap < body.len + len + 1)
			cap *= 2;
		data = realloc(body.data, cap);
		if (data == NULL)
			return 0;
		body.data = data;
		body.cap = cap;
	}
	memcpy(body.data + body.len, ptr, len);
	body.len += len;
	body.data[body.len] = '\0';
	return len;
}

static int
xferinfo_cb(void *p, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
	return StiggInterruptPending() ? 1 : 0;
}

static void
reset_handles(void)
{
	if (api_multi != NULL && api_easy != NULL)
		curl_multi_remove_handle(api_multi, api_easy);
	if (api_easy != NULL)
		curl_easy_cleanup(api_easy);
	if (api_multi != NULL)
		curl_multi_cleanup(api_multi);
	api_easy = NULL;
	api_multi = NULL;
}

/* The server key, from the setting or its file; never printed. */
static char *
api_key(void)
{
	char		line[MAX_KEY_BYTES + 2];
	FILE	   *f;
	size_t		n;

	if (stigg_api_key != NULL && stigg_api_key[0] != '\0')
		return pstrdup(stigg_api_key);
	if (stigg_api_key_file == NULL || stigg_api_key_file[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("no Stigg API key is configured"),
				 errhint("A superuser sets stigg.api_key, or stigg.api_key_file to a file holding the server key.")));
	f = AllocateFile(stigg_api_key_file, "r");
	if (f == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open stigg.api_key_file \"%s\": %m", stigg_api_key_file)));
	n = fread(line, 1, sizeof(line) - 1, f);
	FreeFile(f);
	line[n] = '\0';
	line[strcspn(line, "\r\n")] = '\0';
	if (line[0] == '\0' || n > MAX_KEY_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("stigg.api_key_file \"%s\" holds no usable key", stigg_api_key_file),
				 errhint("The file's first line is the server key.")));
	return pstrdup(line);
}

static char *
graphql_url(void)
{
	size_t		len = strlen(stigg_api_url);

	if (len >= 8 && strcmp(stigg_api_url + len - 8, "/graphql") == 0)
		return pstrdup(stigg_api_url);
	return psprintf("%s%sgraphql", stigg_api_url,
					len > 0 && stigg_api_url[len - 1] == '/' ? "" : "/");
}

/* Resolves the URL's host ourselves, so that libcurl starts no thread. */
static struct curl_slist *
resolve_url(const char *url, char *err, size_t errlen, bool *ok)
{
	CURLU	   *u = curl_url();
	char	   *host = NULL;
	char	   *port = NULL;
	char	   *scheme = NULL;
	struct curl_slist *list = NULL;

	*ok = false;
	if (u == NULL)
	{
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK)
		snprintf(err, errlen, "stigg.api_url is not a URL");
	else
	{
		int			p;

		if (curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
			p = strcmp(scheme, "https") == 0 ? 443 : 80;
		else
			p = atoi(port);
		/* brackets of an IPv6 literal are not part of the address */
		if (host[0] == '[')
		{
			host[strlen(host) - 1] = '\0';
			list = StiggCurlResolve(host + 1, p, ok, err, errlen);
		}
		else
			list = StiggCurlResolve(host, p, ok, err, errlen);
	}
	curl_free(host);
	curl_free(port);
	curl_free(scheme);
	curl_url_cleanup(u);
	return list;
}

/* The answer as jsonb; anything that is not JSON is a protocol violation. */
static Jsonb *
parse_response(const char *url)
{
	MemoryContext ctx = CurrentMemoryContext;
	Jsonb	   *volatile result = NULL;

	PG_TRY();
	{
		result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
													CStringGetDatum(body.len ? body.data : "null")));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(ctx);
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the Stigg API at %s answered something that is not JSON", url),
				 errhint("Check that stigg.api_url points at the Stigg API.")));
	}
	PG_END_TRY();
	return result;
}

/* One POST; raises on every failure, never with the key in it. */
static Jsonb *
api_post(const char *json_body)
{
	char	   *url = graphql_url();
	char	   *key = api_key();
	char	   *key_header = psprintf("X-API-KEY: %s", key);
	struct curl_slist *headers = NULL;
	struct curl_slist *resolve;
	char		err[256];
	bool		ok;
	long		http_code = 0;
	CURLcode	code = CURLE_OK;
	StiggWait	wait;

	resolve = resolve_url(url, err, sizeof(err), &ok);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not reach the Stigg API at %s", url),
				 errdetail("%s.", err)));
	if (!StiggCurlInit() ||
		(api_multi == NULL && (api_multi = curl_multi_init()) == NULL) ||
		(api_easy == NULL && (api_easy = curl_easy_init()) == NULL))
	{
		curl_slist_free_all(resolve);
		reset_handles();
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("could not create a libcurl handle")));
	}

	headers = curl_slist_append(headers, "Content-Type: application/json");
	headers = curl_slist_append(headers, "Accept: application/json");
	headers = curl_slist_append(headers, "User-Agent: stigg-postgres");
	headers = curl_slist_append(headers, key_header);
	memset(key_header, 0, strlen(key_header));
	memset(key, 0, strlen(key));

	body.len = 0;
	body.too_large = false;
	errbuf[0] = '\0';
	curl_easy_reset(api_easy);
	curl_easy_setopt(api_easy, CURLOPT_URL, url);
	curl_easy_setopt(api_easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(api_easy, CURLOPT_PROXY, "");
	curl_easy_setopt(api_easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(api_easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(api_easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
	curl_easy_setopt(api_easy, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(api_easy, CURLOPT_POSTFIELDS, json_body);
	curl_easy_setopt(api_easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) strlen(json_body));
	curl_easy_setopt(api_easy, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(api_easy, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(api_easy, CURLOPT_XFERINFOFUNCTION, xferinfo_cb);
	curl_easy_setopt(api_easy, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(api_easy, CURLOPT_TIMEOUT_MS, (long) stigg_api_timeout_ms);
	curl_easy_setopt(api_easy, CURLOPT_CONNECTTIMEOUT_MS, (long) stigg_api_timeout_ms);
	curl_easy_setopt(api_easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(api_easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (stigg_api_ca_file != NULL && stigg_api_ca_file[0] != '\0')
		curl_easy_setopt(api_easy, CURLOPT_CAINFO, stigg_api_ca_file);
	if (resolve != NULL)
		curl_easy_setopt(api_easy, CURLOPT_RESOLVE, resolve);

	if (curl_multi_add_handle(api_multi, api_easy) != CURLM_OK)
		wait = STIGG_WAIT_FAILED;
	else
		wait = StiggCurlRun(api_multi, api_easy, stigg_api_timeout_ms, &code);
	curl_easy_getinfo(api_easy, CURLINFO_RESPONSE_CODE, &http_code);
	curl_multi_remove_handle(api_multi, api_easy);
	/* the header list held the key: clear it before freeing */
	for (struct curl_slist *h = headers; h != NULL; h = h->next)
		memset(h->data, 0, strlen(h->data));
	curl_slist_free_all(headers);
	curl_slist_free_all(resolve);

	if (wait == STIGG_WAIT_INTERRUPTED ||
		(wait == STIGG_WAIT_DONE && code == CURLE_ABORTED_BY_CALLBACK))
	{
		reset_handles();
		CHECK_FOR_INTERRUPTS();
		ereport(ERROR, (errcode(ERRCODE_QUERY_CANCELED), errmsg("canceling call of the Stigg API")));
	}
	if (wait == STIGG_WAIT_TIMEOUT || (wait == STIGG_WAIT_DONE && code == CURLE_OPERATION_TIMEDOUT))
	{
		reset_handles();
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("the Stigg API at %s did not answer within %d ms", url, stigg_api_timeout_ms),
				 errhint("Raise stigg.api_timeout.")));
	}
	if (wait != STIGG_WAIT_DONE || code != CURLE_OK)
	{
		bool		tls = code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_SSL_CONNECT_ERROR ||
			code == CURLE_SSL_CACERT_BADFILE;

		reset_handles();
		if (body.too_large)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("the Stigg API answered more than %d bytes", MAX_RESPONSE_BYTES)));
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not %s the Stigg API at %s", tls ? "establish a TLS connection to" : "reach", url),
				 errdetail("%s", errbuf[0] ? errbuf : curl_easy_strerror(code)),
				 tls ? errhint("Set stigg.api_ca_file to the CA that signed the API's certificate.") : 0));
	}
	if (http_code == 401 || http_code == 403)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("the Stigg API refused the API key (HTTP %ld)", http_code),
				 errhint("Check stigg.api_key or stigg.api_key_file: it must be the environment's server key.")));
	if (http_code != 200)
		ereport(ERROR,
				(errcode(http_code >= 500 ? ERRCODE_CONNECTION_FAILURE : ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the Stigg API at %s answered HTTP %ld", url, http_code)));
	return parse_response(url);
}

/* errors[] become an error: the first message, the rest in the detail. */
static void
raise_graphql_errors(Jsonb *response)
{
	JsonbValue	k;
	JsonbValue *errors;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	StringInfoData rest;
	char	   *first = NULL;
	int			n = 0;

	k.type = jbvString;
	k.val.string.val = "errors";
	k.val.string.len = 6;
	errors = findJsonbValueFromContainer(&response->root, JB_FOBJECT, &k);
	if (errors == NULL || errors->type != jbvBinary)
		return;
	initStringInfo(&rest);
	it = JsonbIteratorInit(errors->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		JsonbValue *msg;

		if (tok != WJB_ELEM || v.type != jbvBinary)
			continue;
		k.val.string.val = "message";
		k.val.string.len = 7;
		msg = findJsonbValueFromContainer(v.val.binary.data, JB_FOBJECT, &k);
		if (msg == NULL || msg->type != jbvString)
			continue;
		if (n++ == 0)
			first = pnstrdup(msg->val.string.val, msg->val.string.len);
		else
			appendStringInfo(&rest, "%s%.*s", n > 2 ? "; " : "", msg->val.string.len, msg->val.string.val);
	}
	if (n == 0)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_STIGG_API_ERROR),
			 errmsg("the Stigg API returned an error: %s", first),
			 n > 1 ? errdetail("%d more: %s", n - 1, rest.data) : 0));
}

/* POSTs query and variables (JSON text); returns data, or NULL for null. */
static Jsonb *
graphql(const char *query, const char *variables_json)
{
	StringInfoData req;
	Jsonb	   *response;
	JsonbValue	k;
	JsonbValue *data;

	initStringInfo(&req);
	appendStringInfoString(&req, "{\"query\": ");
	escape_json(&req, query);
	appendStringInfo(&req, ", \"variables\": %s}", variables_json);
	response = api_post(req.data);
	if (!JB_ROOT_IS_OBJECT(response) || JB_ROOT_IS_SCALAR(response))
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("the Stigg API answered something that is not a GraphQL response")));
	raise_graphql_errors(response);
	k.type = jbvString;
	k.val.string.val = "data";
	k.val.string.len = 4;
	data = findJsonbValueFromContainer(&response->root, JB_FOBJECT, &k);
	if (data == NULL || data->type == jbvNull)
		return NULL;
	return JsonbValueToJsonb(data);
}

Jsonb *
StiggApiTry(const char *query, const char *variables_json, StiggCallResult *res)
{
	MemoryContext ctx = CurrentMemoryContext;
	Jsonb	   *volatile data = NULL;

	memset(res, 0, sizeof(*res));
	PG_TRY();
	{
		data = graphql(query, variables_json);
		if (data == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("the Stigg API answered no data")));
	}
	PG_CATCH();
	{
		ErrorData  *e;

		MemoryContextSwitchTo(ctx);
		e = CopyErrorData();
		FlushErrorState();
		/* an interrupt is not ours to swallow */
		if (e->sqlerrcode == ERRCODE_QUERY_CANCELED && StiggInterruptPending())
			res->status = STIGG_CALL_INTERRUPTED;
		else if (e->sqlerrcode == ERRCODE_STIGG_API_ERROR)
		{
			res->status = STIGG_CALL_GRPC_ERROR;
			res->grpc_code = 3;	/* INVALID_ARGUMENT: this request, not the API */
		}
		else if (e->sqlerrcode == ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION)
		{
			res->status = STIGG_CALL_GRPC_ERROR;
			res->grpc_code = 16;	/* UNAUTHENTICATED: retried until fixed */
		}
		else if (e->sqlerrcode == ERRCODE_QUERY_CANCELED)
			res->status = STIGG_CALL_TIMEOUT;
		else if (e->sqlerrcode == ERRCODE_CONNECTION_FAILURE)
			res->status = STIGG_CALL_CONNECT_FAILED;
		else if (e->sqlerrcode == ERRCODE_PROTOCOL_VIOLATION)
			res->status = STIGG_CALL_PROTOCOL;
		else
			res->status = STIGG_CALL_IO_FAILED;
		strlcpy(res->message, e->message, sizeof(res->message));
		FreeErrorData(e);
		data = NULL;
	}
	PG_END_TRY();
	return data;
}

/* stigg_api(query text, variables jsonb DEFAULT '{}') RETURNS jsonb: data */
Datum
stigg_api(PG_FUNCTION_ARGS)
{
	Jsonb	   *data;
	char	   *query;
	char	   *vars_json;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("query must not be null")));
	query = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (query[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("query must not be empty")));
	if (PG_ARGISNULL(1))
		vars_json = "{}";
	else
	{
		Jsonb	   *vars = PG_GETARG_JSONB_P(1);

		if (!JB_ROOT_IS_OBJECT(vars) || JB_ROOT_IS_SCALAR(vars))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("variables must be a JSON object")));
		vars_json = JsonbToCString(NULL, &vars->root, VARSIZE(vars));
	}
	data = graphql(query, vars_json);
	if (data == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(data);
}
