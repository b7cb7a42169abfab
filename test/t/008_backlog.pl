# A large backlog (STIGG_BACKLOG_ROWS, default 100000) drains in bounded
# batches: the worker's memory stays flat and it never restarts.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use StiggSidecar;

my $rows = $ENV{STIGG_BACKLOG_ROWS} // 100_000;
my $sc = StiggSidecar->start;
my $node = StiggSidecar->new_node('backlog', $sc, 'stigg.batch_size' => 1000);

# queue the backlog while the sidecar refuses, so it all waits
$sc->set_faults({ method => '*', action => 'error', code => 'UNAVAILABLE' });
my $t0 = time;
$node->safe_psql('postgres', qq{
	SELECT count(stigg_report_usage('customer-enterprise', 'feature-09-api-calls', 1))
	  FROM generate_series(1, $rows)});
my $enqueue = time - $t0;
my $pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM stigg.queue_status LIMIT 1');

sub rss_kb
{
	open(my $f, '<', "/proc/$pid/status") or return 0;
	while (<$f>) { return $1 if /^RssAnon:\s+(\d+)/; }
	return 0;
}
my $rss_before = rss_kb();
$sc->clear_faults;
$t0 = time;
my $peak = 0;
my $done = 0;
while (!$done && time - $t0 < 600)
{
	my $r = rss_kb();
	$peak = $r if $r > $peak;
	$done = $node->safe_psql('postgres',
		"SELECT count(*) = 0 FROM stigg.usage_queue WHERE state <> 'delivered'") eq 't';
	usleep(200_000) unless $done;
}
my $drain = time - $t0;
note sprintf('%d rows: queued in %.1f s (%.0f rows/s); delivered in %.1f s (%.0f rows/s); worker private memory (RssAnon) %d kB -> peak %d kB',
	$rows, $enqueue, $rows / $enqueue, $drain, $rows / $drain, $rss_before, $peak);
ok($done, "the backlog of $rows rows drained");
cmp_ok($peak - $rss_before, '<', 16 * 1024, "the worker's private memory grew by less than 16 MB");
is($node->safe_psql('postgres', 'SELECT worker_pid FROM stigg.queue_status LIMIT 1'), $pid,
	'the worker never restarted');
my ($u) = grep { $_->{featureId} eq 'feature-09-api-calls' && $_->{customerId} eq 'customer-enterprise' }
  @{ $sc->usage->{usage} };
is($u->{currentUsage}, 123456 + $rows, 'the sidecar counted every row once');

$node->stop;
$sc->stop;
done_testing();
