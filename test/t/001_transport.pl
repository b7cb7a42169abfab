# The transport against a real dev sidecar and its faults: connection reuse,
# sidecar down and restarted, hangs with every kind of interruption, garbage
# and oversized replies, gRPC status codes, and settings that change under a
# live session. After each failure the same session must work again.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

use StiggSidecar;

my $sc = StiggSidecar->start;
my $node = PostgreSQL::Test::Cluster->new('transport');
$node->init;
# every check a round trip: these tests are about the transport
$node->append_conf('postgresql.conf', $sc->conf . "stigg.cache_ttl = 0\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION stigg');

my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe('\set VERBOSITY verbose');

# Runs SQL in the long-lived session; returns (stdout, stderr, seconds).
sub run_sql
{
	my ($sql) = @_;
	$bg->{stderr} = '';
	my $start = time;
	my ($out) = $bg->query($sql);
	return ($out, $bg->{stderr}, time - $start);
}

my $check = q{SELECT stigg_has_access('customer-demo-01', 'feature-04-analytics')};

sub session_works
{
	my ($what) = @_;
	my ($out, $err) = run_sql($check);
	is($out, 't', "session works again after $what") or diag($err);
	return;
}

# ---- one connection, reused
{
	$sc->reset_stats;
	my ($out, $err) = run_sql(
		"SELECT count(*) FROM generate_series(1, 50) g WHERE NOT stigg_has_access('customer-' || g, 'feature-04-analytics')");
	is($out, '50', '50 checks of distinct customers in one statement');
	my ($out2) = run_sql($check);
	my $stats = $sc->stats;
	is($stats->{calls}{GetEntitlement}, 51, 'the sidecar received every call');
	is(scalar @{ $stats->{peers} }, 1, 'all calls of a backend share one connection');
}

# ---- the sidecar restarts between two calls: the next call succeeds
{
	my $port = $sc->port;
	$sc->stop;
	$sc = StiggSidecar->start(port => $port);
	session_works('a sidecar restart between calls');
}

# ---- sidecar down: connection_failure naming the address, with a hint
{
	my $port = $sc->port;
	$sc->stop;
	my ($out, $err, $secs) = run_sql($check);
	like($err, qr/ERROR:  08006: could not connect to the stigg sidecar at localhost:$port/,
		'sidecar down: connection_failure with the address');
	like($err, qr/HINT:  Check that the sidecar is running/, 'sidecar down: a hint');
	cmp_ok($secs, '<', 2, 'sidecar down: fails fast');
	$sc = StiggSidecar->start(port => $port);
	session_works('the sidecar came back');
}

# ---- a hung sidecar and every way out of the wait
$sc->set_faults({ method => 'GetEntitlement', action => 'hang' });
{
	run_sql(q{SET stigg.timeout = '30s'; SET statement_timeout = '300ms'});
	my ($out, $err, $secs) = run_sql($check);
	like($err, qr/57014: canceling statement due to statement timeout/,
		'hung sidecar: statement_timeout interrupts the call');
	cmp_ok($secs, '<', 0.3 + 0.5, "statement_timeout took effect within 500 ms ($secs s)");
	run_sql('RESET statement_timeout');
}
{
	run_sql(q{SET stigg.timeout = 200});
	my ($out, $err, $secs) = run_sql($check);
	like($err, qr/57014: stigg sidecar method GetEntitlement timed out after 200 ms/,
		'hung sidecar: stigg.timeout is the deadline');
	like($err, qr/HINT:  Raise stigg.timeout/, 'deadline: a hint');
	cmp_ok($secs, '>=', 0.19, 'deadline: not before it');
	cmp_ok($secs, '<', 0.2 + 0.5, "deadline: within 500 ms of it ($secs s)");
	run_sql(q{SET stigg.timeout = '30s'});
}
{
	# pg_cancel_backend from another session
	my $pid = (run_sql('SELECT pg_backend_pid()'))[0];
	$bg->{stderr} = '';
	$bg->{stdin} .= "$check;\n\\echo 'cancel-done'\n";
	$bg->{run}->pump_nb;
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $pid AND state = 'active' AND query LIKE '%stigg_has_access%'"
	) or die 'the call never started';
	my $start = time;
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
	$bg->{run}->pump until $bg->{stdout} =~ /cancel-done/ || $bg->{timeout}->is_expired;
	my $secs = time - $start;
	$bg->{stdout} = '';
	like($bg->{stderr}, qr/57014: canceling statement due to user request/,
		'hung sidecar: pg_cancel_backend interrupts the call');
	cmp_ok($secs, '<', 0.5, "cancel took effect within 500 ms ($secs s)");
}
$sc->clear_faults;
session_works('statement_timeout, stigg.timeout and a cancel');

{
	# pg_terminate_backend ends the session, not the server
	$sc->set_faults({ method => 'GetEntitlement', action => 'hang' });
	my $victim = $node->background_psql('postgres', on_error_stop => 0);
	my $pid = $victim->query_safe('SELECT pg_backend_pid()');
	$victim->{stdin} .= "SET stigg.timeout = '30s';\n$check;\n";
	$victim->{run}->pump_nb;
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $pid AND query LIKE '%stigg_has_access%'")
	  or die 'the call never started';
	my $start = time;
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
	$node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid")
	  or die 'the backend did not exit';
	my $secs = time - $start;
	cmp_ok($secs, '<', 1, "pg_terminate_backend ended the hung call's backend ($secs s)");
	$victim->{run}->kill_kill;
	$sc->clear_faults;
	is($node->safe_psql('postgres', $check), 't', 'the server is fine after a terminate');
}

