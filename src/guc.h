/*-------------------------------------------------------------------------
 * guc.h
 *	  Settings of the stigg extension (stigg.*).
 *-------------------------------------------------------------------------
 */
#ifndef STIGG_GUC_H
#define STIGG_GUC_H

extern char *stigg_sidecar_host;
extern int	stigg_sidecar_port;
extern bool stigg_sidecar_tls;
extern char *stigg_sidecar_ca_file;
extern int	stigg_timeout_ms;

/* the entitlement cache and enforcement */
extern int	stigg_cache_ttl_ms;
extern int	stigg_cache_size;
extern bool stigg_enforce_enabled;

typedef enum StiggOnError
{
	STIGG_ON_ERROR_ERROR,
	STIGG_ON_ERROR_FALLBACK
} StiggOnError;
extern int	stigg_on_sidecar_error;

typedef enum StiggUsageDelivery
{
	STIGG_DELIVERY_SIDECAR,
	STIGG_DELIVERY_API
} StiggUsageDelivery;
extern int	stigg_usage_delivery;

/* the Stigg API (api.c) */
extern char *stigg_api_url;
extern char *stigg_api_key;
extern char *stigg_api_key_file;
extern char *stigg_api_ca_file;
extern int	stigg_api_timeout_ms;

/* the background worker (worker.c) */
extern char *stigg_database;
extern int	stigg_batch_size;
extern int	stigg_worker_naptime_ms;
extern int	stigg_retry_max_delay_ms;
extern int	stigg_delivered_retention_s;

extern void StiggDefineGucs(void);

#endif							/* STIGG_GUC_H */
