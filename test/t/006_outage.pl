# The sidecar goes away for a while (STIGG_OUTAGE_SECONDS, default 60)
# while a client keeps reporting, one transaction a row, then comes back:
# everything committed is delivered, in order, nothing twice.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use StiggSidecar;

my $outage = $ENV{STIGG_OUTAGE_SECONDS} // 60;
my ($C, $F) = ('customer-enterprise', 'feature-09-api-calls');

my $sc = StiggSidecar->start;
my $node = StiggSidecar->new_node('outage', $sc, 'stigg.retry_max_delay' => "'1s'");
$node->safe_psql('postgres', 'CREATE SEQUENCE n');

# one client: a row every 50 ms, each in its own transaction, until told to stop
my $reporter = $node->background_psql('postgres');
$reporter->query_safe('CREATE TABLE stop_flag (stop boolean)');
$reporter->{stdin} .= qq{DO \$\$
BEGIN
  LOOP
    PERFORM stigg_report_usage('$C', '$F', 1, dimensions => jsonb_build_object('n', nextval('n')));
    COMMIT;
    EXIT WHEN EXISTS (SELECT FROM stop_flag);
    PERFORM pg_sleep(0.05);
  END LOOP;
END \$\$;
\\echo reporter-done
};
$reporter->{run}->pump_nb;

$node->poll_query_until('postgres', "SELECT count(*) >= 20 FROM stigg.usage_queue WHERE state = 'delivered'")
  or die 'nothing delivered before the outage';

# the sidecar keeps what it applied in memory: fence it, then read it
$sc->set_faults({ method => '*', action => 'error', code => 'UNAVAILABLE' });
my @before = map { $_->{dimensions}{n} } @{ $sc->measurements(customerId => $C, featureId => $F) };
my $port = $sc->port;
$sc->stop;
note "sidecar down for $outage s";
my $down_at = time;
usleep(1_000_000) while time - $down_at < $outage;
my $pending = $node->safe_psql('postgres', "SELECT pending FROM stigg.queue_status WHERE kind = 'usage'");
cmp_ok($pending, '>', 0, "rows wait while the sidecar is down ($pending pending)");
like($node->safe_psql('postgres', "SELECT last_error FROM stigg.queue_status LIMIT 1"),
	qr/could not connect/, 'the status view says why');

$sc = StiggSidecar->start(port => $port);
usleep(2_000_000);    # keep reporting for a while after it is back
$node->safe_psql('postgres', 'INSERT INTO stop_flag VALUES (true)');
$reporter->{run}->pump until $reporter->{stdout} =~ /reporter-done/ || $reporter->{timeout}->is_expired;
$reporter->quit;

my $flushed = time;
$node->safe_psql('postgres', "SELECT stigg_flush('60s')");
note sprintf('drained %.1f s after the reporter stopped', time - $flushed);

my $committed = $node->safe_psql('postgres', 'SELECT count(*) FROM stigg.usage_queue');
my $ns = [ @before, map { $_->{dimensions}{n} } @{ $sc->measurements(customerId => $C, featureId => $F) } ];
note "committed $committed rows; the sidecar applied " . scalar(@$ns);
is($node->safe_psql('postgres', "SELECT count(*) FROM stigg.usage_queue WHERE state <> 'delivered'"),
	'0', 'everything committed is delivered');
is(scalar(@$ns), $committed, 'the sidecar applied each committed row once');
is_deeply($ns, [ 1 .. $committed ], 'in commit order');
is($node->safe_psql('postgres', 'SELECT resent FROM stigg.worker_info()'), '0',
	'connection failures send nothing twice');

$node->stop;
$sc->stop;
done_testing();
