# The Stigg API from SQL against the dev sidecar's GraphQL endpoint:
# provisioning changes what checks return, GraphQL errors, a wrong key, the
# API down, slow or answering garbage, TLS with a CA made here, and the key
# invisible to non-superusers by every route.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use StiggSidecar;

my $dir = PostgreSQL::Test::Utils::tempdir;
my $key = 'dev-server-key';
my $keyfile = "$dir/stigg.key";
PostgreSQL::Test::Utils::append_to_file($keyfile, "$key\n");
chmod 0600, $keyfile;

my $sc = StiggSidecar->start;
my $node = StiggSidecar->new_node('api', $sc,
	'stigg.api_url' => "'" . $sc->api_url . "'",
	'stigg.api_key_file' => "'$keyfile'",
	'stigg.api_timeout' => "'5s'");
sub sql { return $node->safe_psql('postgres', $_[0]); }
sub run
{
	my ($q) = @_;
	my $start = time;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$q");
	return ($out, $err, time - $start);
}

# ---- provisioning changes what checks return
is(sql(q{SELECT stigg_has_access('customer-new', 'feature-04-analytics')}), 'f', 'an unknown customer has no access');
is(sql(q{SELECT stigg_provision_customer('customer-new', 'Acme', 'ops@acme.test', 'plan-revvenu-free', 'Monthly')
             #>> '{subscription,plan,refId}'}), 'plan-revvenu-free', 'provision a customer with a plan');
is(sql(q{SELECT stigg_has_access('customer-new', 'feature-04-analytics')}), 't',
	'the plan shows at once (provisioning invalidates the cache)');
is(sql(q{SELECT stigg_provision_subscription('customer-new', 'plan-revvenu-sites', resource_id => 'site-7') ->> 'status'}),
	'SUCCESS', 'provision a subscription for a resource');
is(sql(q{SELECT stigg_get_numeric_entitlement('customer-new', 'feature-06-max-file-size', 'site-7') #>> '{entitlement,value}'}),
	'500', 'the resource has its plan');
is(sql(q{SELECT stigg_api('query Get($id: String!) { getCustomerByRefId(input: {customerId: $id}) { customerId name } }',
                          '{"id": "customer-new"}') #>> '{getCustomerByRefId,name}'}), 'Acme', 'stigg_api with variables');

# ---- the dev API deduplicates usage by idempotency key
{
	my $q = q{SELECT stigg_api('mutation R($input: ReportUsageInput!) { reportUsage(input: $input) { id currentUsage } }',
	                           '{"input": {"customerId": "customer-enterprise", "featureId": "feature-02-campaigns",
	                                       "value": 5, "idempotencyKey": "key-7"}}')->'reportUsage'};
	my $first = sql($q);
	my $again = sql($q);
	is($again, $first, 'the same key twice: the first answer, once');
	like($first, qr/"currentUsage": 5/, 'applied once');
}

# ---- bad input, GraphQL errors, a wrong key
my ($out, $err) = run(q{SELECT stigg_provision_subscription('customer-new', 'plan-revvenu-free', 'weekly')});
like($err, qr/22023: invalid billing_period "weekly"/, 'a bad billing period');
($out, $err) = run(q{SELECT stigg_api('query { nope }')});
like($err, qr/SG002: the Stigg API returned an error: Cannot query field/, 'GraphQL errors become SG002');
$sc->set_faults({ method => 'graphql', action => 'error', message => 'first problem', times => 1 });
($out, $err) = run(q{SELECT stigg_api('query { x }')});
like($err, qr/the Stigg API returned an error: first problem\nDETAIL:  1 more: a second error/,
	'the first error in the message, the rest in the detail');
($out, $err) = run(q{SET stigg.api_key = 'not-the-key'; SELECT stigg_api('query { x }')});
like($err, qr/28000: the Stigg API refused the API key \(HTTP 401\)/, 'a wrong key: 28000');
unlike($err, qr/not-the-key|$key/, 'the error shows no key');

# ---- down, slow, cancelled, garbage
$sc->set_faults({ method => 'graphql', action => 'garbage', times => 1 });
($out, $err) = run(q{SELECT stigg_api('query { x }')});
like($err, qr/08P01: the Stigg API at .* answered something that is not JSON/, 'garbage: protocol_violation');
$sc->set_faults({ method => 'graphql', action => 'delay', ms => 3000, times => 1 });
my $secs;
($out, $err, $secs) = run(q{SET statement_timeout = '300ms'; SELECT stigg_api('query { x }')});
like($err, qr/57014: canceling statement due to statement timeout/, 'a slow API: statement_timeout interrupts');
cmp_ok($secs, '<', 1.5, "within $secs s");
$sc->set_faults({ method => 'graphql', action => 'delay', ms => 3000, times => 1 });
($out, $err, $secs) = run(q{SET stigg.api_timeout = 300; SELECT stigg_api('query { x }')});
like($err, qr/57014: the Stigg API at .* did not answer within 300 ms/, 'stigg.api_timeout is the deadline');
{
	$sc->set_faults({ method => 'graphql', action => 'hang', ms => 20000, times => 1 });
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $bg->query_safe('SELECT pg_backend_pid()');
	$bg->{stdin} .= "SET stigg.api_timeout = '30s'; SELECT stigg_api('query { x }');\n\\echo done\n";
	$bg->{run}->pump_nb;
	$node->poll_query_until('postgres', "SELECT state = 'active' FROM pg_stat_activity WHERE pid = $pid AND query LIKE '%stigg_api%'")
	  or die 'no call';
	my $start = time;
	sql("SELECT pg_cancel_backend($pid)");
	$bg->{run}->pump until $bg->{stdout} =~ /done/ || $bg->{timeout}->is_expired;
	cmp_ok(time - $start, '<', 1, 'pg_cancel_backend interrupts a hung API call');
	like($bg->{stderr}, qr/canceling statement due to user request/, 'as a cancel');
	$bg->{stderr} = '';
	$bg->{stdout} = '';
	$sc->clear_faults;
	is($bg->query_safe(q{SELECT stigg_api('query ($id: String!) { getCustomerByRefId(input: {customerId: $id}) { name } }', '{"id": "customer-new"}') IS NOT NULL}),
		't', 'the session works after the cancel');
	$bg->quit;
}
($out, $err) = run(q{SET stigg.api_url = 'http://127.0.0.1:1'; SELECT stigg_api('query { x }')});
like($err, qr/08006: could not reach the Stigg API at http:\/\/127.0.0.1:1\/graphql/, 'the API down: 08006');

# ---- provisioning after commit: a rollback provisions nothing, a commit once
{
	sql(q{BEGIN; SELECT stigg_provision_customer_after_commit('customer-tx-1', 'One', plan_id => 'plan-revvenu-free'); ROLLBACK;});
	my $done = sql(q{BEGIN; SELECT stigg_provision_customer_after_commit('customer-tx-2', 'Two', plan_id => 'plan-revvenu-free'); COMMIT;});
	sql(q{SELECT stigg_provision_subscription_after_commit('customer-tx-2', 'plan-nope')});
	$node->poll_query_until('postgres', q{SELECT count(*) = 2 FROM stigg.provisioning WHERE state <> 'pending'})
	  or die 'provisioning did not run';
	is(sql(q{SELECT count(*) FROM stigg.provisioning WHERE customer_id = 'customer-tx-1'}), '0', 'a rolled-back request leaves no row');
	is(sql(q{SELECT state || ' ' || (result #>> '{provisionCustomer,customer,name}') FROM stigg.provisioning WHERE customer_id = 'customer-tx-2' AND operation = 'provisionCustomer'}),
		'done Two', 'the committed one ran, its result recorded');
	like(sql(q{SELECT state || ': ' || error FROM stigg.provisioning WHERE operation = 'provisionSubscription'}),
		qr/^failed: .*Plan not found: plan-nope/, 'a refused one is recorded with the reason');
	is(sql(q{SELECT stigg_has_access('customer-tx-2', 'feature-04-analytics'), stigg_has_access('customer-tx-1', 'feature-04-analytics')}),
		't|f', 'the committed customer has the plan; the rolled-back one does not exist');
	my $calls = $sc->stats->{apiCalls};
	is($calls->{provisionCustomer}, 2, 'provisionCustomer ran once for the commit (and once earlier in this test)');
}

# ---- the key is invisible to everyone else
sql(q{CREATE ROLE app LOGIN; CREATE ROLE reader LOGIN; GRANT pg_read_all_settings TO reader;
      GRANT EXECUTE ON FUNCTION stigg_api(text, jsonb) TO app});
($out, $err) = run(q{SET ROLE app; SHOW stigg.api_key});
like($err, qr/must be superuser or have privileges of pg_read_all_settings/, 'SHOW: refused');
($out, $err) = run(q{SET ROLE app; SELECT current_setting('stigg.api_key')});
like($err, qr/must be superuser or have privileges of pg_read_all_settings/, 'current_setting: refused');
($out, $err) = run(q{SET ROLE app; SELECT current_setting('stigg.api_key_file')});
like($err, qr/must be superuser/, 'the key file name too');
is(sql(q{SET ROLE app; SELECT count(*) FROM pg_settings WHERE name LIKE 'stigg.api_key%'}), '0', 'pg_settings: no row');
is(sql(q{SET ROLE reader; SHOW stigg.api_key}), '', 'with pg_read_all_settings: nothing (the key is in the file)');
is(sql(qq{SET stigg.api_key = '$key'; SET ROLE reader; SHOW stigg.api_key}), '********', 'with pg_read_all_settings: masked');
is(sql(qq{SET stigg.api_key = '$key'; SET ROLE reader; SELECT count(*) FROM pg_settings WHERE name = 'stigg.api_key'}),
	'0', 'pg_settings: no row, even for pg_read_all_settings');
is(sql(qq{SET stigg.api_key = '$key'; SHOW stigg.api_key}), '********', 'even a superuser sees it masked');
($out, $err) = run(qq{ALTER ROLE app SET stigg.api_key = '$key'});
like($err, qr/stigg.api_key cannot be stored with ALTER ROLE, ALTER DATABASE or a function's SET clause/,
	'ALTER ROLE ... SET refused: pg_db_role_setting is readable by every role');
($out, $err) = run(qq{ALTER DATABASE postgres SET stigg.api_key = '$key'});
like($err, qr/cannot be stored with ALTER ROLE, ALTER DATABASE/, 'ALTER DATABASE ... SET refused');
($out, $err) = run(qq{CREATE FUNCTION f() RETURNS int LANGUAGE sql SET stigg.api_key = '$key' AS 'SELECT 1'});
like($err, qr/cannot be stored/, "a function's SET clause refused (pg_proc is readable by every role)");
is(sql(q{SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, ',') LIKE '%api_key=%'}), '0',
	'nothing stored');
sql(qq{ALTER ROLE app SET stigg.api_key_file = '$keyfile'});
pass('per role: a key file');
($out, $err) = run(q{SET ROLE app; SELECT pg_read_file('postgresql.auto.conf')});
like($err, qr/permission denied for function pg_read_file/, 'the configuration file is closed');
($out, $err) = run(q{SET ROLE app; SELECT * FROM pg_file_settings});
like($err, qr/permission denied/, 'pg_file_settings is closed');
($out, $err) = run(q{SET ROLE app; SELECT stigg_api('query ($id: String!) { getCustomerByRefId(input: {customerId: $id}) { name } }', '{"id": "customer-new"}')});
like($out, qr/Acme/, 'a role granted stigg_api calls the API without seeing the key');
($out, $err) = run(q{SET ROLE reader; SELECT stigg_api('query { x }')});
like($err, qr/permission denied for function stigg_api/, 'stigg_api is not for PUBLIC');
# the server log, apart from the statements this test logged on purpose
# (log_statement = all), never shows the key
my $log = slurp_file($node->logfile);
$log =~ s/^.*statement: .*stigg\.api_key = .*$//mg;
$log =~ s/^.*stigg\.api_key = .*\n?//mg;
unlike($log, qr/\Q$key\E/, 'the server log shows no key');

$node->stop;
$sc->stop;

# ---- TLS: a self-signed endpoint is refused unless its CA is configured
{
	system_or_bail('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
		'-subj', '/CN=localhost', '-addext', 'subjectAltName = DNS:localhost, IP:127.0.0.1',
		'-keyout', "$dir/api.key", '-out', "$dir/api.pem");
	my $tls = StiggSidecar->start(api_tls_cert => "$dir/api.pem", api_tls_key => "$dir/api.key");
	my $tnode = StiggSidecar->new_node('api_tls', $tls,
		'stigg.api_url' => "'" . $tls->api_url('https') . "'",
		'stigg.api_key_file' => "'$keyfile'");
	my ($r, $o, $e) = $tnode->psql('postgres', "\\set VERBOSITY verbose\nSELECT stigg_api('query { x }')");
	like($e, qr/08006: could not establish a TLS connection to the Stigg API/, 'a self-signed API is refused');
	like($e, qr/HINT:  Set stigg.api_ca_file/, 'with a hint');
	is($tnode->safe_psql('postgres', qq{SET stigg.api_ca_file = '$dir/api.pem';
		SELECT stigg_api('query (\$id: String!) { getCustomerByRefId(input: {customerId: \$id}) { customerId } }', '{"id": "customer-demo-01"}')
		  #>> '{getCustomerByRefId,customerId}'}), 'customer-demo-01', 'accepted with its CA');
	$tnode->stop;
	$tls->stop;
}

done_testing();
