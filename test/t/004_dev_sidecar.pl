# The dev sidecar's own behaviour, checked by a gRPC client in Python
# (test/sidecar/selftest.py): usage, events, resets, V2 methods, faults.
use strict;
use warnings;

use File::Basename qw(dirname);
use File::Spec;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

use StiggSidecar;

my $sc = StiggSidecar->start;
my $selftest = dirname(File::Spec->rel2abs(__FILE__)) . '/../sidecar/selftest.py';
my ($out, $err) = ('', '');
IPC::Run::run([ '/usr/bin/python3', $selftest, '127.0.0.1:' . $sc->port, $sc->{control_port} ],
	'>', \$out, '2>', \$err);
my $seen = 0;
for my $line (split /\n/, $out)
{
	next unless $line =~ /^(not )?ok \d+ - (.*)$/;
	ok(!defined $1, $2);
	$seen++;
}
cmp_ok($seen, '>=', 18, 'the self-test ran to the end') or diag "$out\n$err";
$sc->stop;
done_testing();