# ---- replies that are not what gRPC promises
{
	$sc->set_faults({ method => 'GetEntitlement', action => 'garbage', times => 1 });
	my ($out, $err) = run_sql($check);
	like($err, qr/08P01: invalid response from the stigg sidecar .* to method GetEntitlement/,
		'garbage reply: protocol_violation');
	like($err, qr/is not a valid stigg.sidecar.v1.GetEntitlementResponse/, 'garbage reply: says why');
	session_works('a garbage reply');

	$sc->set_faults({ method => 'GetEntitlement', action => 'oversize', times => 1 });
	($out, $err) = run_sql($check);
	like($err, qr/08P01: invalid response .*\n.*DETAIL:  the response is larger than 4194304 bytes/,
		'oversized reply: protocol_violation, bounded');
	session_works('an oversized reply');
}
{
	# a peer that does not speak gRPC at all: the sidecar's HTTP/1.1 control port
	run_sql("SET stigg.sidecar_port = $sc->{control_port}");
	my ($out, $err) = run_sql($check);
	like($err, qr/ERROR:  (08P01|08006): /, 'a non-gRPC peer is a protocol or connection error')
	  or diag $err;
	run_sql('RESET stigg.sidecar_port');
	session_works('talking to a non-gRPC peer');
}

# ---- gRPC status codes map to documented SQLSTATEs
my %sqlstate = (
	CANCELLED => '57014',
	UNKNOWN => '58000',
	INVALID_ARGUMENT => '22023',
	DEADLINE_EXCEEDED => '57014',
	NOT_FOUND => '42704',
	ALREADY_EXISTS => '42710',
	PERMISSION_DENIED => '42501',
	RESOURCE_EXHAUSTED => '53000',
	FAILED_PRECONDITION => '55000',
	ABORTED => '40001',
	OUT_OF_RANGE => '22023',
	UNIMPLEMENTED => '0A000',
	INTERNAL => '58000',
	UNAVAILABLE => '08006',
	DATA_LOSS => '58000',
	UNAUTHENTICATED => '28000',);
for my $code (sort keys %sqlstate)
{
	$sc->set_faults({ method => 'GetEntitlement', action => 'error', code => $code,
		message => "injected $code", times => 1 });
	my ($out, $err) = run_sql($check);
	like($err,
		qr/$sqlstate{$code}: stigg sidecar method GetEntitlement failed with status $code\n.*DETAIL:  injected $code/,
		"gRPC $code is SQLSTATE $sqlstate{$code}");
}
session_works('gRPC errors');

# ---- N failures, then success: no hidden retries of a call that got an answer
{
	$sc->reset_stats;
	$sc->set_faults({ method => 'GetEntitlement', action => 'error', code => 'UNAVAILABLE', times => 2 });
	my @errs = map { (run_sql($check))[1] } 1 .. 2;
	like($errs[0], qr/08006/, 'first injected failure reaches SQL');
	like($errs[1], qr/08006/, 'second injected failure reaches SQL');
	session_works('two failures');
	is($sc->calls('GetEntitlement'), 3, 'each call was sent exactly once');
}

# ---- settings: SET and a reload take effect on the next call
{
	my $other = StiggSidecar->start;
	run_sql("SET stigg.sidecar_port = " . $other->port);
	session_works('SET stigg.sidecar_port');
	is($other->calls('GetEntitlement'), 1, 'SET: the call went to the new port');
	run_sql('RESET stigg.sidecar_port');

	$node->safe_psql('postgres', "ALTER SYSTEM SET stigg.sidecar_port = " . $other->port);
	$node->reload;
	$node->poll_query_until('postgres', "SELECT current_setting('stigg.sidecar_port') = '" . $other->port . "'");
	my ($port) = run_sql('SHOW stigg.sidecar_port');
	is($port, $other->port, 'reload: the live session sees the new port');
	session_works('a reload');
	is($other->calls('GetEntitlement'), 2, 'reload: the call went to the new port');
	$node->safe_psql('postgres', 'ALTER SYSTEM RESET stigg.sidecar_port');
	$node->reload;
	$other->stop;
}

# ---- the clock moves past a reset: usage restarts and the next reset moves on
{
	my $q = q{SELECT current_usage || ' ' || to_char(next_reset_date AT TIME ZONE 'UTC', 'YYYY-MM-DD')
	            FROM stigg_entitlements('customer-demo-01') WHERE feature_id = 'feature-07-active-users'};
	is($node->safe_psql('postgres', $q), '1 2023-12-21', 'before the reset');
	$sc->set_clock(now => '2023-12-21T00:00:01Z');
	is($node->safe_psql('postgres', $q), '0 2024-01-21', 'after the reset: usage 0, next period');
}

$bg->quit;
$node->stop;
$sc->stop;
done_testing();
