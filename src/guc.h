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

extern void StiggDefineGucs(void);

#endif							/* STIGG_GUC_H */
