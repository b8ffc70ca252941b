"""Unit tests of the metric-name extraction (run: python3 -m unittest in this directory)."""

import unittest

from promql_names import Scrape, metric_names, missing_names


class MetricNamesTest(unittest.TestCase):
    def test_plain_selector_with_matchers(self):
        self.assertEqual(metric_names('up{job="chaos-control/chaos-agent"} == 0'), {"up"})

    def test_aggregation_with_grouping_before_body(self):
        expr = "max by (namespace, pod, node) (chaos_agent_overdue_faults) > 0"
        self.assertEqual(metric_names(expr), {"chaos_agent_overdue_faults"})

    def test_aggregation_with_grouping_after_body(self):
        expr = "sum(rate(a_total[5m])) without (instance)"
        self.assertEqual(metric_names(expr), {"a_total"})

    def test_histogram_quantile_and_grafana_variables(self):
        expr = ('histogram_quantile(0.99, sum by (le, kind) '
                '(rate(chaos_agent_inject_duration_seconds_bucket{node=~"$node"}[$__rate_interval])))')
        self.assertEqual(metric_names(expr), {"chaos_agent_inject_duration_seconds_bucket"})

    def test_binary_operation_with_matching(self):
        expr = "a_sum / on (kind) group_left (version) b_count * 1e3 + 2"
        self.assertEqual(metric_names(expr), {"a_sum", "b_count"})

    def test_label_values_reads_only_its_metric(self):
        self.assertEqual(metric_names("label_values(chaos_agent_build_info, node)"), {"chaos_agent_build_info"})

    def test_label_value_strings_are_not_names(self):
        self.assertEqual(metric_names('x{code!~"Internal|Unknown"} offset 5m'), {"x"})

    def test_name_matcher_is_refused(self):
        with self.assertRaises(ValueError):
            metric_names('{__name__="x"}')


SCRAPE = """\
# HELP chaos_agent_injections Successful injections.
# TYPE chaos_agent_injections counter
# TYPE chaos_agent_active_faults gauge
chaos_agent_active_faults{kind="cpu"} 1
# TYPE chaos_agent_inject_duration_seconds histogram
# TYPE chaos_agent_reverts_total counter
chaos_agent_reverts_total{kind="cpu",reason="expired"} 3
# EOF
"""


class ScrapeTest(unittest.TestCase):
    def test_family_suffixes_map_to_their_family(self):
        scrape = Scrape(SCRAPE)
        used = {
            "chaos_agent_injections_total",  # OpenMetrics counter with no samples yet
            "chaos_agent_active_faults",
            "chaos_agent_inject_duration_seconds_bucket",
            "chaos_agent_inject_duration_seconds_count",
            "chaos_agent_reverts_total",  # text format 0.0.4 names the family with _total
            "up",
        }
        self.assertEqual(missing_names(used, scrape), [])

    def test_unknown_and_wrong_suffix_are_missing(self):
        scrape = Scrape(SCRAPE)
        used = {
            "chaos_agent_nonexistent",
            "chaos_agent_active_faults_total",
            "chaos_agent_injections_bucket",
            "chaos_agent_injections",  # an OpenMetrics counter is only queryable as _total
        }
        self.assertEqual(missing_names(used, scrape), sorted(used))


if __name__ == "__main__":
    unittest.main()
