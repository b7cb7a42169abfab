/*-------------------------------------------------------------------------
 * args.c
 *	  Checks of SQL arguments shared by every stigg function.
 *
 * A NULL customer or feature is an error, never a NULL answer: a NULL would
 * silently pass a CHECK constraint. Ids travel to the sidecar in UTF-8
 * whatever the database encoding; they are checked in both.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "utils/builtins.h"

#include "args.h"

text *
StiggIdArg(FunctionCallInfo fcinfo, int argno, const char *name, bool required)
{
	text	   *t;
	int			len;
	char	   *utf8;

	if (PG_ARGISNULL(argno))
	{
		if (required)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be null", name)));
		return NULL;
	}
	t = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", name),
				 required ? 0 : errhint("Pass NULL for no %s.", name)));
	if (len > STIGG_MAX_ID_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", name),
				 errdetail("It is %d bytes long; a Stigg id has at most %d bytes.",
						   len, STIGG_MAX_ID_BYTES)));
	utf8 = StiggUtf8(t);
	if (strlen(utf8) > STIGG_MAX_ID_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", name),
				 errdetail("It is %zu bytes long in UTF-8; a Stigg id has at most %d bytes.",
						   strlen(utf8), STIGG_MAX_ID_BYTES)));
	return t;
}

char *
StiggCStringToUtf8(const char *s)
{
	char	   *utf8;

	if (s == NULL)
		return NULL;
	utf8 = pg_server_to_any(s, strlen(s), PG_UTF8);
	return utf8 == s ? pstrdup(s) : utf8;
}

char *
StiggUtf8(text *t)
{
	if (t == NULL)
		return NULL;
	return StiggCStringToUtf8(text_to_cstring(t));
}
