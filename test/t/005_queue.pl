# The usage queue and its worker against the dev sidecar: what commits is
# delivered, in commit order per key, and nothing else; failures are retried
# or dead-lettered; the worker is woken by commits, reloads, restarts and
# stops cleanly; a hot standby refuses reports clearly.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use StiggSidecar;

my $sc = StiggSidecar->start;
# stigg.worker_naptime is 1h: whatever is delivered here was woken
my $node = StiggSidecar->new_node('queue', $sc, allows_streaming => 1);

sub sql { return $node->safe_psql('postgres', $_[0]); }

# The n dimension of every measurement the sidecar applied for a key.
sub delivered_ns
{
	my ($customer, $feature) = @_;
	return [ map { $_->{dimensions}{n} }
		  @{ $sc->measurements(customerId => $customer, featureId => $feature) } ];
}

sub report
{
	my ($customer, $feature, $value, $n, $behavior) = @_;
	$behavior //= 'delta';
	return "SELECT stigg_report_usage('$customer', '$feature', $value, '$behavior', dimensions => '{\"n\": $n}');";
}

# ---- a commit wakes the worker; nothing polls
{
	my $start = time;
	sql(report('customer-enterprise', 'feature-09-api-calls', 1, 0));
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM stigg.usage_queue WHERE state = 'delivered'")
	  or die 'not delivered';
	my $secs = time - $start;
	cmp_ok($secs, '<', 2, "delivered $secs s after commit, with a 1 h naptime");
	my ($mid, $usage) = split /\|/,
	  sql("SELECT measurement_id, current_usage FROM stigg.usage_queue WHERE state = 'delivered'");
	like($mid, qr/^[0-9a-f-]{36}$/, 'the acknowledgement is kept: measurement id');
	is($usage, '123457', 'the acknowledgement is kept: current usage after the report');
}

# ---- commit, rollback, savepoint, two-phase commit
{
	my ($C, $F) = ('customer-demo-02', 'feature-01-templates');
	sql("BEGIN; " . report($C, $F, 1, 1) . " COMMIT;");
	sql("BEGIN; " . report($C, $F, 100, 2) . " ROLLBACK;");
	sql("BEGIN; " . report($C, $F, 1, 3) . " SAVEPOINT s; " . report($C, $F, 100, 4)
		  . " ROLLBACK TO SAVEPOINT s; " . report($C, $F, 1, 5) . " COMMIT;");
	sql("BEGIN; " . report($C, $F, 7, 6, 'set') . " PREPARE TRANSACTION 'p1';");
	# the prepared SET holds its key: a report of the same key waits for it
	my ($ret, $out, $err) = $node->psql('postgres',
		"SET lock_timeout = '200ms'; " . report($C, $F, 100, 99));
	like($err, qr/lock timeout/, 'a prepared SET holds back later reports of its key');
	sql("COMMIT PREPARED 'p1'");
	# COMMIT PREPARED wakes the worker too
	$node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM stigg.usage_queue WHERE state <> 'delivered'")
	  or die 'prepared rows not delivered';
	sql("BEGIN; " . report($C, $F, 100, 7) . " PREPARE TRANSACTION 'p2';");
	sql("ROLLBACK PREPARED 'p2'");
	sql(report($C, $F, 1, 8));
	cmp_ok(sql('SELECT stigg_flush()'), '<=', 1, 'stigg_flush counts at most what it waited for');
	is_deeply(delivered_ns($C, $F), [ 1, 3, 5, 6, 8 ],
		'the sidecar got exactly the committed rows, in commit order');
	my ($u) = grep { $_->{customerId} eq $C && $_->{featureId} eq $F } @{ $sc->usage->{usage} };
	is($u->{currentUsage}, 8, 'usage at the sidecar: 1 + 1 + 1 + 1, set to 7, + 1');
}

