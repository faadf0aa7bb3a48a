#!/usr/bin/perl
# Writes geo/testdata/test-city.mmdb, the tiny MaxMind DB that geoip_test.cc reads.
# Needs Debian's libmaxmind-db-writer-perl (deploy/install-deps.sh installs it).
#   perl geo/testdata/make_test_mmdb.pl geo/testdata/test-city.mmdb
use strict;
use warnings;
use MaxMind::DB::Writer::Tree;

my $out = shift @ARGV or die "usage: $0 OUTPUT.mmdb\n";
my %types = (
    location  => 'map',
    latitude  => 'double',
    longitude => 'double',
    city      => 'utf8_string',
);
my $tree = MaxMind::DB::Writer::Tree->new(
    ip_version            => 6,
    record_size           => 24,
    database_type         => 'Meridian-Test-City',
    languages             => ['en'],
    description           => { en => 'Meridian geo unit-test database' },
    map_key_type_callback => sub { $types{ $_[0] } },
    # Keep IPv4 reachable at ::a.b.c.d (libmaxminddb looks IPv4 up there) and allow the
    # documentation ranges used below.
    alias_ipv6_to_ipv4    => 1,
    remove_reserved_networks => 0,
);
# Frankfurt
$tree->insert_network('203.0.113.0/24', { location => { latitude => 50.11, longitude => 8.68 } });
# Singapore, IPv6
$tree->insert_network('2001:db8:1::/48', { location => { latitude => 1.35, longitude => 103.8 } });
# A record without a location: the locator must fall through to its CIDR table.
$tree->insert_network('198.51.100.0/25', { city => 'Nowhere' });
open my $fh, '>:raw', $out or die "cannot write $out: $!\n";
$tree->write_tree($fh);
close $fh or die "cannot close $out: $!\n";
