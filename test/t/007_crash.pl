# The worker is killed with SIGKILL twenty times while it delivers a loaded
# queue (each kill makes the postmaster restart every process), then the
# server stops in immediate mode and starts again. Nothing committed is
# lost; a row may reach the sidecar twice only when a kill fell between the
# sidecar's answer and the worker's commit, and at most one batch per kill.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

use StiggSidecar;

my $kills = $ENV{STIGG_KILLS} // 20;
my $batch = 100;
my @keys = (
	[ 'customer-enterprise', 'feature-09-api-calls' ],
	[ 'customer-enterprise', 'feature-02-campaigns' ],
	[ 'customer-demo-01',    'feature-07-active-users' ],
	[ 'customer-demo-02',    'feature-13-ai-credits' ]);

# a slow sidecar keeps batches in flight long enough for kills to land there
my $sc = StiggSidecar->start(faults => [ { method => 'ReportUsageBulk', action => 'delay', ms => 20 } ]);
my $node = StiggSidecar->new_node('crash', $sc,
	'stigg.batch_size' => $batch,
	'stigg.retry_max_delay' => "'200ms'",
	restart_after_crash => 'on');
$node->safe_psql('postgres', 'CREATE SEQUENCE n; CREATE SEQUENCE e');

sub load
{
	my ($rows) = @_;
	my $case = join(' ', map { "WHEN $_ THEN '$keys[$_][0]|$keys[$_][1]'" } 0 .. $#keys);
	$node->safe_psql('postgres', qq{
		SELECT stigg_report_usage(split_part(k, '|', 1), split_part(k, '|', 2), 1,
		                          dimensions => jsonb_build_object('n', nextval('n')))
		  FROM (SELECT CASE g % 4 $case END AS k FROM generate_series(1, $rows) g) s;
		SELECT stigg_report_event('customer-demo-01', 'page_view', '{}', 'ev-' || nextval('e'))
		  FROM generate_series(1, 20);});
	return;
}

sub worker_pid
{
	$node->poll_query_until('postgres', 'SELECT worker_pid IS NOT NULL FROM stigg.queue_status LIMIT 1')
	  or die 'no worker';
	return $node->safe_psql('postgres', 'SELECT worker_pid FROM stigg.queue_status LIMIT 1');
}

my $landed_in_send = 0;
for my $i (1 .. $kills)
{
	load(1000);
	my $pid = worker_pid();
	usleep(int(rand(150_000)));
	my $state = $node->safe_psql('postgres', 'SELECT worker_state FROM stigg.queue_status LIMIT 1');
	$landed_in_send++ if $state =~ /sending/;
	kill 'KILL', $pid;
	# the postmaster restarts everything; wait for a new worker
	$node->poll_query_until('postgres', "SELECT worker_pid IS NOT NULL AND worker_pid <> $pid FROM stigg.queue_status LIMIT 1")
	  or die "no worker after kill $i";
}
note "$kills kills, $landed_in_send while the worker was sending";
cmp_ok($landed_in_send, '>', 0, 'some kills landed during a send');

load(1000);
usleep(100_000);
$node->stop('immediate');
$node->start;
$node->safe_psql('postgres', "SELECT stigg_flush('120s')");
$sc->clear_faults;

# ---- what was committed, against what the sidecar applied
my %committed = map { $_ => 1 } split /\n/,
  $node->safe_psql('postgres', "SELECT dimensions->>'n' FROM stigg.usage_queue");
is($node->safe_psql('postgres', "SELECT count(*) FROM stigg.usage_queue WHERE state <> 'delivered'"),
	'0', 'the queue is drained');
my %applied;
for my $k (@keys)
{
	for my $m (@{ $sc->measurements(customerId => $k->[0], featureId => $k->[1]) })
	{
		$applied{ $m->{dimensions}{n} }++;
	}
}
my @lost = grep { !$applied{$_} } keys %committed;
my @twice = grep { $applied{$_} > 1 } keys %applied;
my @unknown = grep { !$committed{$_} } keys %applied;
my $resends = 0;
$resends += $applied{$_} - 1 for @twice;
note scalar(keys %committed) . " rows committed; $resends resent (" . scalar(@twice) . " rows)";
is(scalar(@lost), 0, 'no committed row is lost');
is(scalar(@unknown), 0, 'nothing uncommitted reached the sidecar');
cmp_ok($resends, '<=', ($kills + 1) * $batch, 'resends stay within one batch per kill');

# per key: the sidecar's total is the committed total plus the resends
for my $k (@keys)
{
	my @ns = map { $_->{dimensions}{n} } @{ $sc->measurements(customerId => $k->[0], featureId => $k->[1]) };
	my %seen;
	$seen{$_}++ for @ns;
	my $extra = 0;
	$extra += $seen{$_} - 1 for keys %seen;
	my $c = $node->safe_psql('postgres',
		"SELECT count(*) FROM stigg.usage_queue WHERE customer_id = '$k->[0]' AND feature_id = '$k->[1]'");
	is(scalar(keys %seen), $c, "$k->[0] $k->[1]: every committed row applied");
	is(scalar(@ns), $c + $extra, "$k->[0] $k->[1]: sidecar total = committed $c + $extra resent");
}

# events: the accepted set has each key once
my $ev = $sc->events;
my %keys;
$keys{$_}++ for @{ $ev->{keys} };
is(scalar(keys %keys), ($kills + 1) * 20, 'every event key accepted');
is(scalar(grep { $_ > 1 } values %keys), 0, 'no event key accepted twice');
note "the sidecar dropped $ev->{duplicates} repeated event keys";

$node->stop;
$sc->stop;
done_testing();