# ---- a SET and DELTAs from racing sessions arrive in commit order
{
	my ($C, $F) = ('customer-demo-01', 'feature-02-campaigns');
	my $a = $node->background_psql('postgres');
	my $b = $node->background_psql('postgres', on_error_stop => 0);
	$a->query_safe('BEGIN');
	$a->query_safe(report($C, $F, 1, 11));
	my $bpid = $b->query_safe('SELECT pg_backend_pid()');
	$b->{stdin} .= report($C, $F, 20, 12, 'set') . "\n\\echo set-done\n";
	$b->{run}->pump_nb;
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_locks WHERE pid = $bpid AND NOT granted AND locktype = 'advisory'")
	  or die 'the SET did not wait';
	pass('a SET waits for the open transaction that reported a DELTA for its key');
	$a->query_safe(report($C, $F, 1, 13));
	$a->query_safe('COMMIT');
	$b->{run}->pump until $b->{stdout} =~ /set-done/ || $b->{timeout}->is_expired;
	$b->{stdout} = '';
	# and a DELTA waits for an open SET
	$b->query_safe('BEGIN');
	$b->query_safe(report($C, $F, 5, 14, 'set'));
	my $apid = $a->query_safe('SELECT pg_backend_pid()');
	$a->{stdin} .= report($C, $F, 1, 15) . "\n\\echo delta-done\n";
	$a->{run}->pump_nb;
	$node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_locks WHERE pid = $apid AND NOT granted AND locktype = 'advisory'")
	  or die 'the DELTA did not wait';
	$b->query_safe('COMMIT');
	$a->{run}->pump until $a->{stdout} =~ /delta-done/ || $a->{timeout}->is_expired;
	$a->quit;
	$b->quit;
	sql('SELECT stigg_flush()');
	is_deeply(delivered_ns($C, $F), [ 11, 13, 12, 14, 15 ], 'DELTA, DELTA, SET, SET, DELTA: commit order');
	my ($u) = grep { $_->{customerId} eq $C && $_->{featureId} eq $F } @{ $sc->usage->{usage} };
	is($u->{currentUsage}, 6, 'usage at the sidecar: set to 5, then + 1');
}

# ---- fail three times, then succeed: delivered exactly once
{
	my ($C, $F) = ('customer-enterprise', 'feature-02-campaigns');
	$sc->set_faults({ method => 'ReportUsageBulk', action => 'error', code => 'UNAVAILABLE',
		message => 'sidecar warming up', times => 3 });
	sql(join(' ', 'BEGIN;', (map { report($C, $F, 1, 100 + $_) } 1 .. 10), 'COMMIT;'));
	is(sql("SELECT stigg_flush('30s')"), '10', 'flush: 10 delivered after 3 failures');
	is_deeply(delivered_ns($C, $F), [ 101 .. 110 ], 'each row once, in order');
	like(sql('SELECT last_error FROM stigg.queue_status LIMIT 1'), qr/UNAVAILABLE: sidecar warming up/,
		'the last error is shown');
}

# ---- a send that times out may have been applied: the resend is counted
{
	my ($C, $F) = ('customer-enterprise', 'feature-12-exports');
	sql("ALTER SYSTEM SET stigg.timeout = '300ms'");
	sql('SELECT pg_reload_conf()');
	my $resent_before = sql('SELECT resent FROM stigg.worker_info()');
	$sc->set_faults({ method => 'ReportUsageBulk', action => 'delay', ms => 1000, times => 1 });
	sql(join(' ', map { report($C, $F, 1, 200 + $_) } 1 .. 4));
	sql("SELECT stigg_flush('30s')");
	usleep(1_200_000);    # let the slow first attempt finish at the sidecar
	my $ns = delivered_ns($C, $F);
	my %seen;
	$seen{$_}++ for @$ns;
	is_deeply([ sort keys %seen ], [ 201 .. 204 ], 'every row delivered at least once');
	my $dups = scalar(@$ns) - 4;
	my $resent = sql('SELECT resent FROM stigg.worker_info()') - $resent_before;
	note "a timed-out batch: $dups duplicate measurements, $resent rows counted as resent";
	cmp_ok($resent, '>=', 1, 'the timed-out batch is counted as resent');
	cmp_ok($dups, '<=', $resent, 'duplicates at the sidecar stay within what was counted');
	sql('ALTER SYSTEM RESET stigg.timeout');
	sql('SELECT pg_reload_conf()');
}

# ---- a poison row is dead-lettered; the rest goes through; requeue
{
	my ($C, $F) = ('customer-demo-01', 'feature-07-active-users');
	sql(join(' ', report($C, $F, 1, 301), report($C, $F, 1, 302),
			 report($C, 'feature-98-new', 1, 303), report($C, $F, 1, 304)));
	sql("SELECT stigg_flush('30s')");
	is(sql("SELECT count(*) FROM stigg.usage_queue WHERE feature_id = '$F' AND dimensions->>'n' BETWEEN '301' AND '304' AND state = 'delivered'"),
		'3', 'three delivered, one refused');
	is_deeply(delivered_ns($C, $F), [ 301, 302, 304 ], 'the good rows, in order');
	my ($id, $err) = split /\|/, sql("SELECT id, error FROM stigg.dead_letters WHERE kind = 'usage'");
	like($err, qr/NOT_FOUND: feature feature-98-new not found/, 'the dead letter says why');
	is(sql("SELECT payload->>'feature_id' FROM stigg.dead_letters"), 'feature-98-new', 'and what');
	is(sql("SELECT dead_lettered FROM stigg.queue_status WHERE kind = 'usage'"), '1', 'counted in the status view');

	# still unknown: refused again
	is(sql("SELECT stigg_requeue_dead_letters()"), '1', 'requeue moves it back');
	sql("SELECT stigg_flush('30s')");
	is(sql("SELECT count(*) FROM stigg.dead_letters"), '1', 'refused again');

	# the catalog learns the feature: requeue delivers it
	my $catalog = decode_json(slurp_file(StiggSidecar::default_catalog()));
	$catalog->{features}{'feature-98-new'} = { type => 'NUMBER', meterType => 'INCREMENTAL' };
	$catalog->{plans}{'plan-revvenu-essentials'}{entitlements}{'feature-98-new'} = { usageLimit => 10 };
	$sc->post('/catalog', $catalog);
	is(sql("SELECT stigg_requeue_dead_letters(ARRAY[(SELECT id FROM stigg.dead_letters)])"), '1', 'requeue by id');
	sql("SELECT stigg_flush('30s')");
	is(sql("SELECT state FROM stigg.usage_queue WHERE feature_id = 'feature-98-new'"), 'delivered', 'delivered after the fix');
	is(sql("SELECT count(*) FROM stigg.dead_letters"), '0', 'no dead letters left');
	is_deeply(delivered_ns($C, 'feature-98-new'), [303], 'the sidecar has it once');
}

# ---- events: the same key twice reaches the accepted set once
{
	sql(q{SELECT stigg_report_event('customer-demo-01', 'user_login', '{"user": "a"}', 'key-1');
	      SELECT stigg_report_event('customer-demo-01', 'user_login', '{"user": "b"}', 'key-2');
	      SELECT stigg_report_event('customer-demo-01', 'user_login', '{"user": "a"}', 'key-1');
	      SELECT stigg_report_event('customer-demo-01', 'user_login', '{"user": "c"}');});
	sql("SELECT stigg_flush('30s')");
	my $ev = $sc->events;
	my %keys;
	$keys{$_}++ for @{ $ev->{keys} };
	is(scalar(keys %keys), 3, 'three distinct keys accepted');
	is(scalar(grep { $_ > 1 } values %keys), 0, 'no key accepted twice');
	is($ev->{duplicates}, 1, 'the repeated key was dropped by the sidecar');
	is(sql("SELECT count(*) FROM stigg.event_queue WHERE state = 'delivered'"), '4', 'all settled');
}

# ---- settings reload: batch size
{
	sql("ALTER SYSTEM SET stigg.batch_size = 2");
	sql('SELECT pg_reload_conf()');
	usleep(200_000);
	$sc->reset_stats;
	sql(join(' ', 'BEGIN;', (map { report('customer-enterprise', 'feature-09-api-calls', 1, 400 + $_) } 1 .. 6), 'COMMIT;'));
	sql("SELECT stigg_flush('30s')");
	is($sc->calls('ReportUsageBulk'), 3, 'after a reload, 6 rows go in batches of 2');
	sql("ALTER SYSTEM RESET stigg.batch_size");
	sql('SELECT pg_reload_conf()');
}

# ---- the worker in pg_stat_activity; restart; clean stop during a hung send
{
	is(sql("SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity WHERE backend_type = 'stigg usage worker'"),
		$node->safe_psql('postgres', 'SHOW server_version_num') >= 170000 ? 'Extension:StiggWorkerMain' : 'Extension:Extension',
		'the idle worker waits on a named extension wait event');
	my $pid = sql('SELECT worker_pid FROM stigg.queue_status LIMIT 1');
	is(sql('SELECT stigg_restart_worker()'), 't', 'restart requested');
	$node->poll_query_until('postgres',
		"SELECT worker_pid IS NOT NULL AND worker_pid <> $pid AND worker_state = 'idle' FROM stigg.queue_status LIMIT 1")
	  or die 'no new worker';
	pass('a new worker runs after stigg_restart_worker');
	is(sql('SELECT stigg_worker_is_running()'), 't', 'stigg_worker_is_running');

	sql("ALTER SYSTEM SET stigg.timeout = '2s'");
	sql('SELECT pg_reload_conf()');
	$sc->set_faults({ method => 'ReportUsageBulk', action => 'hang' });
	sql(report('customer-enterprise', 'feature-09-api-calls', 1, 500));
	$node->poll_query_until('postgres', "SELECT worker_state = 'sending usage' FROM stigg.queue_status LIMIT 1")
	  or die 'the worker did not start sending';
	my $start = time;
	$node->stop('fast');
	my $secs = time - $start;
	cmp_ok($secs, '<', 5, "a fast shutdown with a hung send took $secs s (stigg.timeout 2 s)");
	$sc->clear_faults;
	$node->start;
	sql('ALTER SYSTEM RESET stigg.timeout');
	sql('SELECT pg_reload_conf()');
	sql("SELECT stigg_flush('30s')");
	is(sql("SELECT state FROM stigg.usage_queue WHERE dimensions->>'n' = '500'"), 'delivered',
		'the row survived the shutdown and is delivered');
	is_deeply([ grep { $_ == 500 } @{ delivered_ns('customer-enterprise', 'feature-09-api-calls') } ], [500],
		'once');
}

# ---- a hot standby refuses reports with a clear error
{
	$node->backup('b');
	my $standby = PostgreSQL::Test::Cluster->new('standby');
	$standby->init_from_backup($node, 'b', has_streaming => 1);
	$standby->start;
	my ($ret, $out, $err) = $standby->psql('postgres',
		"SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1)");
	like($err, qr/ERROR:  cannot report usage on a hot standby/, 'standby: a clear error');
	like($err, qr/HINT:  Report on the primary server/, 'standby: a hint');
	($ret, $out, $err) = $standby->psql('postgres', "\\set VERBOSITY verbose\nSELECT stigg_report_event('c', 'e')");
	like($err, qr/25006/, 'standby: read_only_sql_transaction');
	is($standby->safe_psql('postgres', 'SELECT stigg_worker_is_running()'), 'f', 'no worker on a standby');
	$standby->stop;
}

$node->stop;
$sc->stop;
done_testing();
